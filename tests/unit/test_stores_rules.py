"""The shared store rules: times, cursors, argument checks and retention selection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from checkpoint import ConfigError, InvalidIdError
from checkpoint.store import BaseStore
from checkpoint.stores import rules
from checkpoint.stores.file import FileStore
from checkpoint.stores.memory import MemoryStore
from checkpoint.stores.rules import RunRow
from checkpoint.stores.sqlite import SQLiteStore
from tests.conformance.builders import checkpoint


def test_micros_round_trip_exactly() -> None:
    for value in (
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=dt.UTC),
        dt.datetime(2026, 2, 3, 4, 5, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ):
        back = rules.from_micros(rules.to_micros(value))
        assert back == value
        assert back.utcoffset() == dt.timedelta(0)
    assert rules.to_micros(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)) == 1_000_000
    with pytest.raises(ValueError, match="timezone-aware"):
        rules.to_micros(dt.datetime(2026, 1, 1))


def test_cursor_round_trip_and_bad_cursors() -> None:
    cursor = rules.encode_cursor(1_770_000_000_123_456, "run-7")
    assert rules.decode_cursor(cursor) == (1_770_000_000_123_456, "run-7")
    for bad in ("", "!!!", "bm90IGEgY3Vyc29y", rules.encode_cursor(1, "../x")):
        with pytest.raises(InvalidIdError, match="invalid cursor"):
            rules.decode_cursor(bad)


def test_argument_checks() -> None:
    assert rules.lease_micros(0.3) == 300_000
    for bad_lease in (0, -1, float("nan"), "5"):
        with pytest.raises(ConfigError, match="lease_seconds"):
            rules.lease_micros(bad_lease)  # type: ignore[arg-type]
    for bad_limit in (0, -3, True, 2.5):
        with pytest.raises(ConfigError, match="limit"):
            rules.validate_limit(bad_limit)
    with pytest.raises(ConfigError, match="max_checkpoints"):
        rules.validate_retention(-1)
    assert rules.validate_input_path("map[7]/review#2") == "map[7]/review#2"
    for bad_path in ("", "a\nb", "x" * 1025, 7):
        with pytest.raises(InvalidIdError, match="input path"):
            rules.validate_input_path(bad_path)


def _row(**claim: object) -> RunRow:
    return RunRow(
        run_id="r",
        tenant_id="t",
        flow_id="f",
        status=rules.CheckpointStatus.ACTIVE,
        latest_seq=9,
        created_at=0,
        updated_at=0,
        **claim,  # type: ignore[arg-type]
    )


def test_retention_victims() -> None:
    entries = [(s, "pending_input" if s == 3 else "active", s * 10) for s in range(10)]
    live = _row(claim_worker="w", claim_expires=1_000, claim_seq=5, epoch=1)
    expired = _row(claim_worker="w", claim_expires=10, claim_seq=5, epoch=1)
    assert rules.retention_victims(entries, keep=2, cutoff=None, row=live, now=100) == [
        7,
        6,
        4,
        2,
        1,
        0,
    ]
    assert 5 in rules.retention_victims(entries, keep=2, cutoff=None, row=expired, now=100)
    assert rules.retention_victims(entries, keep=None, cutoff=45, row=live, now=100) == [
        4,
        2,
        1,
        0,
    ]
    assert rules.retention_victims([(0, "active", 0)], keep=0, cutoff=0, row=None, now=0) == []


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
async def test_stores_refuse_bad_paging_arguments(kind: str, tmp_path: Path) -> None:
    store: BaseStore = {
        "memory": lambda: MemoryStore(),
        "file": lambda: FileStore(tmp_path / "f"),
        "sqlite": lambda: SQLiteStore(tmp_path / "s.db"),
    }[kind]()
    try:
        await store.put(checkpoint("run-1", 0))
        with pytest.raises(InvalidIdError, match="invalid cursor"):
            await store.list_runs(cursor="garbage")
        with pytest.raises(ConfigError, match="limit"):
            await store.list_runs(limit=0)
        with pytest.raises(ConfigError, match="limit"):
            await store.list_checkpoints("run-1", limit=-1)
        with pytest.raises(ConfigError, match="lease_seconds"):
            await store.claim("run-1", "w", 0)
        with pytest.raises(ConfigError, match="max_checkpoints"):
            await store.prune("run-1", -1)
    finally:
        await store.close()
