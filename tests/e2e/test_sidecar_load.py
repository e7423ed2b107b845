"""Many concurrent runs through one sidecar subprocess, and a SIGTERM in the middle of load.

Bodies are OTLP protobuf built with the OpenTelemetry SDK's encoder and POSTed with plain
aiohttp clients, like a fleet of workers would; PostgreSQL is checked afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg

from tests.fixtures.sidecar import (
    SidecarProcess,
    SpanRecorder,
    make_checkpoint,
    metric,
    otlp_body,
    scrape,
)

Launch = Callable[..., Awaitable[SidecarProcess]]
PROTOBUF = {"Content-Type": "application/x-protobuf"}
RUNS = 200
SAVES_PER_RUN = 20
CONCURRENCY = 32


def _bodies(runs: int, saves: int, prefix: str) -> dict[str, list[bytes]]:
    spans = SpanRecorder()
    try:
        return {
            f"{prefix}-{r}": [
                otlp_body([spans.checkpoint_span(make_checkpoint(f"{prefix}-{r}", seq))])
                for seq in range(1, saves + 1)
            ]
            for r in range(runs)
        }
    finally:
        spans.shutdown()


async def test_200_runs_x_20_checkpoints_stored_exactly_once(
    sidecar_process: SidecarProcess, pg_dsn: str
) -> None:
    bodies = await asyncio.to_thread(_bodies, RUNS, SAVES_PER_RUN, "load")
    queue: asyncio.Queue[str] = asyncio.Queue()
    for run_id in bodies:
        queue.put_nowait(run_id)
    statuses: list[int] = []

    async def worker(http: aiohttp.ClientSession) -> None:
        # One worker drives one run at a time, saves in order, like a real flow.
        while not queue.empty():
            run_id = queue.get_nowait()
            for body in bodies[run_id]:
                async with http.post(
                    sidecar_process.url + "/v1/traces", data=body, headers=PROTOBUF
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    assert statuses.count(200) == RUNS * SAVES_PER_RUN, set(statuses)

    conn = await asyncpg.connect(pg_dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM checkpoints")
        distinct = await conn.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT run_id, seq FROM checkpoints) k"
        )
        latest = await conn.fetch("SELECT run_id, latest_seq FROM runs")
    finally:
        await conn.close()
    assert total == distinct == RUNS * SAVES_PER_RUN
    assert len(latest) == RUNS
    assert {r["latest_seq"] for r in latest} == {SAVES_PER_RUN}

    samples = await scrape(sidecar_process.url)
    assert metric(samples, "flowpoint_checkpoints_total", outcome="stored") == RUNS * SAVES_PER_RUN
    assert metric(samples, "flowpoint_seq_gaps_total") == 0
    batches = metric(samples, "flowpoint_commit_batch_size_count")
    records = metric(samples, "flowpoint_commit_batch_size_sum")
    assert records == RUNS * SAVES_PER_RUN
    singles = metric(samples, "flowpoint_commit_batch_size_bucket", le="1.0")
    # Group commit happened: fewer transactions than records, some with several records.
    assert batches < records
    assert batches - singles > 0


async def test_sigterm_during_load_keeps_every_acknowledged_checkpoint(
    pg_dsn: str, launch_sidecar: Launch
) -> None:
    sidecar = await launch_sidecar(pg_dsn)
    bodies = await asyncio.to_thread(_bodies, 40, 30, "term")
    acked: list[tuple[str, int]] = []
    failures: list[str] = []
    first_acks = asyncio.Event()

    async def worker(http: aiohttp.ClientSession, run_id: str) -> None:
        for seq, body in enumerate(bodies[run_id], start=1):
            try:
                async with http.post(
                    sidecar.url + "/v1/traces", data=body, headers=PROTOBUF
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(f"HTTP {resp.status}")
                        return
            except (aiohttp.ClientError, ConnectionError) as exc:
                failures.append(type(exc).__name__)
                return
            acked.append((run_id, seq))
            if len(acked) >= 200:
                first_acks.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as http:
        load = asyncio.gather(*(worker(http, run_id) for run_id in bodies))
        await asyncio.wait_for(first_acks.wait(), 60)
        sidecar.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(load, 120)
    code = await asyncio.to_thread(sidecar.proc.wait, 60)

    assert code == 0, sidecar.log()[-3000:]
    assert len(acked) >= 200
    assert failures, "the load should have outlived the sidecar"
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT run_id, seq FROM checkpoints")
    finally:
        await conn.close()
    stored = {(r["run_id"], r["seq"]) for r in rows}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged checkpoints are not in PostgreSQL"
    assert '"sidecar stopped"' in sidecar.log()
