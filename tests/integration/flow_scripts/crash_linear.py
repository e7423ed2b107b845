"""A 5-node linear flow whose 4th node SIGKILLs its own process on the first attempt.

Usage: python crash_linear.py {run|resume} STORE_KIND STORE_DIR RUN_ID COUNT_FILE

Every node execution appends its id to COUNT_FILE (O_APPEND, one write per
line), so the test can count executions across processes. On success the
script prints the RunResult as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig
from flows import Flow, FunctionNode
from tests.integration.flow_scripts.support import make_store


def record(count_file: str, node_id: str) -> int:
    fd = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{node_id}\n".encode())
    finally:
        os.close(fd)
    with open(count_file, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip() == node_id)


def build(store: Any, count_file: str) -> Flow:
    def node(node_id: str) -> Any:
        def run(inputs: dict[str, Any]) -> dict[str, Any]:
            attempt = record(count_file, node_id)
            if node_id == "n4" and attempt == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            prev = [v for k, v in inputs.items() if k != "input"]
            total = (prev[0]["total"] if prev else inputs["input"]["start"]) + 1
            return {"node": node_id, "total": total}

        return run

    nodes = [
        FunctionNode(id=f"n{i}", fn=node(f"n{i}"), depends=[f"n{i - 1}"] if i > 1 else [])
        for i in range(1, 6)
    ]
    return Flow(id="crashy", nodes=nodes, checkpoint=CheckpointConfig(enabled=True, store=store))


async def main(mode: str, kind: str, directory: str, run_id: str, count_file: str) -> None:
    store = make_store(kind, Path(directory))
    try:
        flow = build(store, count_file)
        if mode == "run":
            result = await flow.run({"start": 100}, run_id=run_id)
        else:
            result = await flow.resume(run_id)
        print(
            json.dumps(
                {
                    "status": str(result.status),
                    "output": result.output,
                    "seq": result.seq,
                    "executed": result.executed,
                    "skipped": result.skipped,
                }
            )
        )
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
