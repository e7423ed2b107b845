"""The demo's workflow process: a 5-node support flow that checkpoints through the sidecar.

Run as ``python -m flowpoint_cli.demo_worker SIDECAR_URL RUN_ID (run|resume) MARKER_DIR``.
On the first attempt, node 4 kills its own process with SIGKILL, as an OOM kill or a pod
eviction would. It prints one JSON line per node it executes and, on success, the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig
from checkpoint.stores import SidecarStore
from flows import Flow, FunctionNode, RunResult


def _say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def build_flow(sidecar_url: str, marker_dir: Path) -> Flow:
    """The demo flow: fetch -> classify -> draft -> review (crashes once) -> send."""

    def step(name: str, work: Any) -> Any:
        def fn(inputs: dict[str, Any]) -> Any:
            _say("node_started", node=name, pid=os.getpid())
            time.sleep(0.2)  # stands in for real work, so the demo reads like a run
            if name == "review" and not (marker_dir / "review.crashed").exists():
                (marker_dir / "review.crashed").touch()
                _say("node_crashing", node=name, pid=os.getpid())
                os.kill(os.getpid(), signal.SIGKILL)
            return work(inputs)

        return fn

    nodes = [
        FunctionNode(
            id="fetch_ticket",
            fn=step("fetch_ticket", lambda i: {"id": i["input"]["ticket"], "text": "refund?"}),
        ),
        FunctionNode(
            id="classify",
            fn=step("classify", lambda i: {"intent": "refund", "confidence": 0.93}),
            depends=["fetch_ticket"],
        ),
        FunctionNode(
            id="draft_reply",
            fn=step("draft_reply", lambda i: f"Hello, about ticket {i['fetch_ticket']['id']}..."),
            depends=["fetch_ticket", "classify"],
        ),
        FunctionNode(
            id="review",
            fn=step("review", lambda i: {"approved": True, "reply": i["draft_reply"]}),
            depends=["draft_reply"],
        ),
        FunctionNode(
            id="send",
            fn=step("send", lambda i: {"sent": True, "reply": i["review"]["reply"]}),
            depends=["review"],
        ),
    ]
    store = SidecarStore(sidecar_url, outbox_dir=marker_dir / "outbox")
    return Flow(
        id="support-demo",
        nodes=nodes,
        checkpoint=CheckpointConfig(enabled=True, store=store, durability="sync"),
    )


async def _main(sidecar_url: str, run_id: str, mode: str, marker_dir: Path) -> RunResult:
    flow = build_flow(sidecar_url, marker_dir)
    assert flow.checkpoint is not None
    try:
        if mode == "run":
            return await flow.run({"ticket": "T-1042"}, run_id=run_id)
        return await flow.resume(run_id)
    finally:
        await flow.checkpoint.store.close()


def main(argv: list[str]) -> int:
    sidecar_url, run_id, mode, marker = argv
    marker_dir = Path(marker)
    marker_dir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_main(sidecar_url, run_id, mode, marker_dir))
    _say(
        "run_finished",
        status=result.status.value,
        executed=list(result.executed),
        skipped=list(result.skipped),
        seq=result.seq,
        output=result.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
