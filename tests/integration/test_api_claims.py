"""Resume API: claim, renew, release over HTTP, and fencing of stale checkpoint spans."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiohttp

from checkpoint import StaleEpochError, checkpoint_to_bytes
from checkpoint.codec import canonical_json
from checkpoint.stores.sidecar import SidecarStore
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar_store import RunningSidecar


async def _metric(http: aiohttp.ClientSession, name: str) -> float:
    async with http.get("metrics") as resp:
        text = await resp.text()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split()[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.split()[-1])
                found = True
    assert found, f"{name} is not exported"
    return total


async def _claim(
    http: aiohttp.ClientSession, run_id: str, worker: str, lease: float
) -> tuple[int, Any]:
    body = {"worker_id": worker, "lease_seconds": lease}
    async with http.post(f"v1/runs/{run_id}/claim", json=body) as resp:
        return resp.status, await resp.json()


async def test_claim_returns_epoch_lease_and_the_checkpoint(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    cp = checkpoint("run-1", 3)
    await sidecar_app.store.put(cp)
    before = dt.datetime.now(dt.UTC)
    status, doc = await _claim(http, "run-1", "worker-a", 30)
    assert status == 200
    assert doc["epoch"] == 1
    lease = dt.datetime.fromisoformat(doc["lease_expires_at"])
    assert before + dt.timedelta(seconds=20) < lease < before + dt.timedelta(seconds=120)
    envelope = doc["checkpoint"]
    assert (envelope["run_id"], envelope["seq"], envelope["status"]) == ("run-1", 3, "active")
    assert canonical_json(envelope["checkpoint"]) == checkpoint_to_bytes(cp)

    # the same object GET latest returns
    async with http.get("v1/runs/run-1/checkpoints/latest") as resp:
        assert await resp.json() == envelope

    async with http.post(
        "v1/runs/run-1/claim",
        params={"include_checkpoint": "false"},
        json={"worker_id": "worker-a", "lease_seconds": 60},
    ) as resp:
        again = await resp.json()
    assert (resp.status, again["epoch"], again["checkpoint"]) == (200, 1, None)


async def test_claim_of_unknown_run_is_404(http: aiohttp.ClientSession) -> None:
    status, doc = await _claim(http, "no-such-run", "worker-a", 30)
    assert (status, doc["error"]) == (404, "run_not_found")


async def test_two_workers_claim_at_once_exactly_one_wins(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    conflicts_before = await _metric(http, "flowpoint_claim_conflicts_total")
    results = await asyncio.gather(
        *(_claim(http, "run-1", f"worker-{i}", 30) for i in range(2)),
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409]
    [loser] = [doc for status, doc in results if status == 409]
    assert loser["error"] == "claim_conflict"
    assert await _metric(http, "flowpoint_claim_conflicts_total") == conflicts_before + 1


async def test_after_the_lease_expires_another_worker_claims_and_old_spans_are_refused(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession, sidecar_store: SidecarStore
) -> None:
    await sidecar_store.put(checkpoint("run-1", 0))
    status, first = await _claim(http, "run-1", "worker-a", 0.3)
    assert (status, first["epoch"]) == (200, 1)
    status, refused = await _claim(http, "run-1", "worker-b", 30)
    assert (status, refused["error"]) == (409, "claim_conflict")
    await asyncio.sleep(0.6)
    status, second = await _claim(http, "run-1", "worker-b", 30)
    assert (status, second["epoch"]) == (200, 2)

    # worker-a's checkpoint span, still carrying epoch 1, is fenced off by the sidecar (409)
    try:
        await sidecar_store.put(checkpoint("run-1", 1), epoch=first["epoch"])
    except StaleEpochError:
        pass
    else:
        raise AssertionError("a checkpoint span with a stale epoch was accepted")
    assert await sidecar_app.store.get("run-1", 1) is None
    assert await sidecar_store.put(checkpoint("run-1", 1), epoch=second["epoch"]) == "stored"

    # renew / release with the old epoch are refused too
    async with http.post(
        "v1/runs/run-1/claim/renew",
        json={"worker_id": "worker-a", "epoch": 1, "lease_seconds": 30},
    ) as resp:
        assert (resp.status, (await resp.json())["error"]) == (409, "stale_epoch")
    async with http.post(
        "v1/runs/run-1/claim/release", json={"worker_id": "worker-a", "epoch": 1}
    ) as resp:
        assert (resp.status, (await resp.json())["error"]) == (409, "stale_epoch")


async def test_stale_epoch_span_is_409_on_the_wire(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    """The raw OTLP answer for a fenced span: 409, not retried by any exporter."""
    from instrumentation.emitter import CheckpointEmitter
    from instrumentation.errors import EmitConflict

    await sidecar_app.store.put(checkpoint("run-1", 0))
    status, claim = await _claim(http, "run-1", "worker-a", 30)
    assert status == 200
    cp = checkpoint("run-1", 1)
    raw = checkpoint_to_bytes(cp)
    from checkpoint.codec import sha256_hex

    attributes: dict[str, str | int | bool] = {
        "flowpoint.tenant_id": cp.tenant_id,
        "flowpoint.flow_id": cp.flow_id,
        "flowpoint.run_id": cp.run_id,
        "flowpoint.seq": cp.seq,
        "flowpoint.status": str(cp.status),
        "flowpoint.schema_version": cp.schema_version,
        "flowpoint.epoch": 0,
    }
    emitter = CheckpointEmitter(endpoint=f"{sidecar_app.url}/v1/traces", max_retry_seconds=2)
    try:
        try:
            await emitter.emit(attributes, raw, payload_sha256=sha256_hex(raw), key="run-1:1")
        except EmitConflict as exc:
            assert exc.status == 409
        else:
            raise AssertionError("epoch 0 was accepted after a claim")
        attributes["flowpoint.epoch"] = claim["epoch"]
        await emitter.emit(attributes, raw, payload_sha256=sha256_hex(raw), key="run-1:1")
    finally:
        await emitter.aclose()
    stored = await sidecar_app.store.get("run-1")
    assert stored is not None and stored.seq == 1


async def test_renew_and_release(sidecar_app: RunningSidecar, http: aiohttp.ClientSession) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    status, claim = await _claim(http, "run-1", "worker-a", 5)
    assert status == 200
    async with http.post(
        "v1/runs/run-1/claim/renew",
        json={"worker_id": "worker-a", "epoch": claim["epoch"], "lease_seconds": 600},
    ) as resp:
        assert resp.status == 200
        renewed = await resp.json()
    assert renewed["epoch"] == claim["epoch"]
    assert dt.datetime.fromisoformat(renewed["lease_expires_at"]) > dt.datetime.fromisoformat(
        claim["lease_expires_at"]
    )
    async with http.post(
        "v1/runs/run-1/claim/renew",
        json={"worker_id": "worker-b", "epoch": claim["epoch"], "lease_seconds": 5},
    ) as resp:
        assert (resp.status, (await resp.json())["error"]) == (409, "claim_conflict")
    async with http.post(
        "v1/runs/run-1/claim/release", json={"worker_id": "worker-a", "epoch": claim["epoch"]}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["released"] is True
    run = await sidecar_app.store.get_run("run-1")
    assert run is not None and run.claim is None
    status, next_claim = await _claim(http, "run-1", "worker-b", 5)
    assert (status, next_claim["epoch"]) == (200, 2)
    async with http.post(
        "v1/runs/no-such/claim/release", json={"worker_id": "worker-a", "epoch": 1}
    ) as resp:
        assert resp.status == 404
