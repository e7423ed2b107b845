"""The sidecar is killed with SIGKILL under load, and started again on the same spool.

Workers are real processes (``tests/chaos/emit_worker.py``) using the CheckpointEmitter
with an outbox. What the sidecar acknowledged must be in PostgreSQL; what it did not is
still in the worker's outbox and is re-sent by ``replay_outbox()`` after the restart;
nothing is stored twice. A second test kills the sidecar while the breaker is open (the
acknowledged checkpoints exist only in its spool): the next sidecar drains them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.chaos.conftest import (
    WorkerProcess,
    ensure_running,
    readyz,
    start_worker,
    stored_counts,
    wait_drained,
)
from tests.fixtures.postgres import PgServer
from tests.fixtures.sidecar import SidecarProcess, metric, scrape

FAST_BREAKER = (
    "--breaker-failure-threshold",
    "2",
    "--breaker-cooldown-seconds",
    "0.5",
    "--commit-timeout-seconds",
    "1",
    "--log-level",
    "WARNING",
)


def _kill(sidecar: SidecarProcess) -> None:
    sidecar.proc.kill()  # SIGKILL: no shutdown hook runs
    sidecar.proc.wait(10)


async def _until(check: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not reached within {limit}s"
        await asyncio.sleep(0.02)


def _outbox_files(outbox: Path) -> int:
    return sum(1 for p in outbox.rglob("*") if p.is_file() and "rejected" not in p.parts)


async def test_sigkill_under_load_then_restart_and_outbox_replay(
    chaos_db: str,
    launch_sidecar: Callable[..., Awaitable[SidecarProcess]],
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    spool_dir, outbox = tmp_path / "spool", tmp_path / "outbox"
    first = await launch_sidecar(chaos_db, "--spool-dir", str(spool_dir), *FAST_BREAKER)
    worker = await start_worker(
        "emit",
        "--endpoint",
        first.url + "/v1/traces",
        "--outbox",
        str(outbox),
        "--runs",
        "12",
        "--seqs",
        "400",
        "--prefix",
        "kill",
        log=tmp_path / "worker.log",
    )
    workers.append(worker)
    await _until(lambda: len(worker.acked()) >= 150, 45)
    await asyncio.to_thread(_kill, first)
    acked_at_kill = len(worker.acked())
    in_outbox_at_kill = _outbox_files(outbox)
    assert await worker.wait(60) == 0, (tmp_path / "worker.log").read_text()[-2000:]
    unacked = worker.unacked()
    assert unacked, "every run should have been cut off by the kill"

    second = await launch_sidecar(chaos_db, "--spool-dir", str(spool_dir), *FAST_BREAKER)
    replay = await start_worker(
        "replay",
        "--endpoint",
        second.url + "/v1/traces",
        "--outbox",
        str(outbox),
        "--max-retry-seconds",
        "20",
        log=tmp_path / "replay.log",
    )
    workers.append(replay)
    assert await replay.wait(60) == 0, (tmp_path / "replay.log").read_text()[-2000:]
    assert replay.value("LEFT") == 0
    replayed = replay.value("REPLAYED")
    await wait_drained(second.url)

    counts = await stored_counts(chaos_db)
    acked = worker.acked()
    lost = (acked | unacked) - set(counts)
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not lost, f"missing after the restart: {sorted(lost)[:10]}"
    assert not twice, twice
    # Each run is complete from seq 0 up to the checkpoint that was cut off.
    for run, cut in unacked:
        assert {s for r, s in counts if r == run} == set(range(cut + 1)), run
    m = await scrape(second.url)
    duplicates = metric(m, "flowpoint_checkpoints_total", outcome="duplicate")
    print(
        "\nFIGURES sidecar_sigkill: "
        f"acked_before_kill={acked_at_kill} in_flight_at_kill={in_outbox_at_kill} "
        f"unacked_runs_cut={len(unacked)} replayed_from_outbox={replayed} "
        f"already_stored_on_replay={int(duplicates)} stored_rows={len(counts)} "
        f"lost={len(lost)} stored_twice={len(twice)}"
    )


async def test_sigkill_while_the_breaker_is_open_then_drain_on_restart(
    pg_server: PgServer,
    chaos_db: str,
    launch_sidecar: Callable[..., Awaitable[SidecarProcess]],
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    spool_dir, outbox = tmp_path / "spool", tmp_path / "outbox"
    first = await launch_sidecar(chaos_db, "--spool-dir", str(spool_dir), *FAST_BREAKER)
    try:
        await asyncio.to_thread(pg_server.stop, "immediate")
        worker = await start_worker(
            "emit",
            "--endpoint",
            first.url + "/v1/traces",
            "--outbox",
            str(outbox),
            "--runs",
            "6",
            "--seqs",
            "15",
            "--prefix",
            "open",
            "--max-retry-seconds",
            "20",
            log=tmp_path / "worker.log",
        )
        workers.append(worker)
        assert await worker.wait(60) == 0
        acked = worker.acked()
        assert len(acked) == 6 * 15 and not worker.unacked()
        assert _outbox_files(outbox) == 0  # every checkpoint was acknowledged (spooled)
        m = await scrape(first.url)
        spooled = int(metric(m, "flowpoint_checkpoints_total", outcome="spooled"))
        # Open, or half-open while the drainer probes the still-down database: never closed.
        assert spooled == len(acked) and metric(m, "flowpoint_breaker_state") in (1, 2)
        await asyncio.to_thread(_kill, first)

        # The next sidecar starts while PostgreSQL is still down: ready (degraded), and a
        # resume gets the newest checkpoint from the spool it inherited.
        second = await launch_sidecar(chaos_db, "--spool-dir", str(spool_dir), *FAST_BREAKER)
        doc = await readyz(second.url)
        assert doc["status"] == "degraded" and doc["spool"]["records"] == len(acked)
        async with (
            aiohttp.ClientSession() as http,
            http.get(second.url + "/v1/runs/open-003/checkpoints/latest") as resp,
        ):
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["seq"] == 14
    finally:
        await asyncio.to_thread(ensure_running, pg_server)
    await wait_drained(second.url)
    counts = await stored_counts(chaos_db)
    assert set(counts) == acked
    assert all(n == 1 for n in counts.values())
    m = await scrape(second.url)
    recovered = int(metric(m, "flowpoint_spool_replayed_total", result="stored"))
    assert recovered == len(acked)
    assert list(spool_dir.glob("segment-*")) == []
    print(
        "\nFIGURES sidecar_sigkill_breaker_open: "
        f"acked_into_spool={spooled} in_spool_at_kill={doc['spool']['records']} "
        f"recovered_after_restart={recovered} stored_rows={len(counts)} "
        f"lost={len(acked - set(counts))}"
    )
