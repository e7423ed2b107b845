"""GraphRunner on its own (no store): concurrency, failures, interrupts, events, restore."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from checkpoint import CheckpointStatus, NodeState, NodeStatus
from flows import FunctionNode, GraphRunner, Node, NodeContext, NodeEvent


async def test_independent_nodes_run_concurrently() -> None:
    a_started = asyncio.Event()
    b_started = asyncio.Event()

    async def a(inputs: dict[str, Any]) -> str:
        a_started.set()
        await b_started.wait()  # deadlocks unless b runs at the same time
        return "a"

    async def b(inputs: dict[str, Any]) -> str:
        b_started.set()
        await a_started.wait()
        return "b"

    runner = GraphRunner([FunctionNode(id="a", fn=a), FunctionNode(id="b", fn=b)], run_id="r")
    outcome = await asyncio.wait_for(runner.run(None), timeout=30)
    assert outcome.status is CheckpointStatus.COMPLETED
    assert outcome.outputs == {"a": "a", "b": "b"}


async def test_a_failure_lets_running_siblings_finish_and_starts_nothing_new() -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def slow(inputs: dict[str, Any]) -> str:
        started.append("slow")
        await release.wait()
        return "done"

    async def bad(inputs: dict[str, Any]) -> None:
        started.append("bad")
        release.set()
        raise ValueError("broken")

    async def later(inputs: dict[str, Any]) -> None:
        started.append("later")

    nodes = [
        FunctionNode(id="slow", fn=slow),
        FunctionNode(id="bad", fn=bad),
        FunctionNode(id="after_slow", fn=later, depends=["slow"]),
    ]
    events: list[NodeEvent] = []

    async def on_event(event: NodeEvent) -> None:
        events.append(event)

    outcome = await GraphRunner(nodes, on_event=on_event, run_id="r").run(None)
    assert outcome.status is CheckpointStatus.FAILED
    assert "later" not in started
    assert outcome.states["slow"].status is NodeStatus.SUCCEEDED
    assert outcome.states["bad"].status is NodeStatus.FAILED
    assert outcome.states["bad"].error is not None
    assert outcome.states["bad"].error.type == "ValueError"
    assert outcome.first_error is not None and outcome.first_error[0] == "bad"
    assert sorted((e.kind, e.node_id) for e in events) == [("failed", "bad"), ("finished", "slow")]


async def test_an_interrupt_holds_dependants_while_independent_nodes_run() -> None:
    def ask(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        return ctx.interrupt("ok?")

    ran: list[str] = []

    def other(inputs: dict[str, Any]) -> str:
        ran.append("other")
        return "x"

    def after(inputs: dict[str, Any]) -> str:
        ran.append("after")
        return "y"

    nodes = [
        FunctionNode(id="ask", fn=ask),
        FunctionNode(id="after", fn=after, depends=["ask"]),
        FunctionNode(id="other", fn=other),
    ]
    outcome = await GraphRunner(nodes, run_id="r").run(None)
    assert outcome.status is CheckpointStatus.PENDING_INPUT
    assert ran == ["other"]
    assert [p.path for p in outcome.pending_inputs] == ["ask"]
    assert outcome.states["ask"].status is NodeStatus.WAITING

    # The same runner inputs with an answer: the waiting node returns it, its dependant runs.
    prior = outcome.states
    outcome2 = await GraphRunner(nodes, prior, {"ask": "yes"}, run_id="r").run(None)
    assert outcome2.status is CheckpointStatus.COMPLETED
    assert outcome2.outputs["ask"] == "yes"
    assert outcome2.skipped == ["other"]
    assert outcome2.executed == ["ask", "after"]


async def test_events_come_before_dependants_start_and_state_saves_are_reported() -> None:
    log: list[str] = []

    async def first(inputs: dict[str, Any], ctx: NodeContext) -> int:
        ctx.state["step"] = 1
        await ctx.save_state()
        return 1

    async def second(inputs: dict[str, Any]) -> int:
        log.append("second runs")
        return int(inputs["first"]) + 1

    async def on_event(event: NodeEvent) -> None:
        log.append(f"{event.kind} {event.node_id} {event.state.status.value}")
        if event.kind == "state_saved":
            assert event.state.internal_state == {"step": 1}

    nodes = [
        FunctionNode(id="first", fn=first),
        FunctionNode(id="second", fn=second, depends=["first"]),
    ]
    outcome = await GraphRunner(nodes, on_event=on_event, run_id="r").run(None)
    assert outcome.outputs["second"] == 2
    assert log == [
        "state_saved first running",
        "finished first succeeded",
        "second runs",
        "finished second succeeded",
    ]


async def test_restore_failure_logs_and_reexecutes_with_empty_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Picky(Node):
        def restore(self, state: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("state from an old version")

        async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
            return dict(ctx.state)

    prior = {
        "p": NodeState(
            node_id="p",
            node_type="Picky",
            status=NodeStatus.FAILED,
            internal_state={"k": 1},
            attempts=1,
        )
    }
    with caplog.at_level(logging.WARNING, logger="flows"):
        outcome = await GraphRunner([Picky(id="p")], prior, run_id="r").run(None)
    assert outcome.outputs == {"p": {}}
    assert outcome.states["p"].attempts == 2
    assert "could not restore its saved state" in caplog.text


async def test_path_prefix_places_nodes_under_an_enclosing_path() -> None:
    def ask(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        return ctx.child("[0]").interrupt("sure?", key="ok")

    outcome = await GraphRunner(
        [FunctionNode(id="inner", fn=ask)], run_id="r", path_prefix="vet"
    ).run(None)
    assert [p.path for p in outcome.pending_inputs] == ["vet/inner[0]/ok"]
    outcome2 = await GraphRunner(
        [FunctionNode(id="inner", fn=ask)],
        outcome.states,
        {"vet/inner[0]/ok": 5},
        run_id="r",
        path_prefix="vet",
    ).run(None)
    assert outcome2.outputs == {"inner": 5}


async def test_cancelling_the_runner_cancels_running_nodes() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def forever(inputs: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(
        GraphRunner([FunctionNode(id="f", fn=forever)], run_id="r").run(None)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_a_fatal_listener_error_stops_the_run_and_propagates() -> None:
    ran: list[str] = []

    def node(inputs: dict[str, Any]) -> int:
        ran.append("x")
        return 1

    async def on_event(event: NodeEvent) -> None:
        raise RuntimeError("store gone")

    nodes = [FunctionNode(id="a", fn=node), FunctionNode(id="b", fn=node, depends=["a"])]
    with pytest.raises(RuntimeError, match="store gone"):
        await GraphRunner(nodes, on_event=on_event, run_id="r").run(None)
    assert ran == ["x"]
