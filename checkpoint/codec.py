"""Canonical, lossless JSON for checkpoint values, and sealing for storage.

Canonical means: one value has exactly one byte encoding (sorted keys, compact
separators, UTF-8), so its SHA-256 is stable across processes and machines.

Lossless means: values JSON cannot express are written as small tagged
objects ``{"$t": <tag>, "v": <value>}`` and come back as the same type:

====================  ==========================================
``bytes``             ``{"$t": "bytes", "v": <base64>}``
``bytearray``         ``{"$t": "bytearray", "v": <base64>}``
``datetime``          ``{"$t": "datetime", "v": <ISO 8601>}``
``date`` / ``time``   ``{"$t": "date"|"time", "v": <ISO 8601>}``
``timedelta``         ``{"$t": "timedelta", "v": [days, seconds, us]}``
``UUID``              ``{"$t": "uuid", "v": <hex>}``
``Decimal``           ``{"$t": "decimal", "v": <str>}``
non-finite ``float``  ``{"$t": "float", "v": "nan"|"inf"|"-inf"}``
``set``/``frozenset`` ``{"$t": "set"|"frozenset", "v": [sorted items]}``
``tuple``             ``{"$t": "tuple", "v": [items]}``
``Enum``              ``{"$t": "enum", "cls": "module:Qual", "v": value}``
dict, odd keys        ``{"$t": "map", "v": [[key, value], ...]}``
====================  ==========================================

A dict whose keys are all strings stays a JSON object, unless it has a
``"$t"`` key, in which case it is written as a ``map`` so no user value can
pose as a tag.

Decoding never imports anything: an Enum is rebuilt only when its class is
registered with :func:`register_enum` or its module is already imported.
Any other type is refused at encode time with a :class:`CodecError` naming
where it was found.

Sealing compresses canonical bytes with zstd and records their SHA-256;
opening verifies both and caps the decompressed size.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import json
import math
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import zstandard

from checkpoint.errors import (
    ChecksumMismatchError,
    CodecError,
    CorruptCheckpointError,
    PayloadTooLargeError,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "Sealed",
    "canonical_json",
    "decode",
    "encode",
    "from_jsonable",
    "open_sealed",
    "register_enum",
    "seal",
    "sha256_hex",
    "to_jsonable",
]

TAG = "$t"
DEFAULT_MAX_DECOMPRESSED = 256 * 1024 * 1024
_enum_registry: dict[str, type[enum.Enum]] = {}


def register_enum(cls: type[enum.Enum]) -> type[enum.Enum]:
    """Allow ``cls`` to be rebuilt on decode; usable as a class decorator."""
    _enum_registry[_enum_name(cls)] = cls
    return cls


def _enum_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _lookup_enum(name: str) -> type[enum.Enum]:
    cls = _enum_registry.get(name)
    if cls is not None:
        return cls
    module_name, _, qualname = name.partition(":")
    # Only modules that are already loaded: a payload must never trigger an import.
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        return obj
    raise CodecError(
        f"enum {name} is not known in this process: import its module or call "
        "checkpoint.codec.register_enum() before loading"
    )


def _sort_key(item: Any) -> bytes:
    return canonical_json(item)


def to_jsonable(value: Any, _path: str = "$") -> Any:
    """Turn ``value`` into plain JSON types, tagging what JSON cannot express."""
    if value is None or value is True or value is False or isinstance(value, str):
        if isinstance(value, enum.Enum):
            return _enum(value, _path)
        return value
    if isinstance(value, enum.Enum):
        return _enum(value, _path)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not isinstance(k, enum.Enum) for k in value) and (
            TAG not in value
        ):
            return {k: to_jsonable(v, f"{_path}.{k}") for k, v in value.items()}
        pairs = [
            [to_jsonable(k, f"{_path}<key>"), to_jsonable(v, f"{_path}[{k!r}]")]
            for k, v in value.items()
        ]
        pairs.sort(key=lambda kv: _sort_key(kv[0]))
        return {TAG: "map", "v": pairs}
    if isinstance(value, list):
        return [to_jsonable(v, f"{_path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": [to_jsonable(v, f"{_path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = sorted((to_jsonable(v, f"{_path}{{}}") for v in value), key=_sort_key)
        return {TAG: "frozenset" if isinstance(value, frozenset) else "set", "v": items}
    if isinstance(value, bytes):
        return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, bytearray):
        return {TAG: "bytearray", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": value.hex}
    if isinstance(value, Decimal):
        return {TAG: "decimal", "v": str(value)}
    raise CodecError(
        f"cannot checkpoint a value of type {type(value).__module__}.{type(value).__qualname__} "
        f"at {_path}: convert it to JSON types, bytes, datetime, UUID, Decimal, set, tuple "
        "or an Enum first"
    )


def _enum(value: enum.Enum, path: str) -> dict[str, Any]:
    return {TAG: "enum", "cls": _enum_name(type(value)), "v": to_jsonable(value.value, path)}


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable`; raises :class:`CodecError` on unknown tags."""
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if TAG not in obj:
        return {k: from_jsonable(v) for k, v in obj.items()}
    tag = obj[TAG]
    raw: Any = obj.get("v")
    try:
        if tag == "map":
            return {_hashable(from_jsonable(k)): from_jsonable(v) for k, v in raw}
        if tag == "tuple":
            return tuple(from_jsonable(v) for v in raw)
        if tag == "set":
            return {_hashable(from_jsonable(v)) for v in raw}
        if tag == "frozenset":
            return frozenset(_hashable(from_jsonable(v)) for v in raw)
        if tag == "bytes":
            return base64.b64decode(raw, validate=True)
        if tag == "bytearray":
            return bytearray(base64.b64decode(raw, validate=True))
        if tag == "datetime":
            return dt.datetime.fromisoformat(raw)
        if tag == "date":
            return dt.date.fromisoformat(raw)
        if tag == "time":
            return dt.time.fromisoformat(raw)
        if tag == "timedelta":
            days, seconds, micros = raw
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if tag == "uuid":
            return uuid.UUID(hex=raw)
        if tag == "decimal":
            return Decimal(raw)
        if tag == "float":
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[raw]
        if tag == "enum":
            return _lookup_enum(obj["cls"])(from_jsonable(raw))
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise CodecError(f"malformed {tag!r} value in checkpoint: {exc}") from exc
    raise CodecError(f"unknown type tag {tag!r} in checkpoint data")


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict, bytearray)) or (
        isinstance(value, set) and not isinstance(value, frozenset)
    ):
        raise CodecError("malformed checkpoint data: unhashable value used as a key or set item")
    return value


def canonical_json(obj: Any) -> bytes:
    """Serialize already-JSON-typed ``obj`` canonically (sorted keys, compact, UTF-8)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"value is not canonical JSON: {exc}") from exc


def encode(value: Any) -> bytes:
    """Encode any supported value to canonical JSON bytes.

    >>> encode({"b": b"\\x00", "a": (1, 2)})
    b'{"a":{"$t":"tuple","v":[1,2]},"b":{"$t":"bytes","v":"AA=="}}'
    """
    return canonical_json(to_jsonable(value))


def decode(data: bytes) -> Any:
    """Decode bytes written by :func:`encode`; raises :class:`CodecError` if they are not."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError(f"checkpoint bytes are not valid JSON: {exc}") from exc
    return from_jsonable(obj)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Sealed:
    """Canonical bytes compressed for storage, with what is needed to verify them."""

    blob: bytes
    sha256: str
    raw_size: int

    @property
    def stored_size(self) -> int:
        return len(self.blob)


def seal(raw: bytes, *, level: int = 3, sha256: str | None = None) -> Sealed:
    """Compress ``raw`` with zstd (content size and frame checksum included).

    Pass ``sha256`` when it is already known (it is not recomputed).
    """
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    blob = compressor.compress(raw)
    return Sealed(blob=blob, sha256=sha256 or sha256_hex(raw), raw_size=len(raw))


def open_sealed(blob: bytes, sha256: str, *, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Decompress ``blob`` and verify its SHA-256.

    Raises :class:`CorruptCheckpointError` for bytes that are not a complete zstd
    frame, :class:`PayloadTooLargeError` past ``max_size`` and
    :class:`ChecksumMismatchError` when the content is not what was sealed.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as exc:
        raise CorruptCheckpointError(f"stored checkpoint is not a zstd frame: {exc}") from exc
    if params.content_size > max_size:
        raise PayloadTooLargeError(
            f"checkpoint decompresses to {params.content_size} bytes, over the cap of {max_size}"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise CorruptCheckpointError(f"stored checkpoint cannot be decompressed: {exc}") from exc
    actual = sha256_hex(raw)
    if actual != sha256:
        raise ChecksumMismatchError(
            f"checkpoint checksum mismatch: stored {sha256}, computed {actual}; "
            "the payload is corrupt and was not used"
        )
    return raw
