"""Encryption at rest against a real PostgreSQL and a real sidecar.

* a row copied to another run or seq (payload and checksum alike) fails to open;
* the key id column (migration 0003) follows the payload's header, rotation included;
* a missing key fails closed, in the store and in the resume API;
* ``flowpoint serve --encryption-keys-file`` encrypts what flows write through it, and the
  flows resume through it.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import zstandard

from checkpoint import CheckpointConfig, CheckpointStatus
from checkpoint.crypto import MAGIC, Keyring, generate_key, key_id_of
from checkpoint.errors import DecryptionError, EncryptionKeyMissingError
from checkpoint.stores import PostgresStore, SidecarStore
from flows import Flow, FunctionNode
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar import (
    SidecarProcess,
    SpanRecorder,
    otlp_body,
    start_inproc_sidecar,
    stop_inproc_sidecar,
)

K1, K2 = generate_key(), generate_key()
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def keyring(*entries: tuple[str, str]) -> Keyring:
    return Keyring.parse(",".join(f"{kid}:{key}" for kid, key in entries))


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture
async def encrypted_store(pg_dsn: str) -> Any:
    store = PostgresStore(pg_dsn)
    store.keyring = keyring(("k1", K1))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_rows_are_encrypted_and_carry_their_key_id(
    encrypted_store: PostgresStore, pg_dsn: str
) -> None:
    cp = checkpoint("run-a", 0, tenant_id="acme", output={"card": "4111-1111-1111-1111"})
    await encrypted_store.put(cp)
    [row] = await sql(pg_dsn, "SELECT payload, key_id FROM checkpoints WHERE run_id = 'run-a'")
    payload = bytes(row["payload"])
    assert payload.startswith(MAGIC) and row["key_id"] == "k1" == key_id_of(payload)
    assert b"4111-1111" not in payload
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(payload)
    assert await encrypted_store.get("run-a") == cp
    # a plain row (written without a keyring) has no key id
    plain = PostgresStore(pg_dsn, migrate=False)
    try:
        await plain.put(checkpoint("run-plain", 0))
    finally:
        await plain.close()
    [row] = await sql(pg_dsn, "SELECT key_id FROM checkpoints WHERE run_id = 'run-plain'")
    assert row["key_id"] is None


async def test_a_row_copied_to_another_seq_or_run_fails_to_open(
    encrypted_store: PostgresStore, pg_dsn: str
) -> None:
    for seq in (0, 1):
        await encrypted_store.put(checkpoint("run-a", seq, tenant_id="acme"))
    await encrypted_store.put(checkpoint("run-b", 0, tenant_id="acme"))
    # The whole row of run-a#0 (payload and its checksum) pasted over run-a#1 ...
    await sql(
        pg_dsn,
        """UPDATE checkpoints dst SET payload = src.payload, sha256 = src.sha256,
                  raw_size = src.raw_size
           FROM checkpoints src
           WHERE src.run_id = 'run-a' AND src.seq = 0 AND dst.run_id = 'run-a' AND dst.seq = 1""",
    )
    # ... and over run-b#0 (another run of the same tenant).
    await sql(
        pg_dsn,
        """UPDATE checkpoints dst SET payload = src.payload, sha256 = src.sha256,
                  raw_size = src.raw_size
           FROM checkpoints src
           WHERE src.run_id = 'run-a' AND src.seq = 0 AND dst.run_id = 'run-b' AND dst.seq = 0""",
    )
    # ... and into a brand-new run of another tenant.
    await sql(
        pg_dsn,
        """INSERT INTO runs (run_id, tenant_id, flow_id, status, latest_seq)
           VALUES ('run-x', 'globex', 'flow-a', 'active', 0)""",
    )
    await sql(
        pg_dsn,
        """INSERT INTO checkpoints (run_id, seq, tenant_id, flow_id, status, schema_version,
                                    sha256, raw_size, stored_size, payload, summary, created_at)
           SELECT 'run-x', 0, 'globex', flow_id, status, schema_version, sha256, raw_size,
                  stored_size, payload, summary, created_at
           FROM checkpoints WHERE run_id = 'run-a' AND seq = 0""",
    )
    rows = await sql(pg_dsn, "SELECT run_id, seq, key_id FROM checkpoints ORDER BY 1, 2")
    assert {(r["run_id"], r["seq"]): r["key_id"] for r in rows} == {
        ("run-a", 0): "k1",
        ("run-a", 1): "k1",
        ("run-b", 0): "k1",
        ("run-x", 0): "k1",
    }
    assert (await encrypted_store.get("run-a", 0)) is not None  # the original still opens
    for run_id, seq in (("run-a", 1), ("run-b", 0), ("run-x", 0)):
        with pytest.raises(DecryptionError, match="copied from another run"):
            await encrypted_store.get(run_id, seq)


async def test_rotation_and_a_missing_key_in_postgres(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.keyring = keyring(("k1", K1))
        for seq in range(3):
            await store.put(checkpoint("run-r", seq))
        store.keyring = keyring(("k2", K2), ("k1", K1))  # rotation: add k2, make it active
        for seq in range(3, 5):
            await store.put(checkpoint("run-r", seq))
        rows = await sql(
            pg_dsn, "SELECT key_id, count(*) AS n FROM checkpoints GROUP BY key_id ORDER BY 1"
        )
        assert [(r["key_id"], r["n"]) for r in rows] == [("k1", 3), ("k2", 2)]
        for seq in range(5):
            got = await store.get("run-r", seq)
            assert got is not None and got.seq == seq
        store.keyring = keyring(("k2", K2))  # k1 removed before its rows were gone
        assert (await store.get("run-r")) is not None
        with pytest.raises(EncryptionKeyMissingError, match="'k1'"):
            await store.get("run-r", 0)
        store.keyring = None
        with pytest.raises(EncryptionKeyMissingError, match="no encryption keys"):
            await store.get("run-r")
    finally:
        await store.close()


async def _post_checkpoints(url: str, *cps: Any) -> None:
    recorder = SpanRecorder()
    try:
        body = otlp_body([recorder.checkpoint_span(cp) for cp in cps])
    finally:
        recorder.shutdown()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/traces", data=body, headers=PROTOBUF) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_the_sidecar_encrypts_and_fails_closed_without_its_key(pg_dsn: str) -> None:
    secret = "hunter2-in-the-output"
    cp = checkpoint("run-s", 0, output={"note": secret})
    sidecar = await start_inproc_sidecar(pg_dsn, encryption_keys=f"k1:{K1}")
    try:
        await _post_checkpoints(sidecar.url, cp, checkpoint("run-s", 1))
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/v1/runs/run-s/checkpoints/0") as resp:
                assert resp.status == 200
                doc = await resp.json()
                assert doc["checkpoint"]["node_states"]["n0"]["output"] == {"note": secret}
    finally:
        await stop_inproc_sidecar(sidecar)
    rows = await sql(pg_dsn, "SELECT payload, key_id FROM checkpoints ORDER BY seq")
    assert [r["key_id"] for r in rows] == ["k1", "k1"]
    assert all(secret.encode() not in bytes(r["payload"]) for r in rows)

    for settings, code in (
        ({}, "encryption_key_missing"),  # no keys at all
        ({"encryption_keys": f"k2:{K2}"}, "encryption_key_missing"),  # another key only
        ({"encryption_keys": f"k1:{K2}"}, "corrupt_checkpoint"),  # right id, wrong key
    ):
        other = await start_inproc_sidecar(pg_dsn, **settings)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(other.url + "/v1/runs/run-s/checkpoints/0") as resp:
                    assert resp.status == 422, settings
                    body = await resp.json()
                    assert body["error"] == code, body
                    assert secret not in await resp.text()
                async with http.get(other.url + "/v1/runs/run-s") as resp:
                    # the summary still answers, naming the problem of the latest checkpoint
                    assert resp.status == 200
                    assert (await resp.json())["latest_error"]["error"] == code
        finally:
            await stop_inproc_sidecar(other)


def _flaky_flow(store: Any, attempts: dict[str, int]) -> Flow:
    def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"api_token": "tok-" + "9" * 12, "rows": [1, 2, 3]}

    def load(inputs: dict[str, Any]) -> int:
        attempts["load"] = attempts.get("load", 0) + 1
        if attempts["load"] == 1:
            raise RuntimeError("warehouse unavailable")
        return len(inputs["fetch"]["rows"])

    return Flow(
        id="etl",
        nodes=[
            FunctionNode(id="fetch", fn=fetch),
            FunctionNode(id="load", fn=load, depends=["fetch"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )


@pytest.mark.parametrize("source", ["keys-file", "env"])
async def test_encrypted_sidecar_process_end_to_end(
    source: str,
    pg_dsn: str,
    tmp_path: Path,
    launch_sidecar: Callable[..., Awaitable[SidecarProcess]],
) -> None:
    if source == "keys-file":
        keys_file = tmp_path / "keys"
        keys_file.write_text(f"# active first\nk2:{K2}\nk1:{K1}\n")
        sidecar = await launch_sidecar(pg_dsn, "--encryption-keys-file", str(keys_file))
    else:
        sidecar = await launch_sidecar(
            pg_dsn, env={"FLOWPOINT_ENCRYPTION_KEYS": f"k2:{K2},k1:{K1}"}
        )
    store = SidecarStore(sidecar.url, timeout=10.0)
    attempts: dict[str, int] = {}
    try:
        flow = _flaky_flow(store, attempts)
        from flows.errors import NodeExecutionError

        with pytest.raises(NodeExecutionError):
            await flow.run({"day": "2026-11-27"}, run_id="etl-1")
        result = await flow.resume("etl-1")
        assert result.status is CheckpointStatus.COMPLETED
        assert result.output == {"load": 3}
        assert attempts == {"load": 2}
    finally:
        await store.close()
    rows = await sql(pg_dsn, "SELECT seq, payload, key_id FROM checkpoints ORDER BY seq")
    assert len(rows) >= 4
    for row in rows:
        payload = bytes(row["payload"])
        assert row["key_id"] == "k2" == key_id_of(payload)
        assert b"tok-999999999999" not in payload and b"2026-11-27" not in payload
    # The keys file holds the only copy of the key material the process was given.
    assert base64.b64decode(K2) not in sidecar.log().encode()
    assert K2 not in sidecar.log()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--encryption-keys-file", "/nonexistent/keys"], {}, "cannot read encryption keys file"),
        ([], {"FLOWPOINT_ENCRYPTION_KEYS": "k1:not-base64!"}, "not valid base64"),
        ([], {"FLOWPOINT_ENCRYPTION_KEYS": "k1:" + K1[:8]}, "not valid base64|16, 24 or 32"),
    ],
)
def test_serve_refuses_bad_keys_at_start(
    args: list[str], env: dict[str, str], message: str
) -> None:
    import os
    import re
    import subprocess
    import sys

    from tests.fixtures.sidecar import REPO_ROOT

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPOINT_")}
    done = subprocess.run(
        [sys.executable, "-m", "flowpoint_cli", "serve", "--port", "0", *args],
        cwd=str(REPO_ROOT),
        env={**child_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert K1[:8] not in done.stderr
