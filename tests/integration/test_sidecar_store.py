"""SidecarStore specifics: outcomes and errors mapped from the sidecar, verification,
outbox replay, tokens. The store contract itself is covered by tests/conformance (-k sidecar).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from checkpoint import (
    CheckpointRefusedError,
    ChecksumMismatchError,
    ClaimConflictError,
    CorruptCheckpointError,
    InputConflictError,
    InputValidationError,
    PendingInput,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
    TenantMismatchError,
    checkpoint_to_bytes,
)
from checkpoint.codec import canonical_json, sha256_hex
from checkpoint.stores import store_from_url
from checkpoint.stores.sidecar import SidecarStore
from tests.conformance.builders import checkpoint, rich_values
from tests.fixtures.sidecar_store import RunningSidecar, flip_payload_byte, start_sidecar


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_put_reports_the_sidecars_outcome_and_reads_are_exact(
    sidecar_app: RunningSidecar, sidecar_store: SidecarStore
) -> None:
    cp = checkpoint("run-1", 0, output=rich_values())
    assert await sidecar_store.put(cp) == "stored"
    assert await sidecar_store.put(cp) == "duplicate"
    # it is in PostgreSQL, as sent
    behind = await sidecar_app.store.get("run-1")
    assert behind is not None and checkpoint_to_bytes(behind) == checkpoint_to_bytes(cp)
    back = await sidecar_store.get("run-1")
    assert back == cp and checkpoint_to_bytes(back) == checkpoint_to_bytes(cp)
    # put_sealed sends the record's canonical bytes (no re-encoding)
    record = sidecar_store.seal_checkpoint(checkpoint("run-1", 1))
    assert await sidecar_store.put_sealed(record) == "stored"
    sealed = await sidecar_store.get_sealed("run-1", 1)
    assert sealed is not None and sealed.sha256 == record.sha256


async def test_a_large_checkpoint_round_trips(sidecar_store: SidecarStore) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB of binary user data
    cp = checkpoint("run-big", 0, output={"blob": blob, "text": "x" * 500_000})
    assert await sidecar_store.put(cp) == "stored"
    back = await sidecar_store.get("run-big", 0)
    assert back is not None
    assert back.node_states["n0"].output["blob"] == blob
    assert checkpoint_to_bytes(back) == checkpoint_to_bytes(cp)


async def test_sidecar_refusals_become_store_errors(
    sidecar_app: RunningSidecar, sidecar_store: SidecarStore
) -> None:
    await sidecar_store.put(checkpoint("run-1", 0, note="first"))
    with pytest.raises(SeqConflictError):
        await sidecar_store.put(checkpoint("run-1", 0, note="second"))
    with pytest.raises(TenantMismatchError):
        await sidecar_store.put(checkpoint("run-1", 1, tenant_id="globex"))
    with pytest.raises(CheckpointRefusedError, match="NUL"):  # text PostgreSQL cannot hold
        await sidecar_store.put(checkpoint("run-nul", 0, pending=["re\x00view"]))

    claim = await sidecar_store.claim("run-1", "worker-a", 30)
    with pytest.raises(ClaimConflictError):
        await sidecar_store.claim("run-1", "worker-b", 30)
    with pytest.raises(StaleEpochError):
        await sidecar_store.put(checkpoint("run-1", 1), epoch=0)
    assert await sidecar_store.put(checkpoint("run-1", 1), epoch=claim.epoch) == "stored"

    pending = checkpoint("run-1", 2, pending=["review"])
    pending.pending_inputs[0] = PendingInput(
        path="review", prompt="ok?", schema={"type": "boolean"}
    )
    await sidecar_store.put(pending, epoch=claim.epoch)
    with pytest.raises(InputValidationError, match="boolean"):
        await sidecar_store.submit_input("run-1", "review", "yes")
    with pytest.raises(InputValidationError, match="not a pending input"):
        await sidecar_store.submit_input("run-1", "elsewhere", True)
    await sidecar_store.submit_input("run-1", "review", True)
    with pytest.raises(InputConflictError):
        await sidecar_store.submit_input("run-1", "review", False)

    await flip_payload_byte(sidecar_app.dsn, "run-1", 1)
    with pytest.raises(CorruptCheckpointError):
        await sidecar_store.get("run-1", 1)


async def test_reads_are_verified_again_by_the_client() -> None:
    """Bytes that do not match their checksum are caught by the store itself; an envelope
    re-formatted on the way (same JSON, other whitespace) is still read exactly."""
    cp = checkpoint("run-1", 0, output=rich_values())
    wire = checkpoint_to_bytes(cp)
    tampered = wire.replace(b'"flow-a"', b'"flow-b"')
    head = {"run_id": "run-1", "seq": 0, "status": "active", "sha256": sha256_hex(wire)}

    async def serve(request: web.Request) -> web.Response:
        if request.match_info["which"] == "latest":  # spliced like the sidecar, but damaged
            body = canonical_json(head)[:-1] + b',"checkpoint":' + tampered + b"}"
        else:  # pretty-printed by some proxy: valid, but not byte-identical
            body = json.dumps({**head, "checkpoint": json.loads(wire)}, indent=2).encode()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/runs/{run_id}/checkpoints/{which}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    store = SidecarStore(str(server.make_url("")).rstrip("/"))
    try:
        with pytest.raises(ChecksumMismatchError):
            await store.get("run-1")
        back = await store.get("run-1", 0)
        assert back is not None and checkpoint_to_bytes(back) == wire
        # a valid checkpoint of another run or seq is not taken for the one asked for
        with pytest.raises(CorruptCheckpointError, match="holds"):
            await store.get("run-2", 0)
        with pytest.raises(CorruptCheckpointError, match="holds"):
            await store.get("run-1", 5)
    finally:
        await store.close()
        await server.close()


async def test_an_unreachable_sidecar_is_store_unavailable(tmp_path: Path) -> None:
    store = SidecarStore(f"http://127.0.0.1:{_free_port()}", timeout=2, max_retry_seconds=0.5)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.get("run-1")
        with pytest.raises(StoreUnavailableError):
            await store.claim("run-1", "worker-a", 30)
        with pytest.raises(StoreUnavailableError):
            await store.put(checkpoint("run-1", 0))
    finally:
        await store.close()
        await store.close()  # twice is harmless


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture
async def outbox_store(tmp_path: Path, free_port: int) -> AsyncIterator[SidecarStore]:
    store = SidecarStore(
        f"http://127.0.0.1:{free_port}",
        outbox_dir=tmp_path / "outbox",
        timeout=2,
        max_retry_seconds=0.5,
    )
    try:
        yield store
    finally:
        await store.close()


async def test_an_unacknowledged_checkpoint_waits_in_the_outbox_until_replayed(
    pg_dsn: str, tmp_path: Path, free_port: int, outbox_store: SidecarStore
) -> None:
    cp = checkpoint("run-1", 0, output=rich_values())
    with pytest.raises(StoreUnavailableError):
        await outbox_store.put(cp)  # no sidecar yet
    assert [p for p in (tmp_path / "outbox").rglob("*") if p.is_file()]

    server, sidecar = await start_sidecar(pg_dsn, port=free_port)
    try:
        assert await outbox_store.replay_outbox() == 1
        back = await outbox_store.get("run-1")
        assert back == cp
        assert await outbox_store.put(cp) == "duplicate"
    finally:
        await server.close()
        await sidecar.store.close()


async def test_tokens(pg_dsn: str) -> None:
    server, sidecar = await start_sidecar(pg_dsn, tokens={"tok-acme": "acme"})
    good = SidecarStore(sidecar.url, token="tok-acme", max_retry_seconds=0.5)
    anonymous = SidecarStore(sidecar.url, max_retry_seconds=0.5)
    try:
        assert await good.put(checkpoint("run-1", 0, tenant_id="acme")) == "stored"
        assert (await good.get("run-1")) is not None
        assert [r.run_id for r in (await good.list_runs()).runs] == ["run-1"]
        with pytest.raises(StoreError):
            await anonymous.get_run("run-1")
        with pytest.raises(StoreError):
            await anonymous.put(checkpoint("run-2", 0, tenant_id="acme"))
        with pytest.raises((StoreError, TenantMismatchError)):
            await good.put(checkpoint("run-3", 0, tenant_id="globex"))
        assert await good.get_run("run-3") is None
    finally:
        await good.close()
        await anonymous.close()
        await server.close()
        await sidecar.store.close()


async def test_store_from_url_builds_a_sidecar_store(sidecar_app: RunningSidecar) -> None:
    port = sidecar_app.url.rsplit(":", 1)[1]
    store = store_from_url(f"sidecar://127.0.0.1:{port}")
    assert isinstance(store, SidecarStore)
    try:
        assert await store.put(checkpoint("run-1", 0)) == "stored"
        run = await store.get_run("run-1")
        assert run is not None and run.latest_seq == 0
    finally:
        await store.close()


async def test_against_a_flowpoint_serve_process(sidecar_url: str) -> None:
    """The whole store contract path through the real `flowpoint serve` subprocess."""
    store = SidecarStore(sidecar_url)
    try:
        cp = checkpoint("run-1", 0, pending=["review"], output=rich_values())
        assert await store.put(cp) == "stored"
        assert await store.put(cp) == "duplicate"
        assert await store.get("run-1") == cp
        claim = await store.claim("run-1", "worker-a", 30)
        assert claim.epoch == 1
        await store.submit_input("run-1", "review", {"ok": True})
        assert await store.consume_inputs("run-1", ["review"]) == ["review"]
        assert await store.put(checkpoint("run-1", 1), epoch=claim.epoch) == "stored"
        [run] = (await store.list_runs()).runs
        assert (run.run_id, run.latest_seq, run.epoch) == ("run-1", 1, 1)
    finally:
        await store.close()


async def test_a_tokens_file_scopes_the_served_api(
    pg_dsn: str, tmp_path: Path, launch_sidecar: Any
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-acme": "acme", "tok-globex": "globex"}))
    sidecar = await launch_sidecar(pg_dsn, "--tokens-file", str(tokens))
    acme = SidecarStore(sidecar.url, token="tok-acme")
    globex = SidecarStore(sidecar.url, token="tok-globex")
    try:
        assert await acme.put(checkpoint("run-a", 0, tenant_id="acme")) == "stored"
        assert await globex.put(checkpoint("run-g", 0, tenant_id="globex")) == "stored"
        assert [r.run_id for r in (await acme.list_runs()).runs] == ["run-a"]
        assert await acme.get("run-g") is None  # another tenant's run is a 404
        assert await acme.get_run("run-g") is None
        assert await acme.delete_run("run-g") is False
        assert await globex.get("run-g") is not None
    finally:
        await acme.close()
        await globex.close()
