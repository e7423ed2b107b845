"""Resume API: runs and checkpoints routes against a real sidecar on a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from checkpoint import CheckpointStatus, checkpoint_from_bytes, checkpoint_to_bytes
from checkpoint.codec import canonical_json, sha256_hex
from tests.conformance.builders import checkpoint, rich_values
from tests.fixtures.sidecar_store import RunningSidecar, flip_payload_byte, start_sidecar


async def _json(resp: aiohttp.ClientResponse) -> Any:
    assert resp.content_type == "application/json", await resp.text()
    return await resp.json()


async def _seed(sidecar: RunningSidecar) -> None:
    store = sidecar.store
    await store.put(checkpoint("run-a", 0, flow_id="etl"))
    await store.put(checkpoint("run-a", 1, flow_id="etl", pending=["review"]))
    await store.put(checkpoint("run-b", 0, flow_id="other", status=CheckpointStatus.COMPLETED))
    await store.put(checkpoint("run-c", 0, flow_id="etl", status=CheckpointStatus.FAILED))


async def test_list_runs_newest_first_with_filters_and_paging(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await _seed(sidecar_app)
    async with http.get("v1/runs") as resp:
        assert resp.status == 200
        doc = await _json(resp)
    assert [r["run_id"] for r in doc["runs"]] == ["run-c", "run-b", "run-a"]
    assert doc["next_cursor"] is None
    first = doc["runs"][2]
    assert {k: first[k] for k in ("run_id", "flow_id", "status", "latest_seq")} == {
        "run_id": "run-a",
        "flow_id": "etl",
        "status": "pending_input",
        "latest_seq": 1,
    }
    assert first["updated_at"].endswith(("Z", "+00:00"))

    async with http.get("v1/runs", params={"flow_id": "etl"}) as resp:
        assert [r["run_id"] for r in (await _json(resp))["runs"]] == ["run-c", "run-a"]
    async with http.get("v1/runs", params={"status": "completed"}) as resp:
        assert [r["run_id"] for r in (await _json(resp))["runs"]] == ["run-b"]

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        async with http.get("v1/runs", params=params) as resp:
            page = await _json(resp)
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["run-c", "run-b", "run-a"]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"limit": "0"}, "invalid_parameter"),
        ({"limit": "1001"}, "invalid_parameter"),
        ({"limit": "ten"}, "invalid_parameter"),
        ({"status": "sleeping"}, "invalid_parameter"),
        ({"flow_id": "../etc"}, "invalid_id"),
        ({"cursor": "not-a-cursor!"}, None),
    ],
)
async def test_list_runs_rejects_bad_parameters(
    http: aiohttp.ClientSession, query: dict[str, str], error: str | None
) -> None:
    async with http.get("v1/runs", params=query) as resp:
        assert resp.status == 400
        doc = await _json(resp)
    assert doc["message"]
    if error is not None:
        assert doc["error"] == error


async def test_run_summary_has_full_pending_inputs_and_claim(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await _seed(sidecar_app)
    async with http.get("v1/runs/run-a") as resp:
        assert resp.status == 200
        doc = await _json(resp)
    assert (doc["flow_id"], doc["status"], doc["latest_seq"], doc["claim"]) == (
        "etl",
        "pending_input",
        1,
        None,
    )
    [pending] = doc["pending_inputs"]
    assert (pending["path"], pending["prompt"]) == ("review", "answer review?")
    assert "schema" in pending and "requested_at" in pending

    claim = await sidecar_app.store.claim("run-a", "worker-1", 30)
    async with http.get("v1/runs/run-a") as resp:
        doc = await _json(resp)
    assert doc["claim"]["worker_id"] == "worker-1"
    assert doc["claim"]["epoch"] == claim.epoch == 1
    assert doc["claim"]["lease_expires_at"]


async def test_unknown_and_malformed_run_ids(http: aiohttp.ClientSession) -> None:
    for path in ("v1/runs/nope", "v1/runs/nope/checkpoints", "v1/runs/nope/checkpoints/latest"):
        async with http.get(path) as resp:
            assert resp.status == 404, path
            assert (await _json(resp))["error"] == "run_not_found"
    for bad in ("a..b", "-leading-dash", "x" * 129, "semi;colon", "sp%20ace"):
        async with http.get(f"v1/runs/{bad}") as resp:
            assert resp.status == 400, bad
            doc = await _json(resp)
        assert doc["error"] == "invalid_id"
        assert "run_id" in doc["message"]


async def test_list_checkpoints_pages_newest_first(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    written = [checkpoint("run-1", seq) for seq in range(5)]
    for cp in written:
        await sidecar_app.store.put(cp)
    async with http.get("v1/runs/run-1/checkpoints", params={"limit": "2"}) as resp:
        page = await _json(resp)
    assert [c["seq"] for c in page["checkpoints"]] == [4, 3]
    assert page["next_cursor"] == "3"
    item = page["checkpoints"][0]
    assert set(item) >= {"seq", "status", "created_at", "raw_size", "stored_size"}
    assert item["raw_size"] == len(checkpoint_to_bytes(written[4]))
    assert 0 < item["stored_size"]
    async with http.get(
        "v1/runs/run-1/checkpoints", params={"limit": "2", "before_seq": page["next_cursor"]}
    ) as resp:
        page = await _json(resp)
    assert [c["seq"] for c in page["checkpoints"]] == [2, 1]
    async with http.get("v1/runs/run-1/checkpoints", params={"before_seq": "1"}) as resp:
        page = await _json(resp)
    assert ([c["seq"] for c in page["checkpoints"]], page["next_cursor"]) == ([0], None)
    async with http.get("v1/runs/run-1/checkpoints", params={"before_seq": "-1"}) as resp:
        assert resp.status == 400


async def test_get_checkpoint_latest_and_by_seq_are_verified_and_exact(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    rich = checkpoint("run-1", 1, output=rich_values())
    await sidecar_app.store.put(checkpoint("run-1", 0))
    await sidecar_app.store.put(rich)
    async with http.get("v1/runs/run-1/checkpoints/latest") as resp:
        assert resp.status == 200
        doc = await _json(resp)
    assert (doc["run_id"], doc["seq"], doc["status"]) == ("run-1", 1, "active")
    raw = canonical_json(doc["checkpoint"])
    assert raw == checkpoint_to_bytes(rich)
    assert doc["sha256"] == sha256_hex(raw)
    assert checkpoint_from_bytes(raw) == rich

    async with http.get("v1/runs/run-1/checkpoints/0") as resp:
        assert (await _json(resp))["seq"] == 0
    async with http.get("v1/runs/run-1/checkpoints/7") as resp:
        assert resp.status == 404
        assert (await _json(resp))["error"] == "checkpoint_not_found"
    async with http.get("v1/runs/run-1/checkpoints/first") as resp:
        assert resp.status == 400
        assert (await _json(resp))["error"] == "invalid_parameter"


async def test_a_corrupt_checkpoint_is_a_422_and_never_sent(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    await sidecar_app.store.put(checkpoint("run-1", 1, note="secret-marker"))
    await flip_payload_byte(sidecar_app.dsn, "run-1", 1)
    for path in ("v1/runs/run-1/checkpoints/latest", "v1/runs/run-1/checkpoints/1"):
        async with http.get(path) as resp:
            assert resp.status == 422
            body = await resp.read()
        doc = json.loads(body)
        assert doc["error"] == "corrupt_checkpoint"
        assert set(doc) == {"error", "message"}
        assert b"secret-marker" not in body
    async with http.get("v1/runs/run-1/checkpoints/0") as resp:
        assert resp.status == 200
    # the summary still answers, and says what is wrong with the latest checkpoint
    async with http.get("v1/runs/run-1") as resp:
        doc = await _json(resp)
    assert doc["latest_error"]["error"] == "corrupt_checkpoint"
    assert doc["pending_inputs"] == []


async def test_resume_latency_is_observed_when_metrics_expose_it(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))

    async def resume_count() -> float:
        async with http.get("metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("flowpoint_resume_seconds_count"):
                return float(line.split()[-1])
        raise AssertionError("flowpoint_resume_seconds_count is not exported")

    before = await resume_count()
    for _ in range(3):
        async with http.get("v1/runs/run-1/checkpoints/latest") as resp:
            assert resp.status == 200
    assert await resume_count() == before + 3


async def test_delete_run(sidecar_app: RunningSidecar, http: aiohttp.ClientSession) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    async with http.delete("v1/runs/run-1") as resp:
        assert resp.status == 204
    assert await sidecar_app.store.get_run("run-1") is None
    async with http.delete("v1/runs/run-1") as resp:
        assert resp.status == 404
        assert (await _json(resp))["error"] == "run_not_found"


async def test_maintenance_prune_and_expire(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    for seq in range(5):
        await sidecar_app.store.put(checkpoint("run-1", seq))
    async with http.post("v1/runs/run-1/prune", json={"max_checkpoints": 2}) as resp:
        assert resp.status == 200
        assert await _json(resp) == {"run_id": "run-1", "removed": 3}
    async with http.post("v1/runs/run-1/prune", json={"max_checkpoints": -1}) as resp:
        assert resp.status == 422
    async with http.post("v1/maintenance/expire", json={"older_than": "2000-01-01T00:00:00"}) as r:
        assert r.status == 422  # naive timestamps are refused
        assert "timezone" in (await _json(r))["message"]
    async with http.post(
        "v1/maintenance/expire", json={"older_than": "2999-01-01T00:00:00Z"}
    ) as resp:
        assert resp.status == 200
        assert await _json(resp) == {"removed": 1}  # seq 3; the latest stays


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[" * 65 + b"]" * 65, 400, "invalid_json"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, 400, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        (b'{"worker_id": "w"}', 422, "invalid_request"),
        (b'{"worker_id": "../w", "lease_seconds": 5}', 422, "invalid_request"),
        (b'{"worker_id": "w", "lease_seconds": 0}', 422, "invalid_request"),
        (b'{"worker_id": "w", "lease_seconds": 5, "extra": 1}', 422, "invalid_request"),
        (b'"a string"', 422, "invalid_request"),
    ],
    ids=[
        "syntax",
        "array-depth-65",
        "object-depth-70",
        "very-deep",
        "missing",
        "bad-id",
        "zero-lease",
        "extra",
        "not-object",
    ],
)
async def test_bad_bodies_get_clear_errors_never_500(
    sidecar_app: RunningSidecar,
    http: aiohttp.ClientSession,
    body: bytes,
    status: int,
    error: str,
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    headers = {"Content-Type": "application/json"}
    async with http.post("v1/runs/run-1/claim", data=body, headers=headers) as resp:
        assert resp.status == status
        doc = await _json(resp)
    assert doc["error"] == error
    assert doc["message"]
    assert (await sidecar_app.store.get_run("run-1")).epoch == 0  # type: ignore[union-attr]


async def test_json_depth_64_is_accepted(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0, pending=["review"]))
    answer: Any = "leaf"
    for _ in range(62):  # body object + "answer" value chain = 64 levels
        answer = [answer]
    async with http.post("v1/runs/run-1/inputs", json={"path": "review", "answer": answer}) as r:
        assert r.status == 202, await r.text()


async def test_tokens_scope_runs_to_their_tenant(pg_dsn: str) -> None:
    server, sidecar = await start_sidecar(
        pg_dsn, tokens={"tok-acme": "acme", "tok-globex": "globex"}
    )
    try:
        await sidecar.store.put(checkpoint("run-acme", 0, tenant_id="acme"))
        await sidecar.store.put(checkpoint("run-globex", 0, tenant_id="globex"))
        async with aiohttp.ClientSession(base_url=sidecar.url + "/") as http:
            async with http.get("v1/runs") as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == "Bearer"
            async with http.get("v1/runs", headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
            acme = {"Authorization": "Bearer tok-acme"}
            async with http.get("v1/runs", headers=acme) as resp:
                assert [r["run_id"] for r in (await _json(resp))["runs"]] == ["run-acme"]
            for path in (
                "v1/runs/run-globex",
                "v1/runs/run-globex/checkpoints",
                "v1/runs/run-globex/checkpoints/latest",
                "v1/runs/run-globex/checkpoints/0",
                "v1/runs/run-globex/inputs",
            ):
                async with http.get(path, headers=acme) as resp:
                    assert resp.status == 404, path
            async with http.post(
                "v1/runs/run-globex/claim",
                json={"worker_id": "w", "lease_seconds": 5},
                headers=acme,
            ) as resp:
                assert resp.status == 404
            async with http.delete("v1/runs/run-globex", headers=acme) as resp:
                assert resp.status == 404
            async with http.get("v1/runs/run-acme/checkpoints/latest", headers=acme) as resp:
                assert resp.status == 200
        assert await sidecar.store.get_run("run-globex") is not None
    finally:
        await server.close()
        await sidecar.store.close()
