"""Per-node overhead of checkpointing in the flow runtime.

A linear chain of 50 no-op async nodes runs with checkpointing off (no config,
and ``enabled=False``) and with each local store (memory, file, SQLite) in each
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
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from checkpoint.stores.memory import MemoryStore
from checkpoint.stores.sqlite import SQLiteStore
from flows import Flow, FunctionNode

NODES = 50
STORES = ("memory", "file", "sqlite")
MODES = ("sync", "async", "exit")


def _make_store(kind: str, directory: Path) -> BaseStore:
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return FileStore(directory / "ckpts")
    return SQLiteStore(directory / "ckpts.db")


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
    totals: list[float] = []
    nodes: list[float] = []
    for i in range(runs + 1):
        marks.clear()
        start = time.perf_counter()
        await flow.run(None, run_id=f"run-{i}")
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
    for kind in STORES:
        for mode in MODES:
            directory = Path(tempfile.mkdtemp(prefix="flowpoint-bench-"))
            store = _make_store(kind, directory)
            try:
                config = CheckpointConfig(enabled=True, store=store, durability=mode)  # type: ignore[arg-type]
                total, nodes = await _measure(config, runs)
            finally:
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
