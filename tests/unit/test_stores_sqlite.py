"""SQLiteStore specifics: pragmas, reopening, two connections on one file, loop changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint import ClaimConflictError, StaleEpochError
from checkpoint.stores.sqlite import SQLiteStore
from tests.conformance.builders import checkpoint


async def test_wal_mode_and_synchronous_setting(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    full = SQLiteStore(tmp_path / "b.db", synchronous="FULL")
    try:
        await store.put(checkpoint("run-1", 0))
        await full.put(checkpoint("run-1", 0))
        conn = await store._connect()
        async with conn.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone()) == ("wal",)
        async with conn.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone()) == (1,)  # NORMAL
        conn_full = await full._connect()
        async with conn_full.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone()) == (2,)  # FULL
    finally:
        await store.close()
        await full.close()
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "c.db", synchronous="OFF")  # type: ignore[arg-type]


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ckpts.db"
    store = SQLiteStore(path)
    cp = checkpoint("run-1", 3, pending=["review"])
    await store.put(cp)
    claim = await store.claim("run-1", "worker-a", 60)
    await store.submit_input("run-1", "review", {"ok": True})
    await store.close()
    await store.close()  # closing twice is harmless

    reopened = SQLiteStore(path)
    try:
        assert await reopened.get("run-1") == cp
        run = await reopened.get_run("run-1")
        assert run is not None and run.claim is not None
        assert (run.epoch, run.claim.worker_id, run.claim.seq) == (claim.epoch, "worker-a", 3)
        [answer] = await reopened.list_inputs("run-1")
        assert answer.answer == {"ok": True}
    finally:
        await reopened.close()


async def test_two_stores_on_one_file_claim_atomically(tmp_path: Path) -> None:
    """Two connections stand in for two processes: BEGIN IMMEDIATE serializes them."""
    path = tmp_path / "shared.db"
    stores = [SQLiteStore(path) for _ in range(2)]
    try:
        await stores[0].put(checkpoint("run-1", 0))
        results = await asyncio.gather(
            *(stores[i % 2].claim("run-1", f"w{i}", 60) for i in range(8)),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1
        assert all(isinstance(r, ClaimConflictError) for r in results if r not in winners)
        with pytest.raises(StaleEpochError):
            await stores[1].put(checkpoint("run-1", 1), epoch=0)
        assert await stores[1].put(checkpoint("run-1", 1), epoch=1) == "stored"
        latest = await stores[0].get("run-1")
        assert latest is not None and latest.seq == 1
    finally:
        for s in stores:
            await s.close()


async def test_timestamps_are_stored_as_utc_micros(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    cp = checkpoint("run-1", 0)
    try:
        await store.put(cp)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        (created,) = conn.execute("SELECT created_at FROM checkpoints").fetchone()
    conn.close()
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert created == (cp.created_at - epoch) // dt.timedelta(microseconds=1)
    reopened = SQLiteStore(tmp_path / "t.db")
    try:
        back = await reopened.list_checkpoints("run-1")
    finally:
        await reopened.close()
    assert back[0].created_at == cp.created_at
    assert back[0].created_at.utcoffset() == dt.timedelta(0)


def test_usable_from_successive_event_loops(tmp_path: Path) -> None:
    """``run_sync`` callers may bring a new loop per call."""
    store = SQLiteStore(tmp_path / "loops.db")
    asyncio.run(store.put(checkpoint("run-1", 0)))
    got = asyncio.run(store.get("run-1"))
    assert got is not None and got.seq == 0
    asyncio.run(store.close())


def test_a_script_that_never_closes_the_store_still_exits(tmp_path: Path) -> None:
    script = (
        "from checkpoint import CheckpointConfig\n"
        "from checkpoint.stores import SQLiteStore\n"
        "from flows import Flow, FunctionNode\n"
        f"store = SQLiteStore({str(tmp_path / 'x.db')!r})\n"
        "flow = Flow(id='f', nodes=[FunctionNode(id='a', fn=lambda i: 1)],\n"
        "            checkpoint=CheckpointConfig(enabled=True, store=store))\n"
        "print(flow.run_sync(None, run_id='r1').status.value)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "completed"
