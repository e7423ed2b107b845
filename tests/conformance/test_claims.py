"""Conformance: claims, leases and epoch fencing.

Semantics (see checkpoint/stores/rules.py): a run starts at epoch 0; a claim
that takes the run over bumps the epoch; the holder re-claiming keeps it;
``put``, ``renew`` and ``release`` must carry the current epoch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from checkpoint import ClaimConflictError, RunNotFoundError, StaleEpochError
from tests.conformance.builders import checkpoint


async def test_claim_gives_epoch_one_and_the_latest_seq(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    await store.put(checkpoint("run-1", 1))
    before = dt.datetime.now(dt.UTC)
    claim = await store.claim("run-1", "worker-a", 30)
    assert (claim.run_id, claim.worker_id, claim.epoch, claim.seq) == ("run-1", "worker-a", 1, 1)
    assert claim.lease_expires_at.utcoffset() == dt.timedelta(0)
    assert claim.lease_expires_at > before + dt.timedelta(seconds=20)
    assert claim.lease_expires_at < before + dt.timedelta(seconds=300)


async def test_a_second_worker_cannot_claim_a_held_run(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    await store.claim("run-1", "worker-a", 30)
    with pytest.raises(ClaimConflictError):
        await store.claim("run-1", "worker-b", 30)
    run = await store.get_run("run-1")
    assert run is not None
    assert run.epoch == 1
    assert run.claim is not None and run.claim.worker_id == "worker-a"


async def test_the_holder_reclaiming_keeps_its_epoch_and_extends_the_lease(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    first = await store.claim("run-1", "worker-a", 30)
    again = await store.claim("run-1", "worker-a", 600)
    assert again.epoch == first.epoch == 1
    assert again.lease_expires_at > first.lease_expires_at


async def test_writes_are_fenced_by_epoch(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    claim = await store.claim("run-1", "worker-a", 30)
    with pytest.raises(StaleEpochError):
        await store.put(checkpoint("run-1", 1))  # epoch 0: written before the claim
    with pytest.raises(StaleEpochError):
        await store.put(checkpoint("run-1", 1), epoch=claim.epoch + 1)
    assert await store.get("run-1", 1) is None
    assert await store.put(checkpoint("run-1", 1), epoch=claim.epoch) == "stored"
    latest = await store.get("run-1")
    assert latest is not None and latest.seq == 1


async def test_renew_extends_the_lease(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    claim = await store.claim("run-1", "worker-a", 30)
    renewed = await store.renew("run-1", "worker-a", claim.epoch, 600)
    assert (renewed.epoch, renewed.worker_id, renewed.seq) == (1, "worker-a", 0)
    assert renewed.lease_expires_at > claim.lease_expires_at
    with pytest.raises(StaleEpochError):
        await store.renew("run-1", "worker-a", claim.epoch + 1, 30)


async def test_after_lease_expiry_another_worker_takes_over_and_fences_the_old_one(
    store: Any,
) -> None:
    await store.put(checkpoint("run-1", 0))
    old = await store.claim("run-1", "worker-a", 0.3)
    await asyncio.sleep(0.6)
    expired = await store.get_run("run-1")
    assert expired is not None
    assert expired.claim is None  # only a live claim is reported
    new = await store.claim("run-1", "worker-b", 30)
    assert (new.epoch, new.worker_id) == (2, "worker-b")
    with pytest.raises(StaleEpochError):
        await store.renew("run-1", "worker-a", old.epoch, 30)
    with pytest.raises(StaleEpochError):
        await store.release("run-1", "worker-a", old.epoch)
    with pytest.raises(StaleEpochError):
        await store.put(checkpoint("run-1", 1), epoch=old.epoch)
    assert await store.put(checkpoint("run-1", 1), epoch=new.epoch) == "stored"
    run = await store.get_run("run-1")
    assert run is not None and run.claim is not None
    assert (run.epoch, run.claim.worker_id) == (2, "worker-b")


async def test_release_then_claim_bumps_the_epoch(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    first = await store.claim("run-1", "worker-a", 30)
    await store.release("run-1", "worker-a", first.epoch)
    await store.release("run-1", "worker-a", first.epoch)  # releasing twice is harmless
    with pytest.raises(StaleEpochError):
        await store.renew("run-1", "worker-a", first.epoch, 30)
    second = await store.claim("run-1", "worker-b", 30)
    assert second.epoch == first.epoch + 1
    third_worker_sees = await store.get_run("run-1")
    assert third_worker_sees is not None and third_worker_sees.epoch == 2


async def test_claim_records_the_latest_seq_at_claim_time(store: Any) -> None:
    for seq in range(3):
        await store.put(checkpoint("run-1", seq))
    claim = await store.claim("run-1", "worker-a", 30)
    assert claim.seq == 2
    await store.put(checkpoint("run-1", 3), epoch=claim.epoch)
    run = await store.get_run("run-1")
    assert run is not None and run.claim is not None
    assert run.claim.seq == 2
    assert run.latest_seq == 3


async def test_claim_of_unknown_run_is_run_not_found(store: Any) -> None:
    with pytest.raises(RunNotFoundError):
        await store.claim("no-such-run", "worker-a", 30)
    with pytest.raises(RunNotFoundError):
        await store.renew("no-such-run", "worker-a", 1, 30)
    with pytest.raises(RunNotFoundError):
        await store.release("no-such-run", "worker-a", 1)


async def test_concurrent_claims_have_exactly_one_winner(store: Any) -> None:
    await store.put(checkpoint("run-1", 0))
    results = await asyncio.gather(
        *(store.claim("run-1", f"worker-{i}", 30) for i in range(10)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert all(isinstance(e, ClaimConflictError) for e in losers), losers
    assert winners[0].epoch == 1
    run = await store.get_run("run-1")
    assert run is not None and run.claim is not None
    assert run.claim.worker_id == winners[0].worker_id
