"""Conformance: prune, expire and delete_run.

``prune`` and ``expire`` never remove a run's latest checkpoint, a
``pending_input`` checkpoint, or the checkpoint a live claim was given.
"""

from __future__ import annotations

import asyncio
from typing import Any

from checkpoint import CheckpointStatus
from tests.conformance.builders import checkpoint, days_ago

PENDING = CheckpointStatus.PENDING_INPUT


async def _seqs(store: Any, run_id: str) -> list[int]:
    return [s.seq for s in await store.list_checkpoints(run_id, limit=1000)]


async def test_prune_keeps_the_newest(store: Any) -> None:
    for seq in range(6):
        await store.put(checkpoint("run-1", seq))
    assert await store.prune("run-1", 2) == 4
    assert await _seqs(store, "run-1") == [5, 4]
    assert await store.prune("run-1", 2) == 0
    assert await store.prune("no-such-run", 2) == 0
    latest = await store.get("run-1")
    assert latest is not None and latest.seq == 5
    assert await store.get("run-1", 3) is None


async def test_prune_never_removes_latest_pending_or_claimed(store: Any) -> None:
    for seq in range(6):
        await store.put(checkpoint("run-1", seq, pending=["review"] if seq == 2 else ()))
    claim = await store.claim("run-1", "worker-a", 60)
    assert claim.seq == 5
    for seq in range(6, 10):
        await store.put(checkpoint("run-1", seq), epoch=claim.epoch)
    assert await store.prune("run-1", 2) == 6  # 0, 1, 3, 4, 6, 7
    assert await _seqs(store, "run-1") == [9, 8, 5, 2]
    pending = await store.get("run-1", 2)
    assert pending is not None and pending.status == PENDING
    # even max_checkpoints=0 keeps the latest
    assert await store.prune("run-1", 0) == 1
    assert await _seqs(store, "run-1") == [9, 5, 2]


async def test_prune_frees_a_checkpoint_once_its_claim_is_released(store: Any) -> None:
    for seq in range(3):
        await store.put(checkpoint("run-1", seq))
    claim = await store.claim("run-1", "worker-a", 60)
    await store.put(checkpoint("run-1", 3), epoch=claim.epoch)
    assert await store.prune("run-1", 1) == 2
    assert await _seqs(store, "run-1") == [3, 2]
    await store.release("run-1", "worker-a", claim.epoch)
    assert await store.prune("run-1", 1) == 1
    assert await _seqs(store, "run-1") == [3]


async def test_prune_ignores_an_expired_claim(store: Any) -> None:
    for seq in range(2):
        await store.put(checkpoint("run-1", seq))
    claim = await store.claim("run-1", "worker-a", 0.3)
    await store.put(checkpoint("run-1", 2), epoch=claim.epoch)
    await asyncio.sleep(0.6)
    assert await store.prune("run-1", 1) == 2
    assert await _seqs(store, "run-1") == [2]


async def test_expire_removes_old_checkpoints_except_protected_ones(store: Any) -> None:
    old = days_ago(10)
    # run-a: old history, one old pending checkpoint, a fresh latest
    for seq in range(4):
        await store.put(
            checkpoint("run-a", seq, created_at=old, pending=["review"] if seq == 1 else ())
        )
    await store.put(checkpoint("run-a", 4))
    # run-b: entirely old; its latest stays
    for seq in range(3):
        await store.put(checkpoint("run-b", seq, created_at=old))
    # run-c: old checkpoints, a live claim on seq 1, then a fresh latest
    for seq in range(2):
        await store.put(checkpoint("run-c", seq, created_at=old))
    claim = await store.claim("run-c", "worker-a", 60)
    await store.put(checkpoint("run-c", 2), epoch=claim.epoch)

    removed = await store.expire(days_ago(1))
    assert removed == 3 + 2 + 1  # run-a: 0, 2, 3; run-b: 0, 1; run-c: 0
    assert await _seqs(store, "run-a") == [4, 1]
    assert await _seqs(store, "run-b") == [2]
    assert await _seqs(store, "run-c") == [2, 1]
    assert await store.expire(days_ago(1)) == 0
    for run_id in ("run-a", "run-b", "run-c"):
        assert await store.get_run(run_id) is not None


async def test_expire_keeps_checkpoints_newer_than_the_cutoff(store: Any) -> None:
    await store.put(checkpoint("run-1", 0, created_at=days_ago(5)))
    await store.put(checkpoint("run-1", 1, created_at=days_ago(3)))
    await store.put(checkpoint("run-1", 2, created_at=days_ago(2)))
    assert await store.expire(days_ago(4)) == 1
    assert await _seqs(store, "run-1") == [2, 1]


async def test_delete_run_removes_everything(store: Any) -> None:
    for seq in range(3):
        await store.put(checkpoint("run-1", seq, pending=["review"]))
    await store.submit_input("run-1", "review", {"approved": True})
    await store.put(checkpoint("run-2", 0))
    assert await store.delete_run("run-1") is True
    assert await store.get("run-1") is None
    assert await store.get("run-1", 0) is None
    assert await store.get_run("run-1") is None
    assert await store.list_checkpoints("run-1") == []
    assert await store.list_inputs("run-1", include_consumed=True) == []
    assert [r.run_id for r in (await store.list_runs()).runs] == ["run-2"]
    assert await store.delete_run("run-1") is False
    # the id can be used again from scratch
    assert await store.put(checkpoint("run-1", 0, note="again")) == "stored"
    run = await store.get_run("run-1")
    assert run is not None and (run.latest_seq, run.epoch) == (0, 0)
    assert await store.list_inputs("run-1", include_consumed=True) == []
