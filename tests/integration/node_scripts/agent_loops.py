"""An agent scripted for 15 loops; in "run" mode its process is SIGKILLed at model call 6.

Usage: python agent_loops.py {run|resume|reference} STORE_URL RUN_ID LOG

The model logs ``model <i>`` (i = the loop's index) before answering and the
tool logs ``tool <key>``, so the test counts calls across processes. On
success the script prints one JSON line: status, model calls made by this
process, loops and the final message history.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.stores.url import store_from_url
from flows import Agent, Flow
from tests.integration.node_scripts.common import LoggedChat, append, emit

LOOPS = 15


def script() -> list[Any]:
    calls: list[Any] = [
        {"tool_calls": [{"name": "lookup", "arguments": {"key": f"k{i}"}}]}
        for i in range(LOOPS - 1)
    ]
    return [*calls, {"content": f"finished after {LOOPS} loops"}]


async def main(mode: str, url: str, run_id: str, log: str) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        append(log, f"tool {key}")
        return f"value of {key}"

    model = LoggedChat(script(), log, kill_on_call=6 if mode == "run" else None)
    store = store_from_url(url)
    try:
        flow = Flow(
            id="looping",
            nodes=[Agent(id="agent", model=model, tools=[lookup], max_loops=LOOPS)],
            checkpoint=CheckpointConfig(enabled=True, store=store),
        )
        question = {"question": "count to fifteen"}
        if mode == "resume":
            result = await flow.resume(run_id)
        else:
            result = await flow.run(question, run_id=run_id)
        out = result.output["agent"]
        emit(
            {
                "status": result.status.value,
                "calls": model.calls,
                "loops": out["loops"],
                "messages": out["messages"],
            }
        )
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
