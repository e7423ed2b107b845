"""The sidecar's retention task under concurrent writers (real sidecar, real PostgreSQL).

Several runs are written at once, one checkpoint per OTLP request, while the retention
task sweeps continuously. Each run names its own policy in its checkpoints' metadata (or
none: the sidecar's default of 10). After every acknowledged write the test checks that
what the task promises holds at that very moment: the newest ``max_checkpoints`` are all
there (so the latest is), and so are the pending-input and claimed checkpoints. Once the
writers are done and a final sweep ran, each run holds exactly its newest
``min(n, max_checkpoints)`` checkpoints plus the pending and claimed ones, an idle run past
its ``retention_days`` only its latest (and pending) ones, and the deleted-checkpoints
counter adds up to what is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from checkpoint import FlowCheckpoint
from sidecar.retention import RETENTION_KEY, RetentionTask
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar import (
    InprocSidecar,
    SpanRecorder,
    metric,
    otlp_body,
    scrape,
    start_inproc_sidecar,
    stop_inproc_sidecar,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}
EXPIRE_DAYS = 0.00005  # 4.32 s: the "old" run goes idle for that long after its last write


@dataclass
class Plan:
    """One run: how many checkpoints, its policy, and what must survive."""

    run_id: str
    n: int
    keep: int | None  # its max_checkpoints (None: no limit)
    metadata: dict[str, Any] = field(default_factory=dict)
    pending: frozenset[int] = frozenset()
    claim_after: int | None = None  # claim the run once this seq is written
    expires: bool = False
    claimed_seq: int | None = None

    def newest(self, upto: int) -> set[int]:
        start = 0 if self.keep is None else max(0, upto - self.keep + 1)
        return set(range(start, upto + 1))

    def protected(self) -> set[int]:
        out = set(self.pending)
        if self.claimed_seq is not None:
            out.add(self.claimed_seq)
        return out

    def final(self) -> set[int]:
        latest = self.n - 1
        if self.expires:
            return {latest} | self.protected()
        return self.newest(latest) | self.protected()


PLANS = [
    Plan("r-default", 25, 10),
    Plan("r-three", 20, 3, {"max_checkpoints": 3}),
    Plan("r-unlimited", 15, None, {"max_checkpoints": None}),
    Plan("r-short", 2, 5, {"max_checkpoints": 5}),
    Plan("r-pending", 20, 4, {"max_checkpoints": 4}, pending=frozenset({5, 12})),
    Plan("r-claimed", 20, 3, {"max_checkpoints": 3}, claim_after=9),
    Plan("r-old", 12, 10, {"retention_days": EXPIRE_DAYS}, pending=frozenset({2}), expires=True),
]


@pytest.fixture
async def sidecar(pg_dsn: str) -> AsyncIterator[InprocSidecar]:
    running = await start_inproc_sidecar(pg_dsn, retention_interval=0.02, retention_batch=3)
    try:
        yield running
    finally:
        await stop_inproc_sidecar(running)


def _checkpoint(plan: Plan, seq: int) -> FlowCheckpoint:
    cp = checkpoint(plan.run_id, seq, pending=["review"] if seq in plan.pending else ())
    return cp.model_copy(update={"metadata": {**plan.metadata, "seq": seq}})


async def _seqs(http: aiohttp.ClientSession, run_id: str) -> set[int]:
    async with http.get(f"/v1/runs/{run_id}/checkpoints", params={"limit": "1000"}) as resp:
        assert resp.status == 200, await resp.text()
        return {c["seq"] for c in (await resp.json())["checkpoints"]}


async def _write_run(http: aiohttp.ClientSession, plan: Plan, recorder: SpanRecorder) -> None:
    epoch = 0
    for seq in range(plan.n):
        body = otlp_body([recorder.checkpoint_span(_checkpoint(plan, seq), epoch=epoch)])
        async with http.post("/v1/traces", data=body, headers=PROTOBUF) as resp:
            assert resp.status == 200, await resp.text()
        # Right after the ack, whatever the task is doing: the promise holds.
        async with http.get(f"/v1/runs/{plan.run_id}/checkpoints/{seq}") as resp:
            assert resp.status == 200, f"{plan.run_id}: the latest checkpoint {seq} is gone"
        present = await _seqs(http, plan.run_id)
        must = plan.newest(seq) | {p for p in plan.protected() if p <= seq}
        assert must <= present, f"{plan.run_id}@{seq}: missing {sorted(must - present)}"
        if plan.claim_after == seq:
            async with http.post(
                f"/v1/runs/{plan.run_id}/claim",
                json={"worker_id": "worker-1", "lease_seconds": 120},
                params={"include_checkpoint": "false"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
            epoch, plan.claimed_seq = doc["epoch"], doc["seq"]
            assert plan.claimed_seq == seq
        await asyncio.sleep(0)


async def test_retention_keeps_exactly_what_it_promises_under_concurrent_writers(
    sidecar: InprocSidecar,
) -> None:
    task: RetentionTask = sidecar.app[RETENTION_KEY]
    assert task.enabled and task.interval == 0.02
    plans = [dataclass_copy(p) for p in PLANS]
    recorder = SpanRecorder()
    try:
        async with aiohttp.ClientSession(base_url=sidecar.url) as http:
            sweeps_before = task.sweeps
            await asyncio.gather(*(_write_run(http, plan, recorder) for plan in plans))
            assert task.sweeps > sweeps_before, "the background task never swept"

            # The idle run expires once it has been idle for EXPIRE_DAYS; poll, never time.
            old = next(p for p in plans if p.expires)
            deadline = time.monotonic() + 60
            while await _seqs(http, old.run_id) != old.final():
                assert time.monotonic() < deadline, await _seqs(http, old.run_id)
                await asyncio.sleep(0.2)
            await task.sweep()  # a complete sweep after the last write

            total_written = sum(p.n for p in plans)
            total_left = 0
            for plan in plans:
                present = await _seqs(http, plan.run_id)
                assert present == plan.final(), (plan.run_id, sorted(present))
                assert max(present) == plan.n - 1  # the latest survived
                total_left += len(present)
    finally:
        recorder.shutdown()

    samples = await scrape(sidecar.url)
    pruned = metric(samples, "flowpoint_retention_deleted_total", reason="max_checkpoints")
    expired = metric(samples, "flowpoint_retention_deleted_total", reason="expired")
    assert expired > 0 and pruned > 0
    assert pruned + expired == total_written - total_left
    assert metric(samples, "flowpoint_retention_sweeps_total", result="ok") >= 2
    assert metric(samples, "flowpoint_retention_sweeps_total", result="error") == 0


def dataclass_copy(plan: Plan) -> Plan:
    import dataclasses

    return dataclasses.replace(plan)


async def test_a_quiet_run_costs_no_query_and_the_task_stops_with_the_app(
    pg_dsn: str,
) -> None:
    sidecar = await start_inproc_sidecar(pg_dsn, retention_interval=0)
    try:
        task: RetentionTask = sidecar.app[RETENTION_KEY]
        assert not task.enabled  # interval 0: attached, never started
        for seq in range(12):
            await sidecar.store.put(checkpoint("run-q", seq))
        first = await task.sweep()
        assert (first.runs, first.handled, first.pruned) == (1, 1, 2)
        second = await task.sweep()
        assert (second.runs, second.handled, second.pruned) == (1, 0, 0)  # unchanged: skipped
        # a claim lapsing or a new checkpoint makes it due again
        await sidecar.store.put(checkpoint("run-q", 12))
        third = await task.sweep()
        assert (third.handled, third.pruned) == (1, 1)
    finally:
        await stop_inproc_sidecar(sidecar)
    assert task._task is None
