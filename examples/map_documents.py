"""A map over documents: one summary per document, checkpointed per iteration.

Run it::

    python examples/map_documents.py            # the first run fails on a bad document,
                                                # the resume runs only what is left
    flowpoint run examples/map_documents.yaml   # the same flow from YAML

The ``summaries`` map runs ``summarize`` on each document, three at a time,
and saves each finished iteration. Document 4 is "corrupt" on the first
attempt (the script flips a switch after the failure, standing in for a fix),
so the first run ends ``failed`` with the other iterations saved; the resume
runs only the iterations that are missing, and the output keeps input order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.store import BaseStore
from checkpoint.stores import FileStore
from flows import Flow, FunctionNode, Map, NodeExecutionError

DOCUMENTS = [
    "Checkpoints make long agent runs survive crashes. They are saved after every step.",
    "A map node fans out over items. Each finished item is saved on its own.",
    "Human approvals pause a run. The answer can come from any device.",
    "Sub-flows nest one flow inside another. Their state lives in the parent checkpoint.",
    "CORRUPT",
    "Graph fingerprints stop a resume into a changed flow. Ids must be explicit.",
]

# Set by the demo to make document 4 fail once (the "bug" fixed before the resume).
FAIL_ON_CORRUPT = os.environ.get("FLOWPOINT_EXAMPLE_FAIL_ON_CORRUPT") == "1"


def summarize(inputs: dict[str, Any]) -> dict[str, Any]:
    """One document's summary: its first sentence and its word count."""
    text: str = inputs["item"]
    if text == "CORRUPT":
        if FAIL_ON_CORRUPT:
            raise ValueError(f"document {inputs['index']} cannot be parsed")
        text = "(unreadable document, skipped)"
    first = text.split(". ")[0].rstrip(".")
    return {"index": inputs["index"], "summary": first, "words": len(text.split())}


def build_digest(inputs: dict[str, Any]) -> dict[str, Any]:
    """All summaries, in document order, and the total word count."""
    summaries = inputs["summaries"]
    return {
        "documents": len(summaries),
        "words": sum(s["words"] for s in summaries),
        "lines": [f"{s['index']}: {s['summary']}" for s in summaries],
    }


def build_flow(store: BaseStore | None) -> Flow:
    """The flow; the same as map_documents.yaml."""
    checkpoint = CheckpointConfig(enabled=True, store=store, max_checkpoints=50) if store else None
    return Flow(
        id="documents",
        nodes=[
            Map(
                id="summaries",
                over="input.docs",
                node=FunctionNode(id="summarize", fn=summarize),
                max_concurrency=3,
            ),
            FunctionNode(id="digest", fn=build_digest, depends=["summaries"]),
        ],
        checkpoint=checkpoint,
    )


async def main(argv: list[str]) -> int:
    global FAIL_ON_CORRUPT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=".flowpoint/examples", help="checkpoint directory")
    args = parser.parse_args(argv)
    store = FileStore(Path(args.store))
    try:
        run_id = f"documents-{uuid.uuid4().hex[:8]}"
        FAIL_ON_CORRUPT = True
        try:
            await build_flow(store).run({"docs": DOCUMENTS}, run_id=run_id)
        except NodeExecutionError as exc:
            print(f"run {run_id} failed as planned: {exc}")
        cp = await store.get(run_id)
        assert cp is not None
        done_before = sorted(cp.node_states["summaries"].internal_state["completed"])
        print(f"iterations saved before the failure: {done_before}")
        FAIL_ON_CORRUPT = False  # "fix the bug", then resume
        result = await build_flow(store).resume(run_id)
        print(f"run {run_id}: {result.status.value} (resumed)")
        print(json.dumps(result.output, indent=2))
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
