"""What the codec refuses: damaged blobs, hostile or malformed JSON, unsupported types."""

from __future__ import annotations

import dataclasses
import enum
import random
import sys
import types
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from checkpoint import codec
from checkpoint.errors import (
    ChecksumMismatchError,
    CodecError,
    CorruptCheckpointError,
    FlowpointError,
    PayloadTooLargeError,
)
from tests.unit.test_codec_strategies import Color, values

PAYLOAD = codec.encode(
    {
        "messages": [{"role": "user", "content": f"refund order {i}, please"} for i in range(40)],
        "blob": bytes(range(256)),
        "when": {1, 2, 3},
    }
)
SEALED = codec.seal(PAYLOAD)
REFUSED = (CorruptCheckpointError, PayloadTooLargeError)

# --------------------------------------------------------------------------- sealed blobs


def test_every_flipped_bit_is_refused_or_harmless() -> None:
    # Exhaustive over the blob: a damaged blob is refused, never opened as other bytes.
    # A few bits zstd ignores (reserved header bits, padding) change nothing: those
    # open to exactly the sealed bytes, which the SHA-256 then vouches for.
    refused = 0
    for position in range(len(SEALED.blob)):
        for bit in range(8):
            damaged = bytearray(SEALED.blob)
            damaged[position] ^= 1 << bit
            try:
                opened = codec.open_sealed(bytes(damaged), SEALED.sha256)
            except REFUSED:
                refused += 1
            else:
                assert opened == PAYLOAD, (position, bit)
    assert refused > 0.95 * len(SEALED.blob) * 8


@settings(max_examples=100, deadline=None)
@given(values, st.data())
def test_a_flipped_byte_never_opens_to_other_bytes(value: Any, data: st.DataObject) -> None:
    raw = codec.encode(value)
    sealed = codec.seal(raw)
    position = data.draw(st.integers(0, len(sealed.blob) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(sealed.blob)
    damaged[position] ^= flip
    try:
        opened = codec.open_sealed(bytes(damaged), sealed.sha256)
    except REFUSED:
        return
    assert opened == raw


def test_damage_inside_the_compressed_body_is_corrupt() -> None:
    middle = len(SEALED.blob) // 2
    damaged = bytearray(SEALED.blob)
    damaged[middle] ^= 0xFF
    with pytest.raises(CorruptCheckpointError, match="cannot be decompressed"):
        codec.open_sealed(bytes(damaged), SEALED.sha256)


def test_wrong_sha_is_a_checksum_mismatch() -> None:
    sealed = codec.seal(PAYLOAD, sha256="ab" * 32)  # zstd is intact, the recorded sha is not
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch: stored abab"):
        codec.open_sealed(sealed.blob, sealed.sha256)
    other = codec.seal(b'{"another":"checkpoint"}')
    with pytest.raises(ChecksumMismatchError):
        codec.open_sealed(other.blob, SEALED.sha256)  # a blob swapped between rows


def test_damage_zstd_cannot_see_is_a_checksum_mismatch() -> None:
    # Without a zstd frame checksum, a flipped byte in a raw block still decompresses:
    # the SHA-256 is what catches it.
    raw = random.Random(7).randbytes(2000)
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=False).compress(raw))
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(ChecksumMismatchError) as info:
        codec.open_sealed(bytes(blob), codec.sha256_hex(raw))
    assert isinstance(info.value, CorruptCheckpointError)


def test_every_truncation_is_corrupt() -> None:
    for length in range(len(SEALED.blob)):
        with pytest.raises(CorruptCheckpointError):
            codec.open_sealed(SEALED.blob[:length], SEALED.sha256)


def test_trailing_bytes_are_corrupt() -> None:
    with pytest.raises(CorruptCheckpointError, match="cannot be decompressed"):
        codec.open_sealed(SEALED.blob + b"\x00", SEALED.sha256)
    with pytest.raises(CorruptCheckpointError):
        codec.open_sealed(SEALED.blob + SEALED.blob, SEALED.sha256)


@pytest.mark.parametrize(
    "blob", [b"", b"{}", PAYLOAD, b"\x28\xb5\x2f", random.Random(1).randbytes(64)]
)
def test_non_zstd_bytes_are_corrupt(blob: bytes) -> None:
    with pytest.raises(CorruptCheckpointError, match=r"not a zstd frame|cannot be decompressed"):
        codec.open_sealed(blob, codec.sha256_hex(blob))


def test_the_decompressed_size_is_capped() -> None:
    bomb = b"\x00" * (8 * 1024 * 1024)
    sealed = codec.seal(bomb)
    assert sealed.stored_size < 2048  # tiny on disk, 8 MiB once opened
    with pytest.raises(PayloadTooLargeError, match=r"8388608 bytes, over the cap of 1048576"):
        codec.open_sealed(sealed.blob, sealed.sha256, max_size=1024 * 1024)
    assert codec.open_sealed(sealed.blob, sealed.sha256, max_size=len(bomb)) == bomb


def test_a_frame_without_a_declared_size_is_still_capped() -> None:
    bomb = b"\x00" * (4 * 1024 * 1024)
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(bomb)
    with pytest.raises(CorruptCheckpointError):
        codec.open_sealed(blob, codec.sha256_hex(bomb), max_size=1024 * 1024)
    assert codec.open_sealed(blob, codec.sha256_hex(bomb), max_size=len(bomb)) == bomb


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"$t":"nope","v":1}', "unknown type tag 'nope'"),
        ('{"$t":5,"v":1}', "unknown type tag 5"),
        ('{"$t":["bytes"],"v":"AA=="}', r"unknown type tag \['bytes'\]"),
        ('{"$t":null,"v":1}', "unknown type tag None"),
        ('[1,{"a":{"$t":"nope","v":1}}]', "unknown type tag 'nope'"),
        ('{"$t":"bytes"}', "malformed 'bytes' value.*no 'v'"),
        ('{"$t":"bytes","v":"AA==","extra":1}', r"unexpected keys \['extra'\]"),
        ('{"$t":"tuple","v":[],"cls":"x:Y"}', r"unexpected keys \['cls'\]"),
        ('{"$t":"bytes","v":"!!!"}', "malformed 'bytes'"),
        ('{"$t":"bytes","v":5}', "malformed 'bytes'"),
        ('{"$t":"bytearray","v":null}', "malformed 'bytearray'"),
        ('{"$t":"map","v":{"ab":1}}', "malformed 'map'"),
        ('{"$t":"map","v":[[1]]}', r"entries must be \[key, value\]"),
        ('{"$t":"map","v":[[1,2,3]]}', r"entries must be \[key, value\]"),
        ('{"$t":"map","v":[[[1],2]]}', "unhashable value"),
        ('{"$t":"tuple","v":"abc"}', "malformed 'tuple'"),
        ('{"$t":"set","v":5}', "malformed 'set'"),
        ('{"$t":"set","v":[[1]]}', "unhashable value"),
        ('{"$t":"frozenset","v":[{"a":1}]}', "unhashable value"),
        ('{"$t":"set","v":[{"$t":"tuple","v":[[1]]}]}', "malformed 'set'"),
        ('{"$t":"datetime","v":"yesterday"}', "malformed 'datetime'"),
        ('{"$t":"datetime","v":1}', "malformed 'datetime'"),
        ('{"$t":"date","v":"2026-13-01"}', "malformed 'date'"),
        ('{"$t":"time","v":"25:00"}', "malformed 'time'"),
        ('{"$t":"timedelta","v":[1,2]}', "malformed 'timedelta'"),
        ('{"$t":"timedelta","v":[1,2,"3"]}', "malformed 'timedelta'"),
        ('{"$t":"timedelta","v":[true,0,0]}', "malformed 'timedelta'"),
        ('{"$t":"timedelta","v":[1000000000,0,0]}', "malformed 'timedelta'"),
        ('{"$t":"uuid","v":"xyz"}', "malformed 'uuid'"),
        ('{"$t":"uuid","v":5}', "malformed 'uuid'"),
        ('{"$t":"decimal","v":"abc"}', "malformed 'decimal'"),
        ('{"$t":"decimal","v":1}', "malformed 'decimal'"),
        ('{"$t":"float","v":"1.5"}', "malformed 'float'"),
        ('{"$t":"float","v":[1]}', "malformed 'float'"),
        ('{"$t":"enum","v":1}', "cls must be a string, not None"),
        ('{"$t":"enum","cls":5,"v":1}', "cls must be a string, not 5"),
        ('{"$t":"enum","cls":"json:JSONDecoder","v":1}', "enum json:JSONDecoder is not known"),
        ('{"$t":"enum","cls":"os:environ","v":1}', "enum os:environ is not known"),
        ('{"$t":"enum","cls":"sys:modules.os","v":1}', "is not known"),
        (
            '{"$t":"enum","cls":"tests.unit.test_codec_strategies:Color","v":"purple"}',
            "malformed 'enum'.*'purple' is not a valid Color",
        ),
        ("[1,", "not valid JSON"),
    ],
)
def test_malformed_data_is_a_codec_error(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        codec.decode(text.encode())


def test_invalid_utf8_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        codec.decode(b'"\xff\xfe"')


def test_nesting_is_bounded_on_both_sides() -> None:
    deepest: Any = "leaf"
    for _ in range(codec.MAX_DEPTH):
        deepest = [deepest]
    assert codec.decode(codec.encode(deepest)) == deepest
    too_deep = [deepest]
    with pytest.raises(CodecError, match="nested deeper than 200 levels"):
        codec.encode(too_deep)
    crafted = b"[" * (codec.MAX_DEPTH + 1) + b"]" * (codec.MAX_DEPTH + 1)
    with pytest.raises(CodecError, match="nested deeper than 200 levels"):
        codec.decode(crafted)
    # Tags count as one level (a tuple is {"$t": "tuple", "v": [...]}), so deep tuples fit too.
    deep_tuple: Any = b"leaf"
    for _ in range(codec.MAX_DEPTH):
        deep_tuple = (deep_tuple,)
    assert codec.decode(codec.encode(deep_tuple)) == deep_tuple


def test_hostile_nesting_is_a_codec_error_not_a_crash() -> None:
    hostile = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CodecError, match="nested too deeply"):
        codec.decode(hostile)


# --------------------------------------------------------------------------- enums on decode


def test_an_enum_of_a_module_never_imported_is_refused_without_importing() -> None:
    name = "some_never_imported_module"
    assert name not in sys.modules
    crafted = b'{"$t":"enum","cls":"some_never_imported_module:Color","v":"red"}'
    with pytest.raises(CodecError, match="some_never_imported_module:Color is not known"):
        codec.decode(crafted)
    assert name not in sys.modules


def test_a_real_but_unimported_module_is_not_imported() -> None:
    # A stdlib module that exists on disk and defines enums, but that nothing here imports.
    name = "tkinter.constants" if "tkinter" not in sys.modules else "xml.dom.minicompat"
    assert name not in sys.modules
    with pytest.raises(CodecError, match="is not known in this process"):
        codec.decode(b'{"$t":"enum","cls":"%s:Anything","v":1}' % name.encode())
    assert name not in sys.modules


def test_module_getattr_is_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lazy-loading packages import submodules from a module-level __getattr__.
    calls: list[str] = []
    lazy = types.ModuleType("flowpoint_lazy_probe")

    def _getattr(attr: str) -> Any:
        calls.append(attr)
        raise AttributeError(attr)

    lazy.__getattr__ = _getattr  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "flowpoint_lazy_probe", lazy)
    with pytest.raises(CodecError, match="is not known"):
        codec.decode(b'{"$t":"enum","cls":"flowpoint_lazy_probe:Color","v":1}')
    with pytest.raises(CodecError, match="is not known"):
        codec.decode(b'{"$t":"enum","cls":"flowpoint_lazy_probe:sub.Color","v":1}')
    assert calls == []


def test_enums_of_loaded_modules_and_registered_enums_decode() -> None:
    assert codec.decode(codec.encode(Color.RED)) is Color.RED

    def make() -> type[enum.Enum]:
        class Local(enum.Enum):  # qualname holds <locals>: only the registry finds it
            A = "a"

        return Local

    local = make()
    member = local("a")
    raw = codec.encode(member)
    with pytest.raises(CodecError, match="register_enum"):
        codec.decode(raw)
    codec.register_enum(local)
    assert codec.decode(raw) is member


# --------------------------------------------------------------------------- encoding


class Point:
    def __init__(self) -> None:
        self.x = 1


@dataclasses.dataclass
class Record:
    x: int = 1


class Model(BaseModel):
    x: int = 1


@pytest.mark.parametrize(
    ("value", "where", "type_name"),
    [
        (object(), r"at \$:", "builtins.object"),
        ({"a": {"b": [1, Point()]}}, r"at \$\.a\.b\[1\]:", "Point"),
        ({"model": Model()}, r"at \$\.model:", "Model"),
        ([Record()], r"at \$\[0\]:", "Record"),
        ({"fn": len}, r"at \$\.fn:", "builtin_function_or_method"),
        ({"c": 1j}, r"at \$\.c:", "builtins.complex"),
        ({"m": memoryview(b"x")}, r"at \$\.m:", "memoryview"),
        ({"s": {object()}}, r"at \$\.s\{\}:", "builtins.object"),
        ({object(): 1}, r"at \$<key>:", "builtins.object"),
        ({1: [Point()]}, r"at \$\[1\]\[0\]:", "Point"),
        ((1, (2, Point())), r"at \$\[1\]\[1\]:", "Point"),
    ],
)
def test_unsupported_types_name_their_path(value: Any, where: str, type_name: str) -> None:
    with pytest.raises(
        CodecError, match=f"cannot checkpoint a value of type .*{type_name}.*{where}"
    ):
        codec.encode(value)


def test_lone_surrogates_and_huge_ints_are_refused() -> None:
    with pytest.raises(CodecError, match="surrogates not allowed"):
        codec.encode({"text": "broken \ud800 half"})
    with pytest.raises(CodecError, match="4300 digits"):
        codec.encode(10**5000)


def test_a_node_id_with_a_lone_surrogate_is_refused_like_any_value() -> None:
    from checkpoint import FlowCheckpoint, NodeState, NodeStatus
    from checkpoint.models import checkpoint_to_bytes

    state = NodeState(node_id="a\ud800", node_type="FunctionNode", status=NodeStatus.SUCCEEDED)
    cp = FlowCheckpoint(
        tenant_id="t", flow_id="f", run_id="r", seq=0, node_states={state.node_id: state}
    )
    with pytest.raises(CodecError, match="surrogates not allowed"):
        checkpoint_to_bytes(cp)


def test_codec_errors_are_flowpoint_value_errors() -> None:
    with pytest.raises(ValueError):
        codec.encode(object())
    assert issubclass(CodecError, FlowpointError)
