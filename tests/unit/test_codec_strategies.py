"""Hypothesis strategies for every value the codec supports, and an exact comparison.

The codec and model property tests import from here. The tests in this module
check ``exactly_equal`` itself: a comparison that forgives too much would make
every round-trip property pass vacuously.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import strategies as st

# --------------------------------------------------------------------------- test enums


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = 3


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"
    SLOW = "slow"


class Perm(enum.Flag):
    R = 1
    W = 2
    X = 4


class Shape(enum.Enum):
    """Members whose values are themselves tagged (a tuple, bytes)."""

    POINT = (0, 0)
    BLOB = b"\x00\x01"


class Outer:
    class Inner(enum.Enum):
        """Nested: found through its qualified name ``Outer.Inner``."""

        ONE = 1


ENUM_MEMBERS: list[enum.Enum] = [
    *Color,
    *Level,
    *Mode,
    Perm.R,
    Perm.R | Perm.W,
    Perm(0),
    *Shape,
    Outer.Inner.ONE,
]

# --------------------------------------------------------------------------- strategies

# datetime.timezone takes offsets strictly inside +-24h, microseconds included.
_OFFSET = dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)
timezones = st.just(dt.UTC) | st.builds(
    dt.timezone, st.timedeltas(min_value=-_OFFSET, max_value=_OFFSET)
)

# The codec does not keep `fold` (see checkpoint/codec.py): values differing only in fold
# compare equal, so the strategies draw fold=0.
datetimes = st.datetimes(timezones=st.none() | timezones).map(lambda d: d.replace(fold=0))
times = st.times(timezones=st.none() | timezones).map(lambda t: t.replace(fold=0))

big_ints = st.integers(min_value=-(10**300), max_value=10**300)
ints = st.integers() | big_ints | st.sampled_from([0, -1, 2**53 + 1, 2**63, -(2**64)])
floats = st.floats(allow_nan=True, allow_infinity=True)
decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [Decimal("-0"), Decimal("1.000"), Decimal("1E+5"), Decimal("sNaN"), Decimal("-NaN")]
)
texts = st.text()  # any Unicode scalar value; lone surrogates are not text
keys = texts | st.sampled_from(["$t", "v", "cls", "", "$t2"])

# Hashable scalars without NaN: NaN is unequal to itself, so as a set member or dict key
# it cannot be compared meaningfully (test_codec_properties checks NaN members apart).
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False, allow_infinity=True),
    texts,
    st.binary(max_size=16),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from(ENUM_MEMBERS),
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    texts,
    st.binary(max_size=64),
    st.binary(max_size=64).map(bytearray),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.uuids(),
    decimals,
    st.sampled_from(ENUM_MEMBERS),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(hashables, children, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    )


values = st.recursive(scalars, _containers, max_leaves=24)
"""Any value the codec supports, nested."""

str_key_dicts = st.dictionaries(keys, values, max_size=5)
"""A dict with string keys (possibly "$t"): what dict[str, Any] model fields hold."""

# --------------------------------------------------------------------------- exact comparison


def exactly_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are equal and of exactly the same types, recursively.

    ``True`` vs ``1``, ``1.0`` vs ``1``, ``0.0`` vs ``-0.0``, a list vs a tuple,
    ``Decimal("1.0")`` vs ``Decimal("1.00")`` and a naive vs an aware datetime
    all differ; NaN equals NaN (of the same type).
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)  # keeps NaN, sNaN, the sign of zero and the exponent
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(exactly_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        remaining = list(b.items())
        for key, value in a.items():
            match = next((i for i, (k, _) in enumerate(remaining) if exactly_equal(key, k)), None)
            if match is None or not exactly_equal(value, remaining[match][1]):
                return False
            remaining.pop(match)
        return True
    if isinstance(a, (set, frozenset)):
        if len(a) != len(b):
            return False
        remaining_items = list(b)
        for item in a:
            match = next((i for i, y in enumerate(remaining_items) if exactly_equal(item, y)), None)
            if match is None:
                return False
            remaining_items.pop(match)
        return True
    if isinstance(a, (dt.datetime, dt.time)):
        if (a.tzinfo is None) != (b.tzinfo is None):
            return False
        # Aware values compare as instants: the same offset makes them the same wall time too.
        return bool(a == b and a.utcoffset() == b.utcoffset())
    return bool(a == b)


# --------------------------------------------------------------------------- self-tests


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (1, 1.0),
        (0.0, -0.0),
        ([1, 2], (1, 2)),
        ({1, 2}, frozenset({1, 2})),
        (b"x", bytearray(b"x")),
        ("1", 1),
        (Decimal("1.0"), Decimal("1.00")),
        (Decimal("NaN"), Decimal("sNaN")),
        (float("nan"), Decimal("NaN")),
        (dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        (
            dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC),
            dt.datetime(2026, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        ),
        (dt.date(2026, 1, 1), dt.datetime(2026, 1, 1)),
        (Level.LOW, 1),
        (Mode.FAST, "fast"),
        ({"a": [1]}, {"a": (1,)}),
        ({1: "x"}, {True: "x"}),
        ({"k": 1}, {"k": 1, "j": 2}),
        ({frozenset({1}): 0}, {frozenset({True}): 0}),
        ([1, [2, [3]]], [1, [2, [3.0]]]),
        (uuid.UUID(int=1), uuid.UUID(int=2)),
    ],
)
def test_exactly_equal_tells_apart(a: Any, b: Any) -> None:
    assert not exactly_equal(a, b)
    assert not exactly_equal(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (float("nan"), float("nan")),
        ({"b": 1, "a": 2}, {"a": 2, "b": 1}),
        ({1, 2, 3}, {3, 2, 1}),
        ({(1, "a"): [b"x"]}, {(1, "a"): [b"x"]}),
        (Decimal("NaN"), Decimal("NaN")),
        (
            dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST")),
            dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
    ],
)
def test_exactly_equal_accepts(a: Any, b: Any) -> None:
    assert exactly_equal(a, b)
