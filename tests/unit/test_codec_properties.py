"""Property tests of checkpoint.codec: exact round trips, determinism, sealing."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from checkpoint import codec
from tests.unit.test_codec_strategies import (
    ENUM_MEMBERS,
    Color,
    Level,
    Mode,
    exactly_equal,
    hashables,
    values,
)

# No deadline: the machine is shared; these are correctness properties, not timings.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(values)
@example({"$t": "bytes", "v": "AA=="})
@example({"$t": {"$t": "tuple", "v": []}})
@example({True: 1, 2: "two", (3, "x"): [4.0], Color.RED: None, frozenset({1}): b""})
@example([float("nan"), float("inf"), float("-inf"), -0.0, 0.0])
@example({Mode.FAST: Level.HIGH, "fast": "fast"})
@example(10**4000)
@example(bytearray(b"\x00\xff"))
@example(dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))))
@example(dt.time(1, tzinfo=dt.timezone(-dt.timedelta(microseconds=1))))
def test_decode_encode_is_exact(value: Any) -> None:
    raw = codec.encode(value)
    back = codec.decode(raw)
    assert exactly_equal(back, value), (value, back)
    # The decoded value encodes to the very same bytes (stable SHA-256 across a resume).
    assert codec.encode(back) == raw


@PROPERTY
@given(values)
def test_encoding_is_canonical_json(value: Any) -> None:
    raw = codec.encode(value)
    doc = json.loads(raw)
    assert raw == json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _rebuilt(value: Any, rng: random.Random) -> Any:
    """An equal value built in another order: dicts re-inserted and sets re-filled shuffled."""
    if isinstance(value, dict):
        items = [(k, _rebuilt(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(reversed(items))
    if isinstance(value, (set, frozenset)):
        members = list(value)
        rng.shuffle(members)
        return type(value)(members)
    if isinstance(value, list):
        return [_rebuilt(v, rng) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuilt(v, rng) for v in value)
    return value


@PROPERTY
@given(values, st.randoms(use_true_random=False))
def test_equal_values_encode_to_the_same_bytes(value: Any, rng: random.Random) -> None:
    raw = codec.encode(value)
    assert codec.encode(copy.deepcopy(value)) == raw
    assert codec.encode(_rebuilt(value, rng)) == raw


def test_insertion_order_does_not_change_the_bytes() -> None:
    forward = {"b": 1, "a": {2: "x", "k": (1, 2)}, 3: {"z", "y"}}
    backward = {3: {"y", "z"}, "a": {"k": (1, 2), 2: "x"}, "b": 1}
    assert list(forward) != list(backward)
    assert codec.encode(forward) == codec.encode(backward)
    # Many distinct strings: set iteration order varies with insertion history.
    words = [f"w{i}" for i in range(200)]
    grown = set(words)
    shrunk = set(words + [f"x{i}" for i in range(1000)])
    shrunk -= {f"x{i}" for i in range(1000)}
    assert grown == shrunk
    assert codec.encode(grown) == codec.encode(shrunk)


@PROPERTY
@given(st.sets(hashables, max_size=6))
def test_sets_of_any_hashables_round_trip(members: set[Any]) -> None:
    back = codec.decode(codec.encode(members))
    assert exactly_equal(back, members)
    assert exactly_equal(codec.decode(codec.encode(frozenset(members))), frozenset(members))


def test_nan_set_members_stay_distinct() -> None:
    # NaN != NaN, so a set can hold several; each must come back as its own member.
    members = {float("nan"), float("nan"), 1.0}
    back = codec.decode(codec.encode(members))
    assert len(back) == 3
    assert sorted(repr(x) for x in back) == ["1.0", "nan", "nan"]


def test_decimal_nan_is_compared_by_text() -> None:
    for text in ["NaN", "-NaN", "sNaN", "Infinity", "-0", "1.000", "1E+5"]:
        back = codec.decode(codec.encode(Decimal(text)))
        assert type(back) is Decimal
        assert str(back) == text if text != "-0" else str(back) == "-0"


def test_enum_members_round_trip_by_identity() -> None:
    for member in ENUM_MEMBERS:
        back = codec.decode(codec.encode(member))
        assert type(back) is type(member) and back == member, member
    assert codec.decode(codec.encode(Level.LOW)) is Level.LOW


def test_zoned_datetimes_keep_instant_and_offset() -> None:
    # Zone identity is not kept (documented): the value returns with a fixed offset.
    paris = dt.datetime(2026, 7, 14, 12, 30, tzinfo=ZoneInfo("Europe/Paris"))
    back = codec.decode(codec.encode(paris))
    assert back == paris
    assert back.utcoffset() == paris.utcoffset() == dt.timedelta(hours=2)
    assert back.isoformat() == paris.isoformat()


@PROPERTY
@given(st.binary(max_size=4096) | values.map(codec.encode), st.integers(1, 19))
def test_seal_then_open_returns_the_bytes(raw: bytes, level: int) -> None:
    sealed = codec.seal(raw, level=level)
    assert sealed.sha256 == codec.sha256_hex(raw)
    assert sealed.raw_size == len(raw)
    assert sealed.stored_size == len(sealed.blob)
    assert codec.open_sealed(sealed.blob, sealed.sha256) == raw
    assert codec.open_sealed(sealed.blob, sealed.sha256, max_size=len(raw)) == raw


def test_compression_pays_on_agent_like_payloads() -> None:
    doc = {"messages": [{"role": "user", "content": "refund order 42 " * 20}] * 50}
    sealed = codec.seal(codec.encode(doc))
    assert sealed.stored_size * 10 < sealed.raw_size


def test_a_known_sha_is_not_recomputed() -> None:
    sealed = codec.seal(b"payload", sha256="0" * 64)
    assert sealed.sha256 == "0" * 64  # what open_sealed will then refuse (see test_codec_errors)
