"""A flipped byte in a stored payload: found on load, by ``flowpoint verify``, and by resume.

Real PostgreSQL; the byte is flipped in place with SQL. The damaged checkpoint is a 422
from the resume API and a :class:`CorruptCheckpointError` from the store, never used;
``flowpoint verify`` (a real subprocess) exits 1 and names the row; a resume over it fails
clearly, and falls back to the previous good checkpoint only when told to.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from checkpoint import CheckpointConfig, CheckpointStatus
from checkpoint.crypto import generate_key
from checkpoint.errors import CorruptCheckpointError
from checkpoint.stores import PostgresStore, SidecarStore
from flowpoint_cli.commands_verify import verify_store
from flows import Flow, FunctionNode
from flows.errors import NodeExecutionError
from tests.conformance.builders import checkpoint
from tests.fixtures.postgres import flip_stored_byte
from tests.fixtures.sidecar import (
    REPO_ROOT,
    InprocSidecar,
    start_inproc_sidecar,
    stop_inproc_sidecar,
)


async def flowpoint(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m flowpoint_cli ARGS`` as a real process; (exit code, stdout, stderr)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPOINT_")}
    child_env.update({"COLUMNS": "100", **(env or {})})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowpoint_cli",
        *args,
        cwd=str(REPO_ROOT),
        env=child_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    made = PostgresStore(pg_dsn)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def sidecar(pg_dsn: str) -> AsyncIterator[InprocSidecar]:
    running = await start_inproc_sidecar(pg_dsn)
    try:
        yield running
    finally:
        await stop_inproc_sidecar(running)


async def test_a_flipped_byte_is_detected_on_load_and_by_verify(
    store: PostgresStore, sidecar: InprocSidecar, pg_dsn: str
) -> None:
    for seq in range(3):
        await store.put(checkpoint("run-good", seq))
        await store.put(checkpoint("run-bad", seq))
    code, out, err = await flowpoint("verify", "--database-url", pg_dsn)
    assert code == 0, out + err
    assert "all 6 checkpoint(s) verified" in out

    await flip_stored_byte(pg_dsn, "run-bad", 1)

    # the store refuses it, and only it
    with pytest.raises(CorruptCheckpointError):
        await store.get("run-bad", 1)
    assert await store.get("run-bad", 0) is not None
    assert await store.get("run-bad") is not None
    # the resume API answers 422 and never sends the bytes
    async with aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/v1/runs/run-bad/checkpoints/1") as resp:
            assert resp.status == 422
            assert (await resp.json())["error"] == "corrupt_checkpoint"
        async with http.get(sidecar.url + "/v1/runs/run-bad/checkpoints/2") as resp:
            assert resp.status == 200

    # flowpoint verify: exit 1, the row named in the table
    code, out, err = await flowpoint("verify", "--database-url", pg_dsn)
    assert code == 1, out + err
    assert "run-bad" in out and "corrupt" in out
    lines = [line for line in out.splitlines() if "run-bad" in line]
    assert any(" 1 " in line and "corrupt" in line for line in lines), out
    assert "run-good" not in out  # only bad rows are listed

    # the JSON report counts them
    code, out, _ = await flowpoint("verify", "--database-url", pg_dsn, "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["runs"], report["checked"], report["ok"], report["corrupt"]) == (2, 6, 5, 1)
    [bad] = report["bad"]
    assert (bad["run_id"], bad["seq"], bad["problem"]) == ("run-bad", 1, "corrupt")
    assert bad["error"] in ("CorruptCheckpointError", "ChecksumMismatchError")

    # through the sidecar too (it answers 422, verify counts it); one run only
    code, out, _ = await flowpoint("verify", "--store", sidecar.url, "--run", "run-bad", "--json")
    assert code == 1, out
    assert (json.loads(out)["checked"], json.loads(out)["corrupt"]) == (3, 1)
    only_good = await verify_store(store, run_id="run-good", page=2)
    assert (only_good.checked, only_good.ok, only_good.failed) == (3, 3, False)
    paged = await verify_store(store, page=1, concurrency=1)
    assert (paged.runs, paged.checked, paged.corrupt) == (2, 6, 1)
    code, _, err = await flowpoint("verify", "--database-url", pg_dsn, "--run", "no-such-run")
    assert code == 2 and "no run 'no-such-run'" in err


async def test_verify_with_encryption_at_rest(pg_dsn: str, tmp_path: Path) -> None:
    key = generate_key()
    keys = tmp_path / "keys"
    keys.write_text(f"k1:{key}\n")
    sidecar = await start_inproc_sidecar(pg_dsn, encryption_keys_file=keys)
    try:
        writer = SidecarStore(sidecar.url, timeout=10.0)
        try:
            for seq in range(3):
                await writer.put(checkpoint("run-enc", seq))
        finally:
            await writer.close()
    finally:
        await stop_inproc_sidecar(sidecar)
    code, out, err = await flowpoint(
        "verify", "--database-url", pg_dsn, "--encryption-keys-file", str(keys)
    )
    assert code == 0, out + err
    # without the key nothing can be vouched for: exit 1, each row reported
    code, out, _ = await flowpoint("verify", "--database-url", pg_dsn, "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["key_missing"], report["ok"], report["corrupt"]) == (3, 0, 0)
    # a flipped byte in an encrypted row is corrupt (the AES-GCM tag does not match)
    await flip_stored_byte(pg_dsn, "run-enc", 2)
    code, out, _ = await flowpoint(
        "verify", "--database-url", pg_dsn, "--json", env={"FLOWPOINT_ENCRYPTION_KEYS": f"k1:{key}"}
    )
    assert code == 1
    report = json.loads(out)
    assert (report["ok"], report["corrupt"]) == (2, 1)
    assert report["bad"][0]["error"] == "DecryptionError"


def _three_step_flow(store: Any, calls: dict[str, int]) -> Flow:
    def step(name: str, fail_first: bool = False) -> Any:
        def fn(inputs: dict[str, Any]) -> str:
            calls[name] = calls.get(name, 0) + 1
            if fail_first and calls[name] == 1:
                raise RuntimeError(f"{name} failed once")
            return name

        return fn

    return Flow(
        id="three",
        nodes=[
            FunctionNode(id="a", fn=step("a")),
            FunctionNode(id="b", fn=step("b"), depends=["a"]),
            FunctionNode(id="c", fn=step("c", fail_first=True), depends=["b"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )


@pytest.mark.parametrize("through", ["postgres", "sidecar"])
async def test_resume_over_a_corrupt_latest_falls_back_only_when_told(
    through: str, store: PostgresStore, sidecar: InprocSidecar, pg_dsn: str
) -> None:
    target: Any = store if through == "postgres" else SidecarStore(sidecar.url, timeout=10.0)
    calls: dict[str, int] = {}
    try:
        flow = _three_step_flow(target, calls)
        with pytest.raises(NodeExecutionError):
            await flow.run({}, run_id="run-1")
        run = await store.get_run("run-1")
        assert run is not None and run.status is CheckpointStatus.FAILED
        latest = run.latest_seq
        await flip_stored_byte(pg_dsn, "run-1", latest)

        with pytest.raises(CorruptCheckpointError) as info:
            await flow.resume("run-1")
        # zstd's frame checksum or the SHA-256, whichever notices first: named, never used
        assert "checksum" in str(info.value).lower()
        assert calls == {"a": 1, "b": 1, "c": 1}  # nothing ran on the corrupt checkpoint
        after = await store.get_run("run-1")
        assert after is not None and after.latest_seq == latest  # nothing was written

        result = await flow.resume("run-1", fallback_to_previous=True)
        assert result.status is CheckpointStatus.COMPLETED
        assert result.output == {"c": "c"}
        # the previous checkpoint had a and b done: only c ran again
        assert calls == {"a": 1, "b": 1, "c": 2}
        # the corrupt row is still there (never used, never overwritten), and reported
        with pytest.raises(CorruptCheckpointError):
            await store.get("run-1", latest)
    finally:
        if target is not store:
            await target.close()
