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

What does not survive a round trip, by design: a ``datetime``'s ``fold``
and its zone's identity (an aware value comes back with a fixed-offset
``timezone``: the same instant and offset), and the subclass of a plain
container or number (an ``OrderedDict`` comes back a ``dict``). Strings
with lone surrogates and integers past Python's 4300-digit conversion
limit are refused, as are containers nested deeper than :data:`MAX_DEPTH`.

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
import re
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import orjson
import zstandard

from checkpoint.errors import (
    ChecksumMismatchError,
    CodecError,
    CorruptCheckpointError,
    PayloadTooLargeError,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "MAX_DEPTH",
    "Sealed",
    "canonical_json",
    "decode",
    "encode",
    "from_jsonable",
    "loads",
    "open_sealed",
    "register_enum",
    "seal",
    "sha256_hex",
    "to_jsonable",
]

TAG = "$t"
DEFAULT_MAX_DECOMPRESSED = 256 * 1024 * 1024
#: Containers nested deeper than this are refused, on encode and decode alike, so every
#: value that encodes also decodes (and a hostile payload cannot exhaust the stack).
MAX_DEPTH = 200
_enum_registry: dict[str, type[enum.Enum]] = {}


def register_enum(cls: type[enum.Enum]) -> type[enum.Enum]:
    """Allow ``cls`` to be rebuilt on decode; usable as a class decorator."""
    _enum_registry[_enum_name(cls)] = cls
    return cls


def _enum_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _lookup_enum(name: Any) -> type[enum.Enum]:
    if not isinstance(name, str):
        raise CodecError(
            f"malformed 'enum' value in checkpoint: cls must be a string, not {name!r}"
        )
    cls = _enum_registry.get(name)
    if cls is not None:
        return cls
    module_name, _, qualname = name.partition(":")
    # Only modules that are already loaded: a payload must never trigger an import. The
    # lookup reads namespaces directly because getattr() would run a module's __getattr__,
    # which lazy-loading packages use to import submodules.
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None) if obj is not None else None
        obj = namespace.get(part) if isinstance(namespace, Mapping) else None
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        return obj
    raise CodecError(
        f"enum {name} is not known in this process: import its module or call "
        "checkpoint.codec.register_enum() before loading"
    )


def _sort_key(item: Any) -> bytes:
    return canonical_json(item)


def to_jsonable(
    value: Any, _path: str = "$", *, share: bool = False, floats: list[bool] | None = None
) -> Any:
    """Turn ``value`` into plain JSON types, tagging what JSON cannot express.

    ``_path`` names ``value`` in error messages (``$`` by default). With ``share``, the
    result reuses every part of ``value`` that is already plain JSON instead of copying
    it (no allocation for a plain value): for callers that only serialize the result and
    never mutate it. ``floats`` (a one-item list) is set to ``[True]`` when the result may
    hold a float, so :func:`canonical_json` can skip its float check (``floats=False``).
    """
    seen = floats if floats is not None else [False]
    try:
        try:
            return _shared(value, 0, seen) if share else _plain(value, 0, seen)
        except CodecError:
            # The fast walk does not track where it is: walk again, naming the culprit.
            seen[0] = True
            return _to_jsonable(value, _path, 0)
    except RecursionError:  # a deep stack already: MAX_DEPTH is a guard, not a promise
        raise CodecError(f"value at {_path} is nested too deeply to checkpoint") from None


_LEAVES: frozenset[type] = frozenset({str, int, bool, type(None)})

# The walks below mark ``seen`` for every finite float they pass, and for every value they
# hand to _to_jsonable (which may turn odd types into floats): conservative, never wrong.
# ``v - v == 0.0`` is math.isfinite(v) without the call: inf - inf and nan - nan are nan.


def _shared(value: Any, depth: int, seen: list[bool]) -> Any:
    """:func:`_plain` that returns plain parts of ``value`` themselves, copying only
    the containers on the way to a value that needed converting."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    if kind is float and value - value == 0.0:
        seen[0] = True
        return value
    if depth < MAX_DEPTH:
        inner = depth + 1
        if kind is dict:
            if TAG not in value:
                for key in value:
                    if type(key) is not str:
                        break
                else:
                    copy: dict[str, Any] | None = None
                    for k, v in value.items():
                        if type(v) in _LEAVES:  # inline: most values are leaves
                            continue
                        converted = _shared(v, inner, seen)
                        if converted is not v:
                            if copy is None:
                                copy = dict(value)
                            copy[k] = converted
                    return value if copy is None else copy
        elif kind is list:
            items: list[Any] | None = None
            for i, v in enumerate(value):
                if type(v) in _LEAVES:
                    continue
                converted = _shared(v, inner, seen)
                if converted is not v:
                    if items is None:
                        items = list(value)
                    items[i] = converted
            return value if items is None else items
    seen[0] = True
    return _to_jsonable(value, "$", depth)


def _plain(value: Any, depth: int, seen: list[bool]) -> Any:
    """:func:`_to_jsonable` for the common case, without building error paths.

    Checkpoints are mostly exact str/int/float/bool/None, str-keyed dicts and lists;
    building a path string for every one of them cost more than the conversion. Exact
    types only: anything else (subclasses, tags, non-finite floats, the depth limit)
    goes to :func:`_to_jsonable`, so the result is always the same. Its errors carry a
    placeholder path; :func:`to_jsonable` then walks again for the real one.
    """
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    if kind is float and value - value == 0.0:
        seen[0] = True
        return value
    if depth < MAX_DEPTH:
        inner = depth + 1
        if kind is dict:
            if TAG not in value:
                for key in value:
                    if type(key) is not str:
                        break
                else:
                    return {k: _plain(v, inner, seen) for k, v in value.items()}
        elif kind is list:
            return [_plain(v, inner, seen) for v in value]
    seen[0] = True
    return _to_jsonable(value, "$", depth)


def _to_jsonable(value: Any, _path: str, depth: int) -> Any:
    if value is None or value is True or value is False or isinstance(value, str):
        if isinstance(value, enum.Enum):
            return _enum(value, _path, depth)
        return value
    if isinstance(value, enum.Enum):
        return _enum(value, _path, depth)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple, set, frozenset)):
        raise CodecError(f"value at {_path} is nested deeper than {MAX_DEPTH} levels")
    inner = depth + 1
    if isinstance(value, dict):
        if all(isinstance(k, str) and not isinstance(k, enum.Enum) for k in value) and (
            TAG not in value
        ):
            return {k: _to_jsonable(v, f"{_path}.{k}", inner) for k, v in value.items()}
        pairs = [
            [_to_jsonable(k, f"{_path}<key>", inner), _to_jsonable(v, f"{_path}[{k!r}]", inner)]
            for k, v in value.items()
        ]
        pairs.sort(key=lambda kv: _sort_key(kv[0]))
        return {TAG: "map", "v": pairs}
    if isinstance(value, list):
        return [_to_jsonable(v, f"{_path}[{i}]", inner) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        items = [_to_jsonable(v, f"{_path}[{i}]", inner) for i, v in enumerate(value)]
        return {TAG: "tuple", "v": items}
    if isinstance(value, (set, frozenset)):
        items = sorted((_to_jsonable(v, f"{_path}{{}}", inner) for v in value), key=_sort_key)
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


def _enum(value: enum.Enum, path: str, depth: int) -> dict[str, Any]:
    encoded = _to_jsonable(value.value, path, depth + 1)
    return {TAG: "enum", "cls": _enum_name(type(value)), "v": encoded}


def from_jsonable(obj: Any, *, fresh: bool = False) -> Any:
    """Inverse of :func:`to_jsonable`; raises :class:`CodecError` on unknown or malformed tags.

    ``fresh=True`` says ``obj`` was just made by a JSON decoder and is the caller's to
    change: tagged values are then replaced where they stand and every other container
    is kept, instead of the whole value being copied (most of it has no tag).
    """
    try:
        return _fresh(obj, 0) if fresh else _from_jsonable(obj, 0)
    except RecursionError:
        raise CodecError("checkpoint data is nested too deeply to decode") from None


def _fresh(obj: Any, depth: int) -> Any:
    """:func:`_from_jsonable` for a JSON decoder's output (exact types, owned by nobody)."""
    kind = type(obj)
    if kind is dict:
        if TAG in obj:
            return _from_jsonable(obj, depth)  # the careful road decodes the tag
    elif kind is not list:
        return obj
    if depth >= MAX_DEPTH:
        raise CodecError(f"checkpoint data is nested deeper than {MAX_DEPTH} levels")
    inner = depth + 1
    if kind is dict:
        for k, v in obj.items():  # replacing a value keeps the dict's size: safe mid-loop
            t = type(v)
            if t is dict or t is list:
                new = _fresh(v, inner)
                if new is not v:
                    obj[k] = new
    else:
        for i, v in enumerate(obj):
            t = type(v)
            if t is dict or t is list:
                new = _fresh(v, inner)
                if new is not v:
                    obj[i] = new
    return obj


def _from_jsonable(obj: Any, depth: int) -> Any:
    # Depth counts Python containers like _to_jsonable does (a tag and its "v" are one
    # level), so whatever encodes within MAX_DEPTH also decodes.
    if not isinstance(obj, (list, dict)):
        return obj
    tag = obj.get(TAG) if isinstance(obj, dict) else None
    container = tag is None or (isinstance(tag, str) and tag in _CONTAINER_TAGS)
    if depth >= MAX_DEPTH and container:
        raise CodecError(f"checkpoint data is nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, list):
        return [_from_jsonable(v, depth + 1) for v in obj]
    if TAG not in obj:
        return {k: _from_jsonable(v, depth + 1) for k, v in obj.items()}
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise CodecError(f"unknown type tag {tag!r} in checkpoint data")
    # Encoded user dicts holding a "$t" key are always written as maps, so any other key
    # next to a tag means the data was not written by this codec.
    extra = set(obj) - ({TAG, "v", "cls"} if tag == "enum" else {TAG, "v"})
    if extra or "v" not in obj:
        found = sorted(extra) if extra else "no 'v'"
        raise CodecError(f"malformed {tag!r} value in checkpoint: unexpected keys {found}")
    try:
        return decoder(obj["v"], obj, depth + 1)
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        # ArithmeticError: decimal.InvalidOperation for a malformed Decimal string.
        raise CodecError(f"malformed {tag!r} value in checkpoint: {exc}") from exc


def _expect(raw: Any, kind: type | tuple[type, ...], tag: str) -> Any:
    if not isinstance(raw, kind) or isinstance(raw, bool):
        raise CodecError(f"malformed {tag!r} value in checkpoint: {raw!r:.80} has the wrong type")
    return raw


def _items(raw: Any, tag: str, depth: int) -> list[Any]:
    return [_from_jsonable(v, depth) for v in _expect(raw, list, tag)]


def _members(raw: Any, tag: str, depth: int) -> list[Any]:
    return [_hashable(v) for v in _items(raw, tag, depth)]


def _decode_map(raw: Any, obj: dict[str, Any], depth: int) -> Any:
    out: dict[Any, Any] = {}
    for pair in _expect(raw, list, "map"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise CodecError("malformed 'map' value in checkpoint: entries must be [key, value]")
        out[_hashable(_from_jsonable(pair[0], depth))] = _from_jsonable(pair[1], depth)
    return out


def _decode_float(raw: Any, obj: dict[str, Any], depth: int) -> float:
    if raw not in ("nan", "inf", "-inf"):
        raise CodecError(f"malformed 'float' value in checkpoint: {raw!r:.80}")
    # A fresh object per NaN: two NaNs in one set are two distinct members.
    return float(raw)


def _decode_timedelta(raw: Any, obj: dict[str, Any], depth: int) -> dt.timedelta:
    parts = _expect(raw, list, "timedelta")
    if len(parts) != 3 or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        raise CodecError("malformed 'timedelta' value in checkpoint: expected [days, s, us]")
    return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


_DT = TypeVar("_DT", dt.datetime, dt.time)
_SUBSECOND_OFFSET = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)\.(\d{6})$")


def _iso(kind: type[_DT], text: str) -> _DT:
    value = kind.fromisoformat(text)
    # CPython 3.11 reads an offset of only microseconds (+00:00:00.000001) as UTC.
    match = _SUBSECOND_OFFSET.search(text)
    if match is not None:
        sign, hours, minutes, seconds, micros = match.groups()
        offset = dt.timedelta(
            hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros)
        )
        value = value.replace(tzinfo=dt.timezone(-offset if sign == "-" else offset))
    return value


def _b64(raw: Any, tag: str) -> bytes:
    return base64.b64decode(_expect(raw, str, tag), validate=True)


_CONTAINER_TAGS = frozenset({"map", "tuple", "set", "frozenset"})
_Decoder = Callable[[Any, dict[str, Any], int], Any]
_DECODERS: dict[str, _Decoder] = {
    "map": _decode_map,
    "tuple": lambda raw, _, depth: tuple(_items(raw, "tuple", depth)),
    "set": lambda raw, _, depth: set(_members(raw, "set", depth)),
    "frozenset": lambda raw, _, depth: frozenset(_members(raw, "frozenset", depth)),
    "bytes": lambda raw, _, __: _b64(raw, "bytes"),
    "bytearray": lambda raw, _, __: bytearray(_b64(raw, "bytearray")),
    "datetime": lambda raw, _, __: _iso(dt.datetime, _expect(raw, str, "datetime")),
    "date": lambda raw, _, __: dt.date.fromisoformat(_expect(raw, str, "date")),
    "time": lambda raw, _, __: _iso(dt.time, _expect(raw, str, "time")),
    "timedelta": _decode_timedelta,
    "uuid": lambda raw, _, __: uuid.UUID(hex=_expect(raw, str, "uuid")),
    "decimal": lambda raw, _, __: Decimal(_expect(raw, str, "decimal")),
    "float": _decode_float,
    "enum": lambda raw, obj, depth: _lookup_enum(obj.get("cls"))(_from_jsonable(raw, depth)),
}


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict, bytearray)) or (
        isinstance(value, set) and not isinstance(value, frozenset)
    ):
        raise CodecError("malformed checkpoint data: unhashable value used as a key or set item")
    return value


# orjson and json.dumps write every finite float alike except small magnitudes
# (json: 1e-05, 2.5e-07; orjson: 0.00001, 2.5e-7); each such orjson output contains a
# digit followed by "e-", or "0.0000", so a match (even a false one, inside a string)
# falls back to json.dumps. The literal-first pattern keeps the scan at memchr speed.
_SMALL_EXPONENT = re.compile(rb"e-(?<=[0-9]e-)")


def canonical_json(obj: Any, *, finite: bool = False, floats: bool = True) -> bytes:
    """Serialize already-JSON-typed ``obj`` canonically (sorted keys, compact, UTF-8).

    ``finite=True`` promises that ``obj`` holds no NaN or infinity (true of anything
    :func:`to_jsonable` returned): the bytes are then made by orjson, ~15x faster and
    byte-identical to the reference ``json.dumps`` encoding, which remains the fallback
    for everything orjson writes differently or refuses (integers past 64 bits, lone
    surrogates, non-string keys, very deep nesting, small floats). ``floats=False``
    promises that ``obj`` holds no float at all (see :func:`to_jsonable`): the scan of
    the output for small floats, most of the cost on a large text-heavy value, is skipped.
    """
    if finite:
        try:
            out = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError: the reference road decides
            pass
        else:
            if not floats or (b"0.0000" not in out and _SMALL_EXPONENT.search(out) is None):
                return out
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"value is not canonical JSON: {exc}") from exc
    except RecursionError:
        raise CodecError("value is nested too deeply to checkpoint") from None


def encode(value: Any) -> bytes:
    """Encode any supported value to canonical JSON bytes.

    >>> encode({"b": b"\\x00", "a": (1, 2)})
    b'{"a":{"$t":"tuple","v":[1,2]},"b":{"$t":"bytes","v":"AA=="}}'
    """
    floats = [False]
    doc = to_jsonable(value, floats=floats)
    return canonical_json(doc, finite=True, floats=floats[0])


def loads(data: bytes) -> Any:
    """``json.loads(data)``, made by msgspec when it can (twice as fast, the same values).

    msgspec refuses a few inputs ``json.loads`` takes (NaN, a lone surrogate escape, a
    byte order mark): those go to ``json.loads``, which also raises the errors.
    """
    try:
        return msgspec.json.decode(data)
    except (ValueError, RecursionError):
        return json.loads(data)


def decode(data: bytes) -> Any:
    """Decode bytes written by :func:`encode`; raises :class:`CodecError` if they are not."""
    try:
        obj = loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError(f"checkpoint bytes are not valid JSON: {exc}") from exc
    except RecursionError:
        raise CodecError("checkpoint bytes are nested too deeply to decode") from None
    return from_jsonable(obj, fresh=True)


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


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # One per thread and level: building one costs ~15 us, and they are not thread-safe.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    compressor = cache.get(level)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
        cache[level] = compressor
    return compressor


def seal(raw: bytes, *, level: int = 3, sha256: str | None = None) -> Sealed:
    """Compress ``raw`` with zstd (content size and frame checksum included).

    Pass ``sha256`` when it is already known (it is not recomputed).
    """
    blob = _compressor(level).compress(raw)
    return Sealed(blob=blob, sha256=sha256 or sha256_hex(raw), raw_size=len(raw))


def open_sealed(blob: bytes, sha256: str, *, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Decompress ``blob`` and verify its SHA-256.

    Raises :class:`CorruptCheckpointError` for bytes that are not exactly one
    complete zstd frame, :class:`PayloadTooLargeError` when the frame declares
    more than ``max_size`` bytes (:func:`seal` always declares it; a frame that
    does not is still cut off at ``max_size`` and reported corrupt) and
    :class:`ChecksumMismatchError` when the content is not what was sealed.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as exc:
        raise CorruptCheckpointError(f"stored checkpoint is not a zstd frame: {exc}") from exc
    size = params.content_size
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > max_size:
        raise PayloadTooLargeError(
            f"checkpoint decompresses to {size} bytes, over the cap of {max_size}"
        )
    try:
        # max_output_size also caps frames that do not declare their size; trailing
        # bytes after the frame mean the blob is not what was sealed.
        raw = zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=max_size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CorruptCheckpointError(f"stored checkpoint cannot be decompressed: {exc}") from exc
    actual = sha256_hex(raw)
    if actual != sha256:
        raise ChecksumMismatchError(
            f"checkpoint checksum mismatch: stored {sha256}, computed {actual}; "
            "the payload is corrupt and was not used"
        )
    return raw
