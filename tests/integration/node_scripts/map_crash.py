"""A map over 12 items (4 at a time) whose process is SIGKILLed mid-way in "run" mode.

Usage: python map_crash.py {run|resume} STORE_URL RUN_ID LOG

Each iteration logs ``start <i>`` and ``done <i>``. In "run" mode, item 7
waits until five iterations are done, then kills the process with SIGKILL,
while other iterations may still be running. On success the script prints
one JSON line with the status and the output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.stores.url import store_from_url
from flows import Flow, FunctionNode, Map
from tests.integration.node_scripts.common import append, emit, lines

ITEMS = list(range(12))


async def main(mode: str, url: str, run_id: str, log: str) -> None:
    def work(inputs: dict[str, Any]) -> int:
        index: int = inputs["index"]
        append(log, f"start {index}")
        if mode == "run" and index == 7:
            deadline = time.monotonic() + 60
            while sum(1 for line in lines(log) if line.startswith("done")) < 5:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        append(log, f"done {index}")
        return int(inputs["item"]) ** 2

    store = store_from_url(url)
    try:
        flow = Flow(
            id="squares",
            nodes=[
                Map(
                    id="squares",
                    over="input.items",
                    node=FunctionNode(id="square", fn=work),
                    max_concurrency=4,
                )
            ],
            checkpoint=CheckpointConfig(enabled=True, store=store),
        )
        if mode == "resume":
            result = await flow.resume(run_id)
        else:
            result = await flow.run({"items": ITEMS}, run_id=run_id)
        emit({"status": result.status.value, "output": result.output})
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
