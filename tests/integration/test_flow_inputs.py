"""Human input: (h) parallel interrupts, (i) answers validated before anything changes,
(j) answers submitted to the store are used and consumed exactly once; nested paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, InputValidationError, NodeStatus
from checkpoint.store import BaseStore
from flows import Flow, FunctionNode, NodeContext
from tests.integration.flow_scripts.support import LOCAL_STORES, make_store, seqs_of

BOOL_ANSWER = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}


@pytest.fixture(params=LOCAL_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = make_store(str(request.param), tmp_path)
    yield store
    await store.close()


def two_approvals(store: Any, ran: list[str]) -> Flow:
    def asker(name: str) -> Any:
        def ask(inputs: dict[str, Any], ctx: NodeContext) -> Any:
            ran.append(name)
            return ctx.interrupt(f"{name}?", schema=BOOL_ANSWER)["approved"]

        return ask

    def join(inputs: dict[str, Any]) -> str:
        ran.append("join")
        return f"legal={inputs['legal']} finance={inputs['finance']}"

    return Flow(
        id="approvals",
        nodes=[
            FunctionNode(id="legal", fn=asker("legal")),
            FunctionNode(id="finance", fn=asker("finance")),
            FunctionNode(id="join", fn=join, depends=["legal", "finance"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )


async def test_parallel_branches_pause_together_and_resume_one_answer_at_a_time(
    store: BaseStore,
) -> None:
    ran: list[str] = []
    flow = two_approvals(store, ran)
    first = await flow.run(None, run_id="h")
    assert first.status is CheckpointStatus.PENDING_INPUT
    assert sorted(p.path for p in first.pending_inputs) == ["finance", "legal"]

    second = await flow.resume("h", inputs={"legal": {"approved": True}})
    assert second.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in second.pending_inputs] == ["finance"]
    cp = await store.get("h")
    assert cp is not None
    assert cp.node_states["legal"].status is NodeStatus.SUCCEEDED
    assert cp.node_states["finance"].status is NodeStatus.WAITING

    third = await flow.resume("h", inputs={"finance": {"approved": False}})
    assert third.status is CheckpointStatus.COMPLETED
    assert third.output == {"join": "legal=True finance=False"}
    assert sorted(ran) == ["finance", "finance", "finance", "join", "legal", "legal"]


async def test_a_wrong_answer_is_refused_and_nothing_changes(store: BaseStore) -> None:
    ran: list[str] = []
    flow = two_approvals(store, ran)
    await flow.run(None, run_id="i")
    before = await seqs_of(store, "i")
    ran.clear()
    with pytest.raises(InputValidationError, match=r"'legal'.*'approved' is a required property"):
        await flow.resume("i", inputs={"legal": {"approve": True}})
    with pytest.raises(InputValidationError, match=r"at approved: 'yes' is not of type 'boolean'"):
        await flow.resume("i", inputs={"legal": {"approved": True}, "finance": {"approved": "yes"}})
    with pytest.raises(InputValidationError, match=r"pending input paths: \['finance', 'legal'\]"):
        await flow.resume("i", inputs={"review": True})
    assert ran == []
    assert await seqs_of(store, "i") == before
    info = await store.get_run("i")
    assert info is not None and info.claim is None  # every refused resume released its claim
    assert info.status is CheckpointStatus.PENDING_INPUT


async def test_answers_submitted_to_the_store_are_used_and_consumed_once(
    store: BaseStore,
) -> None:
    ran: list[str] = []
    flow = two_approvals(store, ran)
    await flow.run(None, run_id="j")
    await store.submit_input("j", "legal", {"approved": True})
    await store.submit_input("j", "finance", {"approved": True})
    await store.submit_input("j", "not-asked", 1)  # not pending: ignored
    result = await flow.resume("j", inputs={"finance": {"approved": False}})  # explicit wins
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"join": "legal=True finance=False"}
    remaining = await store.list_inputs("j")
    assert [r.path for r in remaining] == ["not-asked"]
    consumed = await store.list_inputs("j", include_consumed=True)
    assert sorted(r.path for r in consumed if r.consumed) == ["finance", "legal"]
    # The answers survive in the checkpoint, inside the node that asked.
    cp = await store.get("j")
    assert cp is not None
    assert cp.node_states["legal"].internal_state["answers"] == {"legal": {"approved": True}}
    # Consumed exactly once: marking them again finds nothing new.
    assert await store.consume_inputs("j", ["legal", "finance"]) == []


async def test_answers_are_durable_before_they_are_consumed(store: BaseStore) -> None:
    """A crash after the answers were consumed must not lose them: they are in a checkpoint."""
    ran: list[str] = []

    def ask(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        ran.append("ask")
        answer = ctx.interrupt("go?", schema=BOOL_ANSWER)
        if ran.count("ask") == 2:
            raise RuntimeError("crash after the answer was read")
        return answer

    flow = Flow(
        id="durable",
        nodes=[FunctionNode(id="ask", fn=ask)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    await flow.run(None, run_id="dur")
    await store.submit_input("dur", "ask", {"approved": True})
    with pytest.raises(Exception, match="crash after"):
        await flow.resume("dur")
    assert await store.list_inputs("dur") == []  # consumed
    result = await flow.resume("dur")  # no answer given this time: it comes from the checkpoint
    assert result.output == {"ask": {"approved": True}}


async def test_nested_and_keyed_interrupts_resume_with_their_paths(store: BaseStore) -> None:
    def items(inputs: dict[str, Any], ctx: NodeContext) -> list[Any]:
        out = []
        for i in range(3):
            child = ctx.child(f"[{i}]")
            if "result" in child.state:
                out.append(child.state["result"])
                continue
            ok = child.interrupt(f"keep item {i}?", key="keep") if i != 1 else True
            child.state["result"] = (i, ok)
            out.append((i, ok))
        return out

    flow = Flow(
        id="nested",
        nodes=[FunctionNode(id="check", fn=items)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    first = await flow.run(None, run_id="n")
    assert [p.path for p in first.pending_inputs] == ["check[0]/keep"]
    second = await flow.resume("n", inputs={"check[0]/keep": True})
    assert [p.path for p in second.pending_inputs] == ["check[2]/keep"]
    cp = await store.get("n")
    assert cp is not None
    children = cp.node_states["check"].internal_state["children"]
    assert children["[0]"]["answers"] == {"check[0]/keep": True}
    assert children["[1]"]["result"] == (1, True)
    third = await flow.resume("n", inputs={"check[2]/keep": False})
    assert third.output == {"check": [(0, True), (1, True), (2, False)]}


async def test_redacted_fields_reach_a_resumed_node_redacted(store: BaseStore) -> None:
    seen: list[Any] = []

    def login(inputs: dict[str, Any]) -> dict[str, str]:
        return {"user": "ann", "password": "hunter2"}

    def use(inputs: dict[str, Any], ctx: NodeContext) -> str:
        seen.append(inputs["login"]["password"])
        return str(ctx.interrupt("continue?"))

    flow = Flow(
        id="red",
        nodes=[
            FunctionNode(id="login", fn=login),
            FunctionNode(id="use", fn=use, depends=["login"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store, redact=["password"]),
    )
    await flow.run({"password": "in-input"}, run_id="red")
    await flow.resume("red", inputs={"use": "yes"})
    assert seen == ["hunter2", "***REDACTED***"]
    for seq in await seqs_of(store, "red"):
        cp = await store.get("red", seq)
        assert cp is not None
        assert "hunter2" not in repr(cp) and "in-input" not in repr(cp)
