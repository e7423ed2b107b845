"""A research agent with an approval tool: it pauses for a human, then finishes.

Run it (no API key needed: the model is a ScriptedChat replaying a fixed script)::

    python examples/research_agent.py                 # runs, pauses, resumes with "approved"
    python examples/research_agent.py --reject        # the human says no

or the same flow from YAML with the CLI::

    flowpoint run examples/research_agent.yaml
    flowpoint resume RUN_ID --input 'research/tools/request_approval#3={"approved": true}'

The agent searches twice, then asks for approval before publishing (the
tool calls ``ctx.interrupt``): the run ends ``pending_input`` at the path
``research/tools/request_approval#3`` (agent, tool, 3rd tool call). Resuming
with the answer continues inside the same agent loop: no model call and no
search is made twice.
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
from flows import Agent, Flow, FunctionNode, NodeContext
from flows.llm import ScriptedChat

APPROVAL: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approved"],
}

NOTES = {
    "durable execution": "Checkpoint after every step; resume from the last checkpoint.",
    "human in the loop": "Pause with a pending input; resume when the answer arrives.",
}

SYSTEM = "You are a careful research assistant. Ask for approval before publishing."

# What the scripted model answers, in order (one answer per agent loop).
SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "search", "arguments": {"query": "durable execution"}}]},
    {"tool_calls": [{"name": "search", "arguments": {"query": "human in the loop"}}]},
    {"tool_calls": [{"name": "request_approval", "arguments": {"action": "publish the summary"}}]},
    {
        "content": "Summary: checkpoint after every step and resume from the last one; "
        "pause for humans with pending inputs."
    },
]


def search(query: str) -> str:
    """Search the research notes.

    Args:
        query: the topic to look up.
    """
    return NOTES.get(query, f"nothing found about {query!r}")


def request_approval(action: str, ctx: NodeContext) -> str:
    """Ask a human to approve an action before it is taken.

    Args:
        action: what is about to be done.
    """
    answer = ctx.interrupt(f"Approve: {action}?", schema=APPROVAL)
    if answer["approved"]:
        return "approved"
    return f"rejected: {answer.get('comment', 'no reason given')}"


def write_report(inputs: dict[str, Any]) -> dict[str, Any]:
    """The report: the agent's answer and how many loops it took."""
    research = inputs["research"]
    return {
        "question": inputs["input"]["question"],
        "answer": research["answer"],
        "loops": research["loops"],
    }


def build_flow(store: BaseStore | None) -> Flow:
    """The flow; the same as research_agent.yaml."""
    checkpoint = CheckpointConfig(enabled=True, store=store, max_checkpoints=50) if store else None
    return Flow(
        id="research",
        nodes=[
            Agent(
                id="research",
                model=ScriptedChat(SCRIPT),
                tools=[search, request_approval],
                system=SYSTEM,
                prompt="{input[question]}",
                max_loops=10,
            ),
            FunctionNode(id="report", fn=write_report, depends=["research"]),
        ],
        checkpoint=checkpoint,
    )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=".flowpoint/examples", help="checkpoint directory")
    parser.add_argument("--reject", action="store_true", help="the human rejects")
    args = parser.parse_args(argv)
    store = FileStore(Path(args.store))
    try:
        run_id = f"research-{uuid.uuid4().hex[:8]}"
        first = await build_flow(store).run(
            {"question": "How do agent workflows survive crashes?"}, run_id=run_id
        )
        print(f"run {run_id}: {first.status.value}")
        for pending in first.pending_inputs:
            print(f"  waiting for input at {pending.path}: {pending.prompt}")
        answer = {"approved": not args.reject, "comment": "not yet"}
        inputs = {p.path: answer for p in first.pending_inputs}
        print(f"resuming with {json.dumps(answer)} (a new Flow object, as a new process would)")
        done = await build_flow(store).resume(run_id, inputs=inputs)
        print(f"run {run_id}: {done.status.value}")
        print(json.dumps(done.output, indent=2))
        return 0 if done.status.value == "completed" else 1
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
