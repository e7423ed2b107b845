"""The extension points hold up: a sub-flow and a map built in a few lines on GraphRunner/ctx."""

from __future__ import annotations

from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, NodeState
from checkpoint.stores.memory import MemoryStore
from flows import (
    Flow,
    FunctionNode,
    GraphRunner,
    Interrupt,
    Node,
    NodeContext,
    NodeEvent,
    NodeExecutionError,
)
from flows.fingerprint import graph_fingerprint


class MiniSubFlow(Node):
    """What the SubFlow helper will build: inner states nested in ctx.state, saved per event."""

    def __init__(self, id: str, nodes: list[Node], depends: list[str] | None = None) -> None:
        super().__init__(id, depends or [])
        self.inner = nodes

    def fingerprint_extra(self) -> str:
        return graph_fingerprint(self.inner)

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        saved = ctx.state.setdefault("node_states", {})
        states = {nid: NodeState.model_validate(doc) for nid, doc in saved.items()}

        async def on_event(event: NodeEvent) -> None:
            saved[event.node_id] = event.state.model_dump()
            await ctx.save_state()

        runner = GraphRunner(
            self.inner,
            states,
            ctx.answers_under(),
            on_event,
            run_id=ctx.run_id,
            path_prefix=ctx.path,
        )
        outcome = await runner.run(inputs)
        if outcome.status is CheckpointStatus.PENDING_INPUT:
            raise Interrupt(outcome.pending_inputs)
        if outcome.status is CheckpointStatus.FAILED:
            first = outcome.first_error
            assert first is not None
            raise first[1]
        return {nid: outcome.outputs[nid] for nid in outcome.outputs}


class MiniMap(Node):
    """What the Map helper will build: one child context per item."""

    def __init__(self, id: str, fn: Any, depends: list[str] | None = None) -> None:
        super().__init__(id, depends or [])
        self.fn = fn

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        results = []
        for i, item in enumerate(inputs["input"]["items"]):
            child = ctx.child(f"[{i}]")
            if "result" not in child.state:
                child.state["result"] = self.fn(item, child)
                await ctx.save_state()
            results.append(child.state["result"])
        return results


async def test_a_sub_flow_pauses_inside_and_resumes_without_redoing_inner_work() -> None:
    inner_runs: list[str] = []

    def prepare(inputs: dict[str, Any]) -> int:
        inner_runs.append("prepare")
        return 10

    def approve(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        inner_runs.append("approve")
        return ctx.interrupt("ok?", schema={"type": "boolean"}) and inputs["prepare"]

    sub = MiniSubFlow(
        "vet",
        [
            FunctionNode(id="prepare", fn=prepare),
            FunctionNode(id="approve", fn=approve, depends=["prepare"]),
        ],
    )
    store = MemoryStore()
    flow = Flow(id="outer", nodes=[sub], checkpoint=CheckpointConfig(enabled=True, store=store))
    first = await flow.run(None, run_id="s1")
    assert first.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in first.pending_inputs] == ["vet/approve"]
    result = await flow.resume("s1", inputs={"vet/approve": True})
    assert result.output == {"vet": {"prepare": 10, "approve": 10}}
    assert inner_runs == ["prepare", "approve", "approve"]  # prepare ran once


async def test_a_map_resumes_only_the_missing_items_after_a_crash() -> None:
    done: list[int] = []

    def work(item: int, ctx: NodeContext) -> int:
        if item == 4 and 4 not in done:
            done.append(item)
            raise RuntimeError("item 4 crashed")
        done.append(item)
        return item * item

    store = MemoryStore()
    flow = Flow(
        id="mapped",
        nodes=[MiniMap("squares", work)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError, match="item 4 crashed"):
        await flow.run({"items": [1, 2, 3, 4, 5]}, run_id="m1")
    result = await flow.resume("m1")
    assert result.output == {"squares": [1, 4, 9, 16, 25]}
    assert done == [1, 2, 3, 4, 4, 5]
