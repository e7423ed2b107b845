"""A nested approval: parent flow -> sub-flow -> agent -> tool -> human.

Run it::

    python examples/nested_approval.py
    flowpoint run examples/nested_approval.yaml
    flowpoint resume RUN_ID --input 'vet/triage/tools/approve_refund#2={"approved": true}'

``intake`` reads the ticket; the ``vet`` sub-flow runs the ``triage`` agent,
whose ``approve_refund`` tool asks a human. The question surfaces at the
parent with the full path ``vet/triage/tools/approve_refund#2``; the whole
sub-flow state (the agent's messages, its pending tool call) sits inside the
parent's checkpoint. The resume goes down the same path: parent, sub-flow,
agent (inside the same loop), tool, and the human's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.store import BaseStore
from checkpoint.stores import FileStore
from flows import Agent, Flow, FunctionNode, NodeContext, SubFlow
from flows.llm import ScriptedChat

APPROVAL: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}

ORDERS = {"A-1001": {"amount": 80.0, "status": "delivered damaged"}}

SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}]},
    {"tool_calls": [{"name": "approve_refund", "arguments": {"amount": 80.0}}]},
    {"content": "Refund of 80.0 EUR for order A-1001: handled."},
]


def read_ticket(inputs: dict[str, Any]) -> dict[str, Any]:
    """The ticket as the vetting sub-flow needs it."""
    ticket = inputs["input"]
    return {"question": f"Customer {ticket['customer']} asks: {ticket['text']}"}


def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up.

    Args:
        order_id: the order number, e.g. A-1001.
    """
    return ORDERS.get(order_id, {"error": f"no order {order_id}"})


def approve_refund(amount: float, ctx: NodeContext) -> str:
    """Ask a human to approve a refund.

    Args:
        amount: the refund in EUR.
    """
    answer = ctx.interrupt(f"Approve a refund of {amount} EUR?", schema=APPROVAL)
    return "refund approved" if answer["approved"] else "refund declined"


def notify(inputs: dict[str, Any]) -> str:
    """The message sent to the customer."""
    return f"Dear customer: {inputs['vet']['triage']['answer']}"


def build_flow(store: BaseStore | None) -> Flow:
    """The flow; the same as nested_approval.yaml."""
    vetting = Flow(
        id="refund-vetting",
        nodes=[
            Agent(
                id="triage",
                model=ScriptedChat(SCRIPT),
                tools=[lookup_order, approve_refund],
                system="You vet refund requests. Refunds need a human's approval.",
                prompt="{input[question]}",
                max_loops=6,
            )
        ],
    )
    checkpoint = CheckpointConfig(enabled=True, store=store, max_checkpoints=50) if store else None
    return Flow(
        id="support-ticket",
        nodes=[
            FunctionNode(id="intake", fn=read_ticket),
            SubFlow(id="vet", flow=vetting, depends=["intake"], input="intake"),
            FunctionNode(id="notify", fn=notify, depends=["vet"]),
        ],
        checkpoint=checkpoint,
    )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=".flowpoint/examples", help="checkpoint directory")
    parser.add_argument("--decline", action="store_true", help="the human declines")
    args = parser.parse_args(argv)
    store = FileStore(Path(args.store))
    try:
        run_id = f"ticket-{uuid.uuid4().hex[:8]}"
        ticket = {"customer": "Ada", "text": "My order A-1001 arrived broken, refund please."}
        first = await build_flow(store).run(ticket, run_id=run_id)
        print(f"run {run_id}: {first.status.value}")
        for pending in first.pending_inputs:
            print(f"  waiting for input at {pending.path}: {pending.prompt}")
        answer = {"approved": not args.decline}
        done = await build_flow(store).resume(
            run_id, inputs={p.path: answer for p in first.pending_inputs}
        )
        print(f"run {run_id}: {done.status.value}")
        print(json.dumps(done.output, indent=2))
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
