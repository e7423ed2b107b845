"""The codec's fast roads give exactly the bytes and values of the reference roads.

``to_jsonable`` walks plain values without tracking paths, and ``canonical_json(...,
finite=True)`` writes with orjson; both must be indistinguishable from the reference
(``_to_jsonable`` with paths, ``json.dumps``), or checksums would change between
processes.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import codec
from checkpoint.errors import CodecError
from tests.unit.test_codec_strategies import values


def reference_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=400)
@given(json_values)
def test_finite_canonical_json_equals_json_dumps(value: Any) -> None:
    assert codec.canonical_json(value, finite=True) == reference_json(value)


@settings(max_examples=300)
@given(values)
def test_fast_to_jsonable_equals_the_path_tracking_walk(value: Any) -> None:
    try:
        expected = codec._to_jsonable(value, "$", 0)
    except CodecError as exc:
        with pytest.raises(CodecError) as caught:
            codec.to_jsonable(value)
        assert str(caught.value) == str(exc)
        return
    got = codec.to_jsonable(value)
    assert reference_json(got) == reference_json(expected)
    assert codec.encode(value) == reference_json(expected)


@pytest.mark.parametrize(
    "number",
    [1e-05, 2.5e-07, 1e-4, 0.0001234, 1e16, 1.5e300, 5e-324, -1e-7, 123456789012345678.0],
)
def test_floats_orjson_writes_differently_fall_back(number: float) -> None:
    obj = {"v": [number, -number, str(number)]}
    assert codec.canonical_json(obj, finite=True) == reference_json(obj)


def test_random_float_bit_patterns_match() -> None:
    # Every finite double exponent range, including the ones orjson writes its own way.
    checked = 0
    for exponent in range(0, 2047):
        for mantissa in (0, 1, 0x8000000000000, 0xFFFFFFFFFFFFF, 0x123456789ABCD):
            bits = (exponent << 52) | mantissa
            number = struct.unpack("<d", struct.pack("<Q", bits))[0]
            if not math.isfinite(number):
                continue
            assert codec.canonical_json([number], finite=True) == reference_json([number])
            checked += 1
    assert checked > 10_000


@pytest.mark.parametrize(
    "obj",
    [
        {"big": 2**64},  # past orjson's 64 bits
        {"nested": [[[[{"a": [[[]]]}]]]]},
        {"text": "\u2028\u2029\x00\x1f\x7f\ud7ff\ue000\U0010ffff"},
    ],
)
def test_values_orjson_refuses_or_escapes_match(obj: Any) -> None:
    assert codec.canonical_json(obj, finite=True) == reference_json(obj)


def test_deep_nesting_past_orjson_limit_falls_back() -> None:
    obj: Any = []
    for _ in range(300):
        obj = [obj]
    assert codec.canonical_json(obj, finite=True) == reference_json(obj)


def test_lone_surrogate_is_still_refused() -> None:
    with pytest.raises(CodecError):
        codec.canonical_json({"s": "\ud800"}, finite=True)


def test_errors_still_name_the_path() -> None:
    with pytest.raises(CodecError, match=r"\$\.a\[1\]\.b"):
        codec.to_jsonable({"a": [1, {"b": object()}]})


@settings(max_examples=300)
@given(values)
def test_shared_to_jsonable_equals_the_copying_one(value: Any) -> None:
    try:
        expected = codec.to_jsonable(value)
    except CodecError as exc:
        with pytest.raises(CodecError) as caught:
            codec.to_jsonable(value, share=True)
        assert str(caught.value) == str(exc)
        return
    assert reference_json(codec.to_jsonable(value, share=True)) == reference_json(expected)


def test_shared_to_jsonable_reuses_plain_parts_and_copies_the_rest() -> None:
    plain = {"a": [1, "x", None], "b": {"c": 1.5}}
    assert codec.to_jsonable(plain, share=True) is plain
    mixed = {"plain": plain, "t": (1, 2)}
    out = codec.to_jsonable(mixed, share=True)
    assert out is not mixed and out["plain"] is plain
    assert out["t"] == {"$t": "tuple", "v": [1, 2]}
    assert mixed["t"] == (1, 2)  # the caller's value is never changed


@settings(max_examples=200)
@given(values, values, values)
def test_checkpoint_to_bytes_equals_the_model_dump_road(a: Any, b: Any, c: Any) -> None:
    from checkpoint.errors import CodecError as _CodecError
    from checkpoint.models import (
        FlowCheckpoint,
        NodeState,
        NodeStatus,
        PendingInput,
        checkpoint_to_bytes,
    )

    cp = FlowCheckpoint(
        flow_id="f",
        run_id="r",
        seq=1,
        original_input=a,
        metadata={"m": b},
        node_states={
            "n1": NodeState(
                node_id="n1",
                node_type="FunctionNode",
                status=NodeStatus.SUCCEEDED,
                input=b,
                output=c,
                internal_state={"s": a},
            )
        },
        pending_inputs=[PendingInput(path="p", prompt="?", metadata={"x": c})],
    )
    try:
        reference = codec.canonical_json(cp.model_dump(mode="json", by_alias=True))
    except (ValueError, TypeError) as exc:  # pydantic wraps the CodecError
        cause = exc.__cause__ or exc.__context__
        assert isinstance(cause, _CodecError)
        with pytest.raises(_CodecError) as caught:
            checkpoint_to_bytes(cp)
        assert str(caught.value) == str(cause)
        return
    assert checkpoint_to_bytes(cp) == reference


class _Price(float):
    """A float subclass: the slow road converts it, and may make a float of it."""


@pytest.mark.parametrize(
    ("value", "has_floats"),
    [
        ({"a": ["text", {"b": 1e-05}]}, True),  # a small float deep inside
        ([2.5e-07, 1e16, -0.0, 0.1], True),
        ({"price": _Price(1e-06)}, True),  # through _to_jsonable
        ({"n": float("inf"), "m": [1e-07]}, True),
        ({"plain": ["no", "floats", 1, True, None]}, False),
        ({"e-": "1e-5 in text", "0.00001": "not a float"}, False),
    ],
)
def test_canonical_bytes_equal_json_dumps_whether_or_not_floats_are_seen(
    value: object, has_floats: bool
) -> None:
    for share in (True, False):
        floats = [False]
        doc = codec.to_jsonable(value, floats=floats, share=share)
        assert floats[0] is has_floats
        fast = codec.canonical_json(doc, finite=True, floats=floats[0])
        reference = json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
        assert fast == reference == codec.encode(value)


def _same(a: Any, b: Any) -> bool:
    # NaN and -0.0 are values the codec keeps: compare their bits, not equality.
    return repr(a) == repr(b) and type(a) is type(b)


@given(values)
def test_fresh_decoding_in_place_equals_the_copying_decoder(value: Any) -> None:
    data = codec.encode(value)
    copied = codec.from_jsonable(json.loads(data))
    in_place = codec.from_jsonable(json.loads(data), fresh=True)
    assert _same(in_place, copied)
    assert _same(codec.decode(data), copied)


def test_fresh_decoding_keeps_untagged_containers_and_replaces_tags_where_they_stand() -> None:
    doc = json.loads(codec.encode({"plain": [1, {"a": "b"}], "raw": b"\x00"}))
    plain = doc["plain"]
    out = codec.from_jsonable(doc, fresh=True)
    assert out is doc and out["plain"] is plain
    assert out == {"plain": [1, {"a": "b"}], "raw": b"\x00"}


def test_fresh_decoding_refuses_the_same_depth() -> None:
    deep: Any = "leaf"
    for _ in range(codec.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(CodecError, match="nested deeper"):
        codec.from_jsonable(deep)
    with pytest.raises(CodecError, match="nested deeper"):
        codec.from_jsonable(deep, fresh=True)


@pytest.mark.parametrize(
    "data",
    [b"NaN", b'"\\ud800"', b"\xef\xbb\xbf[1]", b"[1e400]", b"123456789012345678901234567890"],
)
def test_loads_gives_what_json_loads_gives(data: bytes) -> None:
    assert _same(codec.loads(data), json.loads(data))


@pytest.mark.parametrize("data", [b"", b"[1,]", b'"\\x"', b"\xff", b"[" * 5000 + b"]" * 5000])
def test_loads_refuses_what_json_loads_refuses(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(data)
    with pytest.raises((ValueError, RecursionError)):
        codec.loads(data)
