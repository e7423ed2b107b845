"""SubFlow: nested state in the parent checkpoint, resume at any depth, the fingerprint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, GraphMismatchError, NodeStatus
from checkpoint.errors import ConfigError
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from flows import (
    Agent,
    Flow,
    FunctionNode,
    HumanInput,
    NodeContext,
    NodeExecutionError,
    SubFlow,
)
from flows.llm import ScriptedChat
from flows.subflow import SubFlowError

APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = FileStore(tmp_path / "ckpts")
    yield store
    await store.close()


def config(store: BaseStore) -> CheckpointConfig:
    return CheckpointConfig(enabled=True, store=store, max_checkpoints=1000)


def nested_approval(store: BaseStore, log: list[str], model: ScriptedChat) -> Flow:
    """parent -> SubFlow "vet" -> Agent "triage" -> tool approve_refund -> human."""

    def lookup(order: str) -> str:
        """Find an order."""
        log.append(f"lookup:{order}")
        return f"order {order}: 80.0 EUR"

    def approve_refund(amount: float, ctx: NodeContext) -> str:
        """Ask a human to approve a refund."""
        log.append("approve_refund")
        answer = ctx.interrupt(f"Refund {amount} EUR?", schema=APPROVAL)
        return "refunded" if answer["approved"] else "declined"

    def intake(inputs: dict[str, Any]) -> dict[str, str]:
        log.append("intake")
        return {"question": f"Refund order {inputs['input']['order']}?"}

    def notify(inputs: dict[str, Any]) -> str:
        log.append("notify")
        return f"customer told: {inputs['vet']['triage']['answer']}"

    inner = Flow(
        id="vetting",
        nodes=[Agent(id="triage", model=model, tools=[lookup, approve_refund])],
    )
    return Flow(
        id="support",
        nodes=[
            FunctionNode(id="intake", fn=intake),
            SubFlow(id="vet", flow=inner, depends=["intake"], input="intake"),
            FunctionNode(id="notify", fn=notify, depends=["vet"]),
        ],
        checkpoint=config(store),
    )


SCRIPT: list[Any] = [
    {"tool_calls": [{"name": "lookup", "arguments": {"order": "A7"}}]},
    {"tool_calls": [{"name": "approve_refund", "arguments": {"amount": 80.0}}]},
    "The refund of 80 EUR is done.",
]


async def test_nested_interrupt_resumes_at_depth_parent_subflow_agent_tool_human(
    store: BaseStore,
) -> None:
    log: list[str] = []
    model = ScriptedChat(SCRIPT)
    first = await nested_approval(store, log, model).run({"order": "A7"}, run_id="n1")
    assert first.status is CheckpointStatus.PENDING_INPUT
    [pending] = first.pending_inputs
    assert pending.path == "vet/triage/tools/approve_refund#2"
    assert pending.prompt == "Refund 80.0 EUR?"
    assert model.calls == 2

    # Everything the sub-flow did is inside the parent's checkpoint.
    cp = await store.get("n1")
    assert cp is not None
    vet = cp.node_states["vet"]
    assert vet.status is NodeStatus.WAITING
    triage = vet.internal_state["node_states"]["triage"]
    assert triage["status"] == "waiting"
    assert triage["internal_state"]["pending_call"]["name"] == "approve_refund"
    assert triage["internal_state"]["loop"] == 1

    fresh = ScriptedChat(SCRIPT)
    done = await nested_approval(store, log, fresh).resume(
        "n1", inputs={pending.path: {"approved": True}}
    )
    assert done.status is CheckpointStatus.COMPLETED
    assert done.output == {"notify": "customer told: The refund of 80 EUR is done."}
    assert fresh.calls == 1  # no earlier model call was repeated
    assert log == ["intake", "lookup:A7", "approve_refund", "approve_refund", "notify"]


async def test_sub_flows_nest_two_deep_with_paths_joined_by_slashes(store: BaseStore) -> None:
    innermost = Flow(id="c", nodes=[HumanInput(id="review", prompt="ok {input}?")])
    middle = Flow(id="b", nodes=[SubFlow(id="inner", flow=innermost)])
    outer = Flow(id="a", nodes=[SubFlow(id="outer", flow=middle)], checkpoint=config(store))
    first = await outer.run("x", run_id="d2")
    assert [(p.path, p.prompt) for p in first.pending_inputs] == [("outer/inner/review", "ok x?")]
    done = await outer.resume("d2", inputs={"outer/inner/review": "yes"})
    assert done.output == {"outer": {"inner": {"review": "yes"}}}


async def test_an_inner_failure_fails_the_sub_flow_and_resume_reruns_only_that_node(
    store: BaseStore,
) -> None:
    ran: list[str] = []
    broken = {"flag": True}

    def step(name: str) -> Any:
        def fn(inputs: dict[str, Any]) -> str:
            ran.append(name)
            if name == "second" and broken["flag"]:
                raise RuntimeError("second is broken")
            return name

        return fn

    inner = Flow(
        id="inner",
        nodes=[
            FunctionNode(id="first", fn=step("first")),
            FunctionNode(id="second", fn=step("second"), depends=["first"]),
        ],
    )
    flow = Flow(id="outer", nodes=[SubFlow(id="sub", flow=inner)], checkpoint=config(store))
    with pytest.raises(NodeExecutionError, match="second is broken") as caught:
        await flow.run(None, run_id="f1")
    assert isinstance(caught.value.__cause__, SubFlowError)
    broken["flag"] = False
    result = await flow.resume("f1")
    assert result.output == {"sub": {"second": "second"}}
    assert ran == ["first", "second", "second"]


async def test_the_fingerprint_covers_the_inner_graph(store: BaseStore) -> None:
    def make(inner_nodes: list[Any]) -> Flow:
        return Flow(
            id="outer",
            nodes=[SubFlow(id="sub", flow=Flow(id="inner", nodes=inner_nodes))],
            checkpoint=config(store),
        )

    original = make([HumanInput(id="ask", prompt="?")])
    await original.run(None, run_id="g1")
    changed = make([HumanInput(id="ask", prompt="?"), FunctionNode(id="more", fn=len)])
    assert changed.graph_fingerprint != original.graph_fingerprint
    with pytest.raises(GraphMismatchError, match="different graph"):
        await changed.resume("g1", inputs={"sub/ask": 1})
    done = await make([HumanInput(id="ask", prompt="?")]).resume("g1", inputs={"sub/ask": 1})
    assert done.output == {"sub": {"ask": 1}}


async def test_the_inner_input_is_the_flow_input_or_what_input_selects() -> None:
    inner = Flow(id="echo", nodes=[FunctionNode(id="echo", fn=lambda i: i["input"])])
    flow = Flow(
        id="outer",
        nodes=[
            FunctionNode(id="plan", fn=lambda i: {"steps": [1, 2]}),
            SubFlow(id="whole", flow=inner),
            SubFlow(id="picked", flow=inner, depends=["plan"], input="plan.steps.1"),
            SubFlow(id="called", flow=inner, depends=["plan"], input=lambda i: len(i["plan"])),
        ],
    )
    result = await flow.run({"q": 1})
    assert result.output == {
        "whole": {"echo": {"q": 1}},
        "picked": {"echo": 2},
        "called": {"echo": 1},
    }
    with pytest.raises(ConfigError, match="flow must be a Flow"):
        SubFlow(id="bad", flow="inner.yaml")  # type: ignore[arg-type]
