"""A workflow worker process that checkpoints through a real sidecar (SidecarStore).

Usage::

    python -m tests.chaos.worker_scripts.chaos_worker --sidecar URL --run-id ID --log FILE
        [--mode auto|run|resume] [--flow chaos30|linear5] [--durability sync|async]
        [--outbox DIR] [--lease SECONDS] [--crash-at NODE] [--otlp-endpoint URL]

``auto`` starts the run when the sidecar does not know it yet and resumes it otherwise,
as a restarted pod would. A resume waits (retrying the claim) until the lease of a killed
predecessor lapses. ``--crash-at NODE`` makes the process SIGKILL itself inside that node,
after the node started and before it returns. ``--otlp-endpoint`` exports the run and node
spans (the application's own telemetry) over OTLP/HTTP.

Every node execution and every acknowledged checkpoint is appended to the execution log
(see :mod:`tests.chaos.worker_scripts.execlog`). On success the RunResult is printed as
one JSON line and the exit code is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from checkpoint import CheckpointConfig, FlowCheckpoint
from checkpoint.errors import ClaimConflictError
from checkpoint.stores import SidecarStore
from flows import Flow, FunctionNode, NodeContext, RunResult
from tests.chaos.worker_scripts import execlog
from tests.chaos.worker_scripts.graphs import GRAPHS, sleep_seconds, weight

CLAIM_WAIT_S = 30.0

NodeFn = Callable[[dict[str, Any], NodeContext], Coroutine[Any, Any, dict[str, Any]]]


def _node_fn(node_id: str, deps: list[str], log: Path, crash_at: str | None) -> NodeFn:
    pid = os.getpid()

    async def run(inputs: dict[str, Any], ctx: NodeContext) -> dict[str, Any]:
        execlog.append(log, "start", node_id, pid, ctx.attempt)
        await asyncio.sleep(sleep_seconds(node_id))
        if node_id == crash_at:
            os.kill(pid, signal.SIGKILL)
        value = weight(node_id) + sum(int(inputs[d]["value"]) for d in deps)
        execlog.append(log, "end", node_id, pid, ctx.attempt)
        return {"node": node_id, "pid": pid, "value": value}

    return run


class _AckLog:
    """Flow callbacks: logs each acknowledged checkpoint, and when the run is owned."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.pid = os.getpid()

    def on_checkpoint(self, cp: FlowCheckpoint) -> None:
        event = cp.metadata.get("event", "-")
        node = cp.metadata.get("node_id", "-")
        execlog.append(self.log, "ack", cp.seq, self.pid, event, node)

    def on_resume(self, run_id: str, seq: int) -> None:
        execlog.append(self.log, "go", self.pid)


def build_flow(args: argparse.Namespace, store: SidecarStore) -> Flow:
    """The flow named by ``--flow``, checkpointing to ``store``."""
    nodes = [
        FunctionNode(
            id=node_id,
            fn=_node_fn(node_id, list(deps), args.log, args.crash_at),
            depends=list(deps),
        )
        for node_id, deps in GRAPHS[args.flow]
    ]
    config = CheckpointConfig(
        enabled=True,
        store=store,
        durability=args.durability,
        max_checkpoints=None,  # the tests read the whole history
        on_save_error="raise",  # a save that fails must fail the run, not degrade it
    )
    return Flow(
        id=f"chaos-{args.flow}", nodes=nodes, checkpoint=config, callbacks=[_AckLog(args.log)]
    )


async def _resume(flow: Flow, args: argparse.Namespace) -> RunResult:
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        try:
            return await flow.resume(
                args.run_id, worker_id=f"chaos-{os.getpid()}", lease_seconds=args.lease
            )
        except ClaimConflictError:
            # The previous worker was killed holding the run: wait until its lease lapses.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> RunResult:
    pid = os.getpid()
    execlog.append(args.log, "proc", pid, args.mode)
    store = SidecarStore(args.sidecar, outbox_dir=args.outbox, timeout=10.0)
    try:
        flow = build_flow(args, store)
        mode = args.mode
        if mode == "auto":
            mode = "resume" if await store.get_run(args.run_id) is not None else "run"
        if mode == "run":
            execlog.append(args.log, "go", pid)
            result = await flow.run({"seed": 1}, run_id=args.run_id)
        else:
            result = await _resume(flow, args)
        execlog.append(args.log, "done", pid, result.status.value, result.seq)
        return result
    finally:
        await store.close()


def _telemetry(endpoint: str) -> Callable[[], None]:
    """Export run/node spans over OTLP/HTTP; returns the flush-and-stop function."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from instrumentation import use_tracer_provider

    provider = TracerProvider(resource=Resource.create({"service.name": "chaos-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use_tracer_provider(provider)
    return provider.shutdown


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sidecar", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--mode", choices=["auto", "run", "resume"], default="auto")
    parser.add_argument("--flow", choices=sorted(GRAPHS), default="chaos30")
    parser.add_argument("--durability", choices=["sync", "async"], default="sync")
    parser.add_argument("--outbox", type=Path, default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--crash-at", default=None)
    parser.add_argument("--otlp-endpoint", default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    stop_telemetry = _telemetry(arguments.otlp_endpoint) if arguments.otlp_endpoint else None
    try:
        outcome = asyncio.run(main(arguments))
    finally:
        if stop_telemetry is not None:
            stop_telemetry()
    print(
        json.dumps(
            {
                "status": outcome.status.value,
                "seq": outcome.seq,
                "output": outcome.output,
                "executed": outcome.executed,
                "skipped": outcome.skipped,
                "degraded": outcome.degraded,
            }
        ),
        flush=True,
    )
