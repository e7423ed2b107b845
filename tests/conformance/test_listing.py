"""Conformance: listing checkpoints and runs, paging, and the run summary.

Runs are listed newest first: ``updated_at`` descending, ties broken by
``run_id`` descending. ``updated_at`` moves on every stored checkpoint of the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from checkpoint import CheckpointStatus, checkpoint_to_bytes
from tests.conformance.builders import checkpoint, sha_of

COMPLETED = CheckpointStatus.COMPLETED
FAILED = CheckpointStatus.FAILED


async def test_list_checkpoints_newest_first_with_limit_and_before_seq(store: Any) -> None:
    written = [checkpoint("run-1", seq) for seq in range(5)]
    for cp in written:
        await store.put(cp)
    listed = await store.list_checkpoints("run-1")
    assert [s.seq for s in listed] == [4, 3, 2, 1, 0]
    assert [s.seq for s in await store.list_checkpoints("run-1", limit=2)] == [4, 3]
    page = await store.list_checkpoints("run-1", limit=2, before_seq=3)
    assert [s.seq for s in page] == [2, 1]
    assert [s.seq for s in await store.list_checkpoints("run-1", before_seq=1)] == [0]
    assert await store.list_checkpoints("run-1", before_seq=0) == []

    by_seq = {cp.seq: cp for cp in written}
    for summary in listed:
        cp = by_seq[summary.seq]
        assert summary.run_id == "run-1"
        assert summary.status == CheckpointStatus.ACTIVE
        assert summary.sha256 == sha_of(cp)
        assert summary.raw_size == len(checkpoint_to_bytes(cp))
        assert 0 < summary.stored_size
        assert summary.created_at == cp.created_at


async def _seed_runs(store: Any) -> list[str]:
    """Seven runs written in order run-00 .. run-06, so newest first is the reverse."""
    specs = [
        ("run-00", "flow-a", "t1", CheckpointStatus.ACTIVE),
        ("run-01", "flow-b", "t1", COMPLETED),
        ("run-02", "flow-a", "t2", COMPLETED),
        ("run-03", "flow-b", "t2", FAILED),
        ("run-04", "flow-a", "t1", COMPLETED),
        ("run-05", "flow-a", "t2", CheckpointStatus.ACTIVE),
        ("run-06", "flow-b", "t1", COMPLETED),
    ]
    for run_id, flow_id, tenant, status in specs:
        await store.put(checkpoint(run_id, 0, flow_id=flow_id, tenant_id=tenant, status=status))
    return [s[0] for s in reversed(specs)]


async def _all_pages(store: Any, limit: int, **filters: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        page = await store.list_runs(limit=limit, cursor=cursor, **filters)
        assert len(page.runs) <= limit
        seen.extend(r.run_id for r in page.runs)
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("list_runs paging did not end")


async def test_list_runs_newest_first(store: Any) -> None:
    expected = await _seed_runs(store)
    page = await store.list_runs()
    assert [r.run_id for r in page.runs] == expected
    assert page.next_cursor is None
    stamps = [(r.updated_at, r.run_id) for r in page.runs]
    assert stamps == sorted(stamps, reverse=True)


async def test_list_runs_filters(store: Any) -> None:
    await _seed_runs(store)

    async def ids(**filters: Any) -> list[str]:
        return [r.run_id for r in (await store.list_runs(**filters)).runs]

    assert await ids(flow_id="flow-b") == ["run-06", "run-03", "run-01"]
    assert await ids(status=COMPLETED) == ["run-06", "run-04", "run-02", "run-01"]
    assert await ids(tenant_id="t2") == ["run-05", "run-03", "run-02"]
    assert await ids(flow_id="flow-a", status=COMPLETED, tenant_id="t1") == ["run-04"]
    assert await ids(flow_id="no-such-flow") == []
    page = await store.list_runs(status=FAILED)
    [run] = page.runs
    assert (run.run_id, run.flow_id, run.tenant_id, run.status) == (
        "run-03",
        "flow-b",
        "t2",
        FAILED,
    )


async def test_list_runs_pages_cover_every_run_once(store: Any) -> None:
    expected = await _seed_runs(store)
    for limit in (1, 2, 3, 7, 8):
        assert await _all_pages(store, limit) == expected
    first = await store.list_runs(limit=3)
    assert [r.run_id for r in first.runs] == expected[:3]
    assert first.next_cursor is not None
    assert await _all_pages(store, 2, flow_id="flow-a") == ["run-05", "run-04", "run-02", "run-00"]
    assert await _all_pages(store, 1, tenant_id="t1", status=COMPLETED) == [
        "run-06",
        "run-04",
        "run-01",
    ]


async def test_a_new_checkpoint_moves_its_run_to_the_front(store: Any) -> None:
    expected = await _seed_runs(store)
    before = await store.get_run("run-00")
    await asyncio.sleep(0.002)  # a clock tick, so the update cannot tie with run-06's write
    await store.put(checkpoint("run-00", 1, flow_id="flow-a", tenant_id="t1", status=COMPLETED))
    after = await store.get_run("run-00")
    assert before is not None and after is not None
    assert after.updated_at >= before.updated_at
    assert after.created_at == before.created_at
    page = await store.list_runs()
    assert [r.run_id for r in page.runs] == ["run-00", *expected[:-1]]
    assert page.runs[0].status == COMPLETED


async def test_get_run_fields(store: Any) -> None:
    await store.put(checkpoint("run-1", 0, flow_id="etl", tenant_id="acme"))
    await store.put(
        checkpoint(
            "run-1", 1, flow_id="etl", tenant_id="acme", pending=["review", "triage/tools/ok#3"]
        )
    )
    run = await store.get_run("run-1")
    assert run is not None
    assert run.run_id == "run-1"
    assert run.flow_id == "etl"
    assert run.tenant_id == "acme"
    assert run.latest_seq == 1
    assert run.status == CheckpointStatus.PENDING_INPUT
    assert run.pending_inputs == ["review", "triage/tools/ok#3"]
    assert run.epoch == 0
    assert run.claim is None
    assert run.created_at.utcoffset() == dt.timedelta(0)
    assert run.updated_at.utcoffset() == dt.timedelta(0)
    assert run.created_at <= run.updated_at

    claim = await store.claim("run-1", "worker-a", 30)
    run = await store.get_run("run-1")
    assert run is not None
    assert run.epoch == 1
    assert run.claim is not None
    assert (run.claim.worker_id, run.claim.epoch, run.claim.seq) == ("worker-a", 1, 1)
    assert run.claim.lease_expires_at == claim.lease_expires_at

    # the latest checkpoint decides status and pending inputs
    await store.put(checkpoint("run-1", 2, flow_id="etl", tenant_id="acme"), epoch=1)
    run = await store.get_run("run-1")
    assert run is not None
    assert (run.latest_seq, run.status, run.pending_inputs) == (2, CheckpointStatus.ACTIVE, [])

    await store.release("run-1", "worker-a", 1)
    run = await store.get_run("run-1")
    assert run is not None
    assert (run.epoch, run.claim) == (1, None)
