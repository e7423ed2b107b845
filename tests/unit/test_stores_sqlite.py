"""SQLiteStore specifics: pragmas, reopening, two connections on one file, loop changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint import (
    CheckpointStatus,
    ClaimConflictError,
    FlowCheckpoint,
    FlowpointError,
    InvalidIdError,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    TenantMismatchError,
)
from checkpoint.store import SealedCheckpoint
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


# -- batch writes ---------------------------------------------------------------------------


def _seal(store: SQLiteStore, cp: FlowCheckpoint) -> SealedCheckpoint:
    return store.seal_checkpoint(cp)


async def test_put_sealed_many_mixed_outcomes_in_one_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "batch.db")
    try:
        # Before: run "old" at seq 0 and 1, claimed (epoch 1); run "ten" of the default tenant.
        await store.put(checkpoint("old", 0))
        await store.put(checkpoint("old", 1))
        assert (await store.claim("old", "w1", 30)).epoch == 1
        await store.put(checkpoint("ten", 0))

        new_a = _seal(store, checkpoint("new", 0))
        new_a_other = _seal(store, checkpoint("new", 0, note="other"))
        new_b = _seal(store, checkpoint("new", 1, pending=["review"]))
        old_dup = _seal(store, await _stored(store, "old", 1))
        old_conflict = _seal(store, checkpoint("old", 1, note="changed"))
        old_stale = _seal(store, checkpoint("old", 2))
        old_ok = _seal(store, checkpoint("old", 3, status=CheckpointStatus.COMPLETED))
        foreign = _seal(store, checkpoint("ten", 1, tenant_id="t2"))
        bad = _seal(store, checkpoint("okid", 0))
        bad.run_id = "../etc"
        fenced_new = _seal(store, checkpoint("fenced", 0))

        results = await store.put_sealed_many(
            [
                (new_a, 0),
                (old_dup, 0),  # already stored: a duplicate even with an old epoch
                (new_a, 0),  # same key, same checksum, same batch
                (old_conflict, 1),
                (old_stale, 0),  # claimed run, epoch 0 is stale
                (new_a_other, 0),  # same key, other checksum, same batch
                (foreign, 0),
                (bad, 0),
                (old_ok, 1),
                (new_b, 0),
                (fenced_new, 3),  # a new run starts at epoch 0
            ]
        )
        assert len(results) == 11
        assert results[0] == "stored"
        assert results[1] == "duplicate"
        assert results[2] == "duplicate"
        assert isinstance(results[3], SeqConflictError)
        assert isinstance(results[4], StaleEpochError)
        assert "epoch 1" in str(results[4])
        assert isinstance(results[5], SeqConflictError)
        assert isinstance(results[6], TenantMismatchError)
        assert isinstance(results[7], InvalidIdError)
        assert results[8] == "stored"
        assert results[9] == "stored"
        assert isinstance(results[10], StaleEpochError)

        # Refused items left nothing behind; accepted ones are all there, unchanged.
        conn = await store._connect()
        async with conn.execute(
            "SELECT run_id, seq, sha256 FROM checkpoints ORDER BY run_id, seq"
        ) as cur:
            stored = [tuple(r) for r in await cur.fetchall()]
        assert [(r[0], r[1]) for r in stored] == [
            ("new", 0),
            ("new", 1),
            ("old", 0),
            ("old", 1),
            ("old", 3),
            ("ten", 0),
        ]
        assert stored[0][2] == new_a.sha256
        assert stored[3][2] == old_dup.sha256
        assert await store.get_sealed("new", 0) == new_a
        assert await store.get_sealed("old", 3) == old_ok
        assert await store.get_run("fenced") is None  # no row for a refused first put

        new_run = await store.get_run("new")
        assert new_run is not None
        assert (new_run.latest_seq, new_run.status) == (1, CheckpointStatus.PENDING_INPUT)
        assert new_run.pending_inputs == ["review"]
        old_run = await store.get_run("old")
        assert old_run is not None and old_run.claim is not None
        assert (old_run.latest_seq, old_run.status, old_run.epoch) == (
            3,
            CheckpointStatus.COMPLETED,
            1,
        )
        ten_run = await store.get_run("ten")
        assert ten_run is not None
        assert (ten_run.tenant_id, ten_run.latest_seq) == ("default", 0)
    finally:
        await store.close()


async def _stored(store: SQLiteStore, run_id: str, seq: int) -> FlowCheckpoint:
    cp = await store.get(run_id, seq)
    assert cp is not None
    return cp


async def test_put_sealed_many_matches_put_sealed_one_by_one(tmp_path: Path) -> None:
    """The batch decides each item as a sequence of single puts would."""
    one = SQLiteStore(tmp_path / "one.db")
    many = SQLiteStore(tmp_path / "many.db")
    try:
        first = checkpoint("r", 0)
        for store in (one, many):
            await store.put(first)
            await store.claim("r", "w", 30)
        failed = checkpoint("r", 2, status=CheckpointStatus.FAILED)
        cps = [
            failed,
            checkpoint("r", 1, pending=["x"]),
            failed,  # a retry in the same batch, with a stale epoch
            checkpoint("r", 0),
            checkpoint("mix", 0, tenant_id="t2"),
            checkpoint("mix", 1),
            checkpoint("mix", 1, tenant_id="t2"),
        ]
        epochs = [1, 1, 0, 0, 0, 0, 0]
        sealed = [_seal(one, cp) for cp in cps]
        expected: list[object] = []
        for record, epoch in zip(sealed, epochs, strict=True):
            try:
                expected.append(await one.put_sealed(record, epoch=epoch))
            except FlowpointError as exc:
                expected.append(type(exc))
        got = await many.put_sealed_many(list(zip(sealed, epochs, strict=True)))
        assert [r if isinstance(r, str) else type(r) for r in got] == expected
        assert expected == [
            "stored",
            "stored",
            "duplicate",
            StaleEpochError,  # seq 0 was stored before the batch, but with another checksum
            "stored",
            TenantMismatchError,  # the batch's first item made "mix" a t2 run
            "stored",
        ]
        for run_id in ("r", "mix"):
            a, b = await one.get_run(run_id), await many.get_run(run_id)
            assert a is not None and b is not None
            assert (a.latest_seq, a.status, a.pending_inputs, a.epoch, a.tenant_id) == (
                b.latest_seq,
                b.status,
                b.pending_inputs,
                b.epoch,
                b.tenant_id,
            )
            assert [c.sha256 for c in await one.list_checkpoints(run_id)] == [
                c.sha256 for c in await many.list_checkpoints(run_id)
            ]
        run = await many.get_run("r")
        assert run is not None
        assert (run.latest_seq, run.status, run.pending_inputs) == (2, CheckpointStatus.FAILED, [])
        assert await many.put_sealed_many([]) == []
    finally:
        await one.close()
        await many.close()


async def test_put_sealed_many_is_all_or_nothing_on_a_database_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "atomic.db")
    try:
        good = _seal(store, checkpoint("a", 0))
        broken = _seal(store, checkpoint("b", 0))
        broken.blob = [1]  # type: ignore[assignment]  # sqlite3 cannot bind a list
        with pytest.raises(StoreError, match="SQLite store"):
            await store.put_sealed_many([(good, 0), (broken, 0)])
        assert await store.get_run("a") is None
        assert await store.list_checkpoints("a") == []
        # The failed transaction was rolled back: the connection writes again.
        assert await store.put_sealed_many([(good, 0)]) == ["stored"]
        assert await store.put_sealed(good) == "duplicate"
    finally:
        await store.close()
