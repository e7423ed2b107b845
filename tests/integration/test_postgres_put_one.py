"""The single-record write path (``flowpoint_put_one``) decides exactly like the batch path.

Every scenario is played twice on a real PostgreSQL, on two runs that differ only in their
id: once through ``put_sealed_many`` with one item (which takes ``flowpoint_put_one``) and
once through the set-based ``flowpoint_put_batch``. Outcomes, the runs rows and the stored
checkpoints must be the same.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from checkpoint import CheckpointStatus, FlowCheckpoint, NodeState, NodeStatus, PendingInput
from checkpoint.errors import FlowpointError
from checkpoint.store import PutOutcome, SealedCheckpoint
from checkpoint.stores.postgres import PostgresStore

BASE_TIME = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def record(
    store: PostgresStore,
    run_id: str,
    seq: int,
    *,
    tenant_id: str = "t1",
    note: str = "",
    pending: tuple[str, ...] = (),
    status: CheckpointStatus = CheckpointStatus.ACTIVE,
) -> SealedCheckpoint:
    cp = FlowCheckpoint(
        tenant_id=tenant_id,
        flow_id="flow-one",
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus.PENDING_INPUT if pending else status,
        node_states={
            "a": NodeState(node_id="a", node_type="FunctionNode", status=NodeStatus.SUCCEEDED)
        },
        pending_inputs=[PendingInput(path=p, prompt="?", requested_at=BASE_TIME) for p in pending],
        metadata={"note": note} if note else {},
        created_at=BASE_TIME + dt.timedelta(seconds=seq),
    )
    return store.seal_checkpoint(cp)


def describe(result: PutOutcome | FlowpointError) -> str:
    return result if isinstance(result, str) else type(result).__name__


async def put_one(store: PostgresStore, rec: SealedCheckpoint, epoch: int) -> str:
    [result] = await store.put_sealed_many([(rec, epoch)])
    return describe(result)


async def put_via_batch(store: PostgresStore, rec: SealedCheckpoint, epoch: int) -> str:
    results: list[PutOutcome | FlowpointError | None] = [None]
    await store._put_many([(rec, epoch)], [0], results)
    assert results[0] is not None
    return describe(results[0])


# (run suffix, seq, options, epoch, claim the run before this step)
Step = tuple[str, int, dict[str, Any], int, bool]

STEPS: list[Step] = [
    ("a", 0, {}, 0, False),  # a new run: stored
    ("a", 0, {}, 0, False),  # the same again: duplicate
    ("a", 0, {"note": "x"}, 0, False),  # same key, other checksum: conflict
    ("a", 1, {}, 1, False),  # epoch 1 on an unclaimed run: stale
    ("a", 1, {"tenant_id": "t2"}, 0, False),  # another tenant's run
    ("a", 2, {"pending": ("review",)}, 0, False),  # stored, pending input on the run
    ("a", 1, {}, 0, False),  # a late, lower seq: stored, the run keeps seq 2's status
    ("a", 3, {}, 0, True),  # claimed (epoch 1) meanwhile: epoch 0 is stale
    ("a", 3, {"status": CheckpointStatus.COMPLETED}, 1, False),  # the current epoch: stored
    ("a", 3, {"status": CheckpointStatus.COMPLETED}, 0, False),  # duplicate despite old epoch
    ("a", 3, {"note": "y"}, 0, False),  # other checksum and a stale epoch: stale first
    ("a", 3, {"note": "y"}, 1, False),  # other checksum, current epoch: conflict
    ("b", 0, {}, 3, False),  # a new run with an epoch it cannot have: stale, no run left
    ("c", 5, {"tenant_id": "t9"}, 0, False),  # a new run starting at seq 5
]


async def snapshot(dsn: str, run_id: str) -> tuple[Any, list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        run = await conn.fetchrow(
            "SELECT tenant_id, flow_id, status, latest_seq, epoch, pending_inputs "
            "FROM runs WHERE run_id = $1",
            run_id,
        )
        rows = await conn.fetch(
            # Not sha256 nor stored_size: the payloads of the two runs differ by their run_id
            # (of the same length, so raw_size must agree).
            "SELECT seq, tenant_id, status, raw_size, summary, created_at "
            "FROM checkpoints WHERE run_id = $1 ORDER BY seq",
            run_id,
        )
    finally:
        await conn.close()
    return (dict(run) if run else None), [dict(r) for r in rows]


async def test_put_one_decides_like_the_batch_function(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    store = postgres_store
    outcomes: dict[str, list[str]] = {"one": [], "bat": []}
    for suffix, seq, options, epoch, claim in STEPS:
        for mode, put in (("one", put_one), ("bat", put_via_batch)):
            run_id = f"{mode}-{suffix}"
            if claim:
                await store.claim(run_id, "w1", 30)
            outcomes[mode].append(await put(store, record(store, run_id, seq, **options), epoch))
    assert outcomes["one"] == outcomes["bat"]
    # The scenarios cover every outcome, so the comparison means something.
    assert set(outcomes["one"]) == {
        "stored",
        "duplicate",
        "SeqConflictError",
        "StaleEpochError",
        "TenantMismatchError",
    }
    for suffix in ("a", "b", "c"):
        one = await snapshot(pg_dsn, f"one-{suffix}")
        batch = await snapshot(pg_dsn, f"bat-{suffix}")
        assert one == batch, suffix
    run, rows = await snapshot(pg_dsn, "one-a")
    assert run is not None and run["latest_seq"] == 3 and run["epoch"] == 1
    assert run["status"] == "completed"
    assert [r["seq"] for r in rows] == [0, 1, 2, 3]
    assert (await snapshot(pg_dsn, "one-b")) == (None, [])


async def test_put_one_keeps_pending_inputs_of_the_newest_checkpoint(
    postgres_store: PostgresStore, pg_dsn: str
) -> None:
    store = postgres_store
    assert await put_one(store, record(store, "p", 0, pending=("review", "x/y#2")), 0) == "stored"
    run, _ = await snapshot(pg_dsn, "p")
    assert run is not None and run["pending_inputs"] == ["review", "x/y#2"]
    assert run["status"] == "pending_input"
    assert await put_one(store, record(store, "p", 1), 0) == "stored"
    run, _ = await snapshot(pg_dsn, "p")
    assert run is not None and run["pending_inputs"] == [] and run["status"] == "active"
