"""Per-node overhead of checkpointing in the flow runtime.

A linear chain of 50 no-op async nodes runs with checkpointing off (no config,
and ``enabled=False``) and with each store (memory, file, SQLite, Redis, PostgreSQL) in each
durability mode (sync, async, exit). Each figure is the median of several runs,
in microseconds per node, and the overhead is the difference to the
no-config baseline. Two times are measured per run:

* ``total``: until ``flow.run`` returns, i.e. every checkpoint is durable
  (the async queue is flushed before returning);
* ``nodes``: until the last node has finished (what the workflow itself waits
  for; in async mode the writer may still be draining the queue then).

    python -m load.bench_flow            # 7 runs per row
    python -m load.bench_flow --runs 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig, FlowpointError
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from checkpoint.stores.memory import MemoryStore
from checkpoint.stores.postgres import PostgresStore
from checkpoint.stores.postgres.embedded import EmbeddedPostgres
from checkpoint.stores.redis import RedisStore
from checkpoint.stores.sqlite import SQLiteStore
from flows import Flow, FunctionNode

NODES = 50
STORES = ("memory", "file", "sqlite", "redis", "postgres")
REDIS_URL = os.environ.get("FLOWPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODES = ("sync", "async", "exit")


def _make_store(kind: str, directory: Path, pg_dsn: str | None) -> BaseStore | None:
    """The store to measure, or None when its server is not available."""
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return FileStore(directory / "ckpts")
    if kind == "sqlite":
        return SQLiteStore(directory / "ckpts.db")
    if kind == "redis":
        return RedisStore(REDIS_URL, prefix=f"flowpoint-bench:{uuid.uuid4().hex}:")
    return PostgresStore(pg_dsn) if pg_dsn else None


async def _redis_reachable() -> bool:
    store = RedisStore(REDIS_URL, prefix="flowpoint-bench-ping:", socket_timeout=1.0)
    try:
        await store.list_runs(limit=1)
        return True
    except FlowpointError:
        return False
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[str | None]:
    """FLOWPOINT_DATABASE_URL, or an embedded PostgreSQL (fsync on) for the run."""
    url = os.environ.get("FLOWPOINT_DATABASE_URL")
    if url:
        yield url
        return
    root = Path(tempfile.mkdtemp(prefix="flowpoint-bench-pg-"))
    os.chmod(root, 0o755)  # the server runs as `nobody` when we are root
    server = EmbeddedPostgres(root / "data")
    try:
        await server.astart()
        yield await server.ensure_database("flowpoint_bench")
    finally:
        if server.running:
            await server.astop()
        shutil.rmtree(root, ignore_errors=True)


async def _drop_redis_keys(store: BaseStore) -> None:
    # Each Redis store has its own key prefix: delete every run it wrote.
    while runs := (await store.list_runs(limit=100)).runs:
        for run in runs:
            await store.delete_run(run.run_id)


def _flow(checkpoint: CheckpointConfig | None, marks: list[float]) -> Flow:
    async def noop(inputs: dict[str, Any]) -> int:
        return 1

    async def last(inputs: dict[str, Any]) -> int:
        marks.append(time.perf_counter())
        return 1

    nodes = [
        FunctionNode(
            id=f"n{i}",
            fn=last if i == NODES - 1 else noop,
            depends=[f"n{i - 1}"] if i else [],
        )
        for i in range(NODES)
    ]
    return Flow(id="bench", nodes=nodes, checkpoint=checkpoint)


async def _measure(checkpoint: CheckpointConfig | None, runs: int) -> tuple[float, float]:
    """Median (total, nodes) microseconds per node over ``runs`` runs (after a warm-up)."""
    marks: list[float] = []
    flow = _flow(checkpoint, marks)
    tag = uuid.uuid4().hex[:8]  # stores that outlive one measurement get fresh run ids
    totals: list[float] = []
    nodes: list[float] = []
    for i in range(runs + 1):
        marks.clear()
        start = time.perf_counter()
        await flow.run(None, run_id=f"run-{tag}-{i}")
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up: imports, connections, first files
        totals.append((end - start) / NODES * 1e6)
        nodes.append((marks[0] - start) / NODES * 1e6)
    return statistics.median(totals), statistics.median(nodes)


async def _bench(runs: int, print_fn: Callable[[str], Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base_total, base_nodes = await _measure(None, runs)
    rows.append({"store": "-", "mode": "no config", "total": base_total, "nodes": base_nodes})
    disabled = CheckpointConfig(enabled=False, store=MemoryStore())
    total, nodes = await _measure(disabled, runs)
    rows.append({"store": "memory", "mode": "enabled=False", "total": total, "nodes": nodes})
    redis_ok = await _redis_reachable()
    async with _postgres() as pg_dsn:
        for kind in STORES:
            if kind == "redis" and not redis_ok:
                print_fn(f"redis: not reachable at {REDIS_URL}, skipped")
                continue
            for mode in MODES:
                directory = Path(tempfile.mkdtemp(prefix="flowpoint-bench-"))
                store = _make_store(kind, directory, pg_dsn)
                if store is None:
                    break
                try:
                    config = CheckpointConfig(enabled=True, store=store, durability=mode)  # type: ignore[arg-type]
                    total, nodes = await _measure(config, runs)
                finally:
                    if kind == "redis":
                        await _drop_redis_keys(store)
                    await store.close()
                    shutil.rmtree(directory, ignore_errors=True)
                rows.append({"store": kind, "mode": mode, "total": total, "nodes": nodes})
    print_fn(
        f"flow checkpoint overhead: {NODES}-node linear chain of no-op async nodes, "
        f"median of {runs} runs, microseconds per node"
    )
    print_fn(
        f"{'store':<8} {'durability':<14} {'total':>9} {'overhead':>9} "
        f"{'nodes':>9} {'overhead':>9}  (saves/run)"
    )
    for row in rows:
        saves = {"sync": NODES + 2, "async": NODES + 2, "exit": 1}.get(row["mode"], 0)
        print_fn(
            f"{row['store']:<8} {row['mode']:<14} {row['total']:>9.1f} "
            f"{row['total'] - base_total:>+9.1f} {row['nodes']:>9.1f} "
            f"{row['nodes'] - base_nodes:>+9.1f}  ({saves})"
        )
    print_fn(
        "total = until run() returns (all checkpoints durable); nodes = until the last node "
        "finished; overhead = minus the no-config baseline"
    )
    return rows


def run(print_fn: Callable[[str], Any] = print, runs: int = 7) -> list[dict[str, Any]]:
    """Run the benchmark, print the table with ``print_fn`` and return its rows."""
    return asyncio.run(_bench(runs, print_fn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per row (median)")
    args = parser.parse_args()
    run(runs=args.runs)


if __name__ == "__main__":
    main()
