"""Agent -> tool -> human, one process per step.

Usage: python refund_agent.py {run|resume|wait} STORE_URL RUN_ID LOG [ANSWERS_JSON]

* run: start the run; it pauses at ``triage/tools/approve_refund#2``;
* resume: resume with ``ANSWERS_JSON`` (``{path: answer}``; ``{}`` to use the
  answers submitted to the store);
* wait: start the run with ``wait_for_input_seconds=60``: the process waits
  for an answer submitted to the store (e.g. POSTed to the sidecar by
  another process) and finishes the run itself.

The model logs ``model <i>``; the tool logs ``approve asked`` on each call and
``approve received <answer>`` once it has the answer. The script prints one
JSON line: status, pending paths, model calls made by this process, output.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.stores.url import store_from_url
from flows import Agent, Flow, FunctionNode, NodeContext
from tests.integration.node_scripts.common import LoggedChat, append, emit

APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}
SCRIPT: list[Any] = [
    {"tool_calls": [{"name": "lookup_order", "arguments": {"order": "A-1"}}]},
    {"tool_calls": [{"name": "approve_refund", "arguments": {"amount": 80.0}}]},
    "Refund handled.",
]


async def main(mode: str, url: str, run_id: str, log: str, answers: str = "{}") -> None:
    def lookup_order(order: str) -> str:
        """Look an order up."""
        append(log, f"lookup {order}")
        return f"order {order}: 80.0 EUR"

    def approve_refund(amount: float, ctx: NodeContext) -> str:
        """Ask a human to approve a refund."""
        append(log, "approve asked")
        answer = ctx.interrupt(f"Refund {amount} EUR?", schema=APPROVAL)
        append(log, f"approve received {json.dumps(answer, sort_keys=True)}")
        return "refunded" if answer["approved"] else "declined"

    model = LoggedChat(SCRIPT, log)
    store = store_from_url(url)
    try:
        flow = Flow(
            id="refunds",
            nodes=[
                Agent(id="triage", model=model, tools=[lookup_order, approve_refund]),
                FunctionNode(
                    id="notify",
                    fn=lambda inputs: f"told customer: {inputs['triage']['answer']}",
                    depends=["triage"],
                ),
            ],
            checkpoint=CheckpointConfig(enabled=True, store=store),
        )
        question = {"question": "Refund order A-1?"}
        if mode == "run":
            result = await flow.run(question, run_id=run_id)
        elif mode == "wait":
            result = await flow.run(question, run_id=run_id, wait_for_input_seconds=60)
        else:
            result = await flow.resume(run_id, inputs=json.loads(answers))
        emit(
            {
                "status": result.status.value,
                "pending": [p.path for p in result.pending_inputs],
                "calls": model.calls,
                "output": result.output,
            }
        )
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
