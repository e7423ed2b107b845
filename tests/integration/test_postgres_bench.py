"""Write-path figures of PostgresStore.put_sealed_many (printed, never asserted on time).

In the suite it runs small and checks that every record was stored exactly once.
For real figures, on an embedded server with fsync on:

    python -m tests.integration.test_postgres_bench [records_per_case]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from checkpoint.models import CheckpointStatus
from checkpoint.store import SealedCheckpoint
from checkpoint.stores.postgres import PostgresStore
from checkpoint.stores.postgres.embedded import EmbeddedPostgres

BATCH_SIZES = (1, 8, 32, 128)
PAYLOAD = 1024


def _record(run_id: str, seq: int) -> SealedCheckpoint:
    blob = os.urandom(PAYLOAD)  # stands for an already-compressed 1 KB payload
    return SealedCheckpoint(
        tenant_id="bench",
        flow_id="bench-flow",
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus.ACTIVE,
        schema_version=1,
        sha256=blob.hex()[:64],
        raw_size=PAYLOAD * 3,
        blob=blob,
        created_at=dt.datetime.now(dt.UTC),
        summary={"completed": ["a", "b"], "pending_inputs": [], "nodes": 2},
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_case(
    store: PostgresStore, label: str, batch: int, records: int, concurrency: int
) -> dict[str, float]:
    """Write ``records`` 1 KB records in batches of ``batch`` from ``concurrency`` tasks."""
    calls = max(1, records // batch)
    latencies: list[float] = []
    next_call = iter(range(calls))

    async def worker(w: int) -> None:
        for call in next_call:
            # Each call writes `batch` runs, each at a fresh seq; runs are spread
            # over workers so concurrent batches also contend on shared runs.
            items = [
                (_record(f"{label}-r{(call * batch + i) % 256}", call), 0) for i in range(batch)
            ]
            started = time.perf_counter()
            results = await store.put_sealed_many(items)
            latencies.append(time.perf_counter() - started)
            bad = [r for r in results if r not in ("stored", "duplicate")]
            assert not bad, bad

    wall = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - wall
    return {
        "calls": calls,
        "records_per_s": calls * batch / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
    }


async def bench(
    dsn: str, records: int, print_fn: Callable[[str], None] = print
) -> list[dict[str, float]]:
    """Run every case on ``dsn``; print a table; return the rows."""
    rows: list[dict[str, float]] = []
    store = PostgresStore(dsn, min_size=4, max_size=32)
    await store.open()
    # The same store on asyncpg's default pool (reset query on every release), to compare.
    default_pool = await asyncpg.create_pool(dsn, min_size=4, max_size=32)
    reset_store = PostgresStore(pool=default_pool)
    try:
        print_fn(f"put_sealed_many, {PAYLOAD} B records, {records} records per case")
        print_fn(f"{'case':<28}{'calls':>7}{'records/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
        cases: list[tuple[str, PostgresStore, int, int]] = [
            *((f"batch={b} c=1", store, b, 1) for b in BATCH_SIZES),
            ("batch=1 c=32", store, 1, 32),
            ("batch=32 c=4", store, 32, 4),
            ("batch=1 c=32 pool-reset", reset_store, 1, 32),
            ("batch=1 c=1 pool-reset", reset_store, 1, 1),
        ]
        for n, (name, target, batch, conc) in enumerate(cases):
            row = await run_case(target, f"k{n}", batch, records, conc)
            rows.append({"batch": batch, "concurrency": conc, **row})
            print_fn(
                f"{name:<28}{row['calls']:>7.0f}{row['records_per_s']:>12.0f}"
                f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            )
    finally:
        await store.close()
        await reset_store.close()
        await default_pool.close()
    return rows


async def test_put_sealed_many_bench_stores_everything(pg_dsn: str) -> None:
    rows = await bench(pg_dsn, records=128, print_fn=lambda line: print(line))
    assert len(rows) == len(BATCH_SIZES) + 4
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM checkpoints")
        # Every call of every case wrote `batch` new (run, seq) keys: nothing lost or doubled.
        expected = sum(int(r["calls"]) * int(r["batch"]) for r in rows)
        assert stored == expected
        latest_ok = await conn.fetchval(
            "SELECT bool_and(r.latest_seq = m.max_seq) FROM runs r "
            "JOIN (SELECT run_id, max(seq) AS max_seq FROM checkpoints GROUP BY run_id) m "
            "USING (run_id)"
        )
        assert latest_ok is True
    finally:
        await conn.close()


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    base = Path(tempfile.mkdtemp(prefix="flowpoint-bench-"))
    base.chmod(0o755)
    with EmbeddedPostgres(base / "data", fsync=True) as pg:
        dsn = asyncio.run(pg.ensure_database("bench"))
        asyncio.run(bench(dsn, records))
    import shutil

    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
