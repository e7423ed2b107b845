"""PostgreSQL crashes (``pg_ctl stop -m immediate``) under load, then comes back.

A real ``flowpoint serve`` subprocess takes a steady load of checkpoints from workers
(the real CheckpointEmitter). The session's PostgreSQL is crashed mid-load and started
again. Every checkpoint the sidecar acknowledged (200) must be in PostgreSQL after the
drain, exactly once, and the breaker must be closed again. The figures are printed
(``pytest -s``) for the README's "Guarantees" section.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from checkpoint.codec import sha256_hex
from checkpoint.models import checkpoint_to_bytes
from instrumentation.emitter import CheckpointEmitter
from tests.chaos.conftest import ensure_running, readyz, stored_counts, wait_drained
from tests.fixtures.postgres import PgServer
from tests.fixtures.sidecar import (
    SidecarProcess,
    checkpoint_attributes,
    make_checkpoint,
    metric,
    scrape,
)

RUNS = 12
OUTAGE_SECONDS = 3.0
PAYLOAD_BYTES = 2000
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


class Load:
    """Workers emitting checkpoints run after run, seq after seq, until told to stop."""

    def __init__(self, endpoint: str) -> None:
        # Long retry budget: a 503 (not durable) is retried, as a real worker does.
        self.emitter = CheckpointEmitter(endpoint, timeout=10.0, max_retry_seconds=60.0)
        self.stop = asyncio.Event()
        self.acked: dict[tuple[str, int], float] = {}
        self.sent: set[tuple[str, int]] = set()
        self.inflight = 0
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, runs: int) -> None:
        self.tasks = [asyncio.create_task(self._run(f"load-{i:03d}")) for i in range(runs)]

    async def _run(self, run_id: str) -> None:
        seq = 0
        while not self.stop.is_set():
            cp = make_checkpoint(run_id, seq, payload_bytes=PAYLOAD_BYTES, note=f"{seq}")
            payload = checkpoint_to_bytes(cp)
            attrs = checkpoint_attributes(cp, payload)
            del attrs["flowpoint.payload"], attrs["flowpoint.sha256"]
            self.sent.add((run_id, seq))
            self.inflight += 1
            try:
                await self.emitter.emit(
                    attrs, payload, payload_sha256=sha256_hex(payload), key=f"{run_id}:{seq}"
                )
            except Exception as exc:  # recorded: the test fails on any
                self.errors.append(f"{run_id}#{seq}: {type(exc).__name__}: {exc}")
                return
            finally:
                self.inflight -= 1
            self.acked[(run_id, seq)] = time.monotonic()
            seq += 1

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.emitter.aclose()


async def _until(check: Callable[[], Awaitable[bool]], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, f"not reached within {limit}s"
        await asyncio.sleep(0.05)


async def test_postgres_crash_under_load_loses_no_acknowledged_checkpoint(
    pg_server: PgServer,
    chaos_db: str,
    launch_sidecar: Callable[..., Awaitable[SidecarProcess]],
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    sidecar = await launch_sidecar(chaos_db, "--spool-dir", str(spool_dir), *FAST_BREAKER)
    load = Load(sidecar.url + "/v1/traces")
    load.start(RUNS)
    stopped_at = restarted_at = 0.0
    try:
        await _until(lambda: _at_least(load, 150), 30)
        inflight_at_fault = load.inflight
        acked_before = len(load.acked)
        stopped_at = time.monotonic()
        await asyncio.to_thread(pg_server.stop, "immediate")

        async def spooled_enough() -> bool:
            # An outage of a few seconds, with a good number of checkpoints spooled in it.
            m = await scrape(sidecar.url)
            spooled = metric(m, "flowpoint_checkpoints_total", outcome="spooled")
            return spooled >= 200 and time.monotonic() - stopped_at >= OUTAGE_SECONDS

        await _until(spooled_enough, 30)
        during = await readyz(sidecar.url)
        assert during["http_status"] == 200 and during["status"] == "degraded", during
        assert during["breaker"]["state"] in ("open", "half_open")
        assert during["spool"]["records"] > 0
    finally:
        restarted_at = time.monotonic()
        await asyncio.to_thread(ensure_running, pg_server)
    try:
        await asyncio.sleep(1.0)  # the load keeps flowing while the spool drains
    finally:
        await load.finish()
    assert not load.errors, load.errors[:5]

    try:
        after = await wait_drained(sidecar.url)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsidecar log:\n{sidecar.log()[-4000:]}") from None
    drained_at = time.monotonic()
    assert after["breaker"]["state"] == "closed"
    m = await scrape(sidecar.url)
    assert metric(m, "flowpoint_breaker_state") == 0
    assert metric(m, "flowpoint_spool_records") == 0

    counts = await stored_counts(chaos_db)
    acked = set(load.acked)
    lost = acked - set(counts)
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not lost, f"{len(lost)} acknowledged checkpoints are missing: {sorted(lost)[:10]}"
    assert not twice, twice
    # Nothing the workers never sent appears, and each run is gap-free up to its last ack.
    assert set(counts) <= load.sent
    for run in {r for r, _ in acked}:
        top = max(s for r, s in acked if r == run)
        assert all((run, s) in counts for s in range(top + 1))

    during_outage = sum(1 for t in load.acked.values() if stopped_at <= t < restarted_at)
    spooled = metric(m, "flowpoint_checkpoints_total", outcome="spooled")
    replayed = metric(m, "flowpoint_spool_replayed_total", result="stored") + metric(
        m, "flowpoint_spool_replayed_total", result="duplicate"
    )
    dead = metric(m, "flowpoint_spool_replayed_total", result="dead_letter")
    assert spooled > 0 and replayed == spooled and dead == 0
    print(
        "\nFIGURES postgres_outage: "
        f"in_flight_at_fault={inflight_at_fault} acked_before_fault={acked_before} "
        f"acked_during_outage={during_outage} acked_total={len(acked)} "
        f"spooled={int(spooled)} recovered={int(replayed)} "
        f"dead_letter={int(dead)} stored_rows={len(counts)} lost={len(lost)} "
        f"outage_seconds={restarted_at - stopped_at:.1f} "
        f"restart_to_drained_seconds={drained_at - restarted_at:.1f} "
        "(includes PostgreSQL's crash recovery; the load kept on for 1 s after the restart)"
    )


async def _at_least(load: Load, count: int) -> bool:
    assert not load.errors, load.errors[:5]
    return len(load.acked) >= count
