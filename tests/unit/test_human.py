"""HumanInput and waiting for answers: parallel pauses, validation, reminders (RFC 31), waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, InputValidationError, NodeStatus
from checkpoint.errors import ConfigError
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from flows import Agent, Flow, FunctionNode, HumanInput, NodeContext
from flows.llm import ScriptedChat

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


def approvals(store: BaseStore, ran: list[str], **flow_kwargs: Any) -> Flow:
    def plan(inputs: dict[str, Any]) -> dict[str, str]:
        ran.append("plan")
        return {"title": f"migrate {inputs['input']['db']}"}

    def ship(inputs: dict[str, Any]) -> str:
        ran.append("ship")
        return f"legal={inputs['legal']['approved']} finance={inputs['finance']['approved']}"

    return Flow(
        id="approvals",
        nodes=[
            FunctionNode(id="plan", fn=plan),
            HumanInput(
                id="legal",
                prompt="Legal: approve {plan[title]}?",
                schema=APPROVAL,
                depends=["plan"],
            ),
            HumanInput(
                id="finance",
                prompt="Finance: approve {plan[title]}?",
                schema=APPROVAL,
                depends=["plan"],
            ),
            FunctionNode(id="ship", fn=ship, depends=["legal", "finance"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store, max_checkpoints=1000),
        **flow_kwargs,
    )


async def test_two_parallel_branches_pause_and_complete_one_answer_at_a_time(
    store: BaseStore,
) -> None:
    ran: list[str] = []
    flow = approvals(store, ran)
    first = await flow.run({"db": "orders"}, run_id="p1")
    assert first.status is CheckpointStatus.PENDING_INPUT
    assert [(p.path, p.prompt) for p in first.pending_inputs] == [
        ("legal", "Legal: approve migrate orders?"),
        ("finance", "Finance: approve migrate orders?"),
    ]
    assert first.pending_inputs[0].schema_ == APPROVAL

    second = await flow.resume("p1", inputs={"legal": {"approved": True}})
    assert second.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in second.pending_inputs] == ["finance"]
    assert second.pending_inputs[0].metadata == {"resumed": True}  # a reminder, same prompt
    assert second.pending_inputs[0].prompt == "Finance: approve migrate orders?"

    third = await flow.resume("p1", inputs={"finance": {"approved": False}})
    assert third.status is CheckpointStatus.COMPLETED
    assert third.output == {"ship": "legal=True finance=False"}
    assert ran == ["plan", "ship"]
    cp = await store.get("p1")
    assert cp is not None
    assert cp.node_states["legal"].output == {"approved": True}
    assert cp.pending_inputs == []


async def test_a_wrong_answer_is_refused_and_changes_nothing(store: BaseStore) -> None:
    flow = approvals(store, [])
    await flow.run({"db": "x"}, run_id="w1")
    before = await store.list_checkpoints("w1", limit=1000)
    with pytest.raises(InputValidationError, match="'approved' is a required property"):
        await flow.resume("w1", inputs={"legal": {"ok": True}})
    assert await store.list_checkpoints("w1", limit=1000) == before


async def test_the_run_waits_for_an_answer_submitted_to_the_store(store: BaseStore) -> None:
    ran: list[str] = []
    flow = approvals(store, ran, wait_for_input_seconds=30)

    async def human() -> None:
        # Answer each question once it is visible in the latest checkpoint, like a UI would.
        answered: set[str] = set()
        while len(answered) < 2:
            info = await store.get_run("wait-1")
            for path in info.pending_inputs if info is not None else []:
                if path not in answered:
                    await store.submit_input("wait-1", path, {"approved": path == "legal"})
                    answered.add(path)
            await asyncio.sleep(0.01)

    helper = asyncio.create_task(human())
    try:
        result = await flow.run({"db": "users"}, run_id="wait-1")
    finally:
        await helper
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"ship": "legal=True finance=False"}
    assert ran == ["plan", "ship"]
    # Each answer was consumed exactly once, after a checkpoint holding it.
    records = await store.list_inputs("wait-1", include_consumed=True)
    assert sorted((r.path, r.consumed) for r in records) == [("finance", True), ("legal", True)]
    assert await store.list_inputs("wait-1") == []


async def test_an_unanswered_wait_times_out_into_pending_input(store: BaseStore) -> None:
    flow = approvals(store, [])
    result = await flow.run({"db": "d"}, run_id="t1", wait_for_input_seconds=0.2)
    assert result.status is CheckpointStatus.PENDING_INPUT
    assert sorted(p.path for p in result.pending_inputs) == ["finance", "legal"]
    cp = await store.get("t1")
    assert cp is not None and cp.status is CheckpointStatus.PENDING_INPUT
    # A later resume picks up an answer submitted meanwhile.
    await store.submit_input("t1", "legal", {"approved": True})
    await store.submit_input("t1", "finance", {"approved": True})
    done = await flow.resume("t1")
    assert done.output == {"ship": "legal=True finance=True"}


async def test_an_invalid_stored_answer_is_ignored_while_waiting(store: BaseStore) -> None:
    asked: list[str] = []

    def approve(inputs: dict[str, Any], ctx: NodeContext) -> bool:
        asked.append("ask")
        return bool(ctx.interrupt("ok?", schema=APPROVAL)["approved"])

    flow = Flow(
        id="one",
        nodes=[FunctionNode(id="gate", fn=approve)],
        checkpoint=CheckpointConfig(enabled=True, store=store, durability="exit"),
    )

    async def human() -> None:
        while True:
            if await store.get_run("bad-1") is not None:
                break
            await asyncio.sleep(0.01)
        await store.submit_input("bad-1", "gate", {"approved": "yes"})

    helper = asyncio.create_task(human())
    result = await flow.run(None, run_id="bad-1", wait_for_input_seconds=0.5)
    await helper
    assert result.status is CheckpointStatus.PENDING_INPUT
    assert asked == ["ask"]
    # In "exit" durability the wait itself wrote the checkpoint that showed the question.
    statuses = [s.status for s in await store.list_checkpoints("bad-1", limit=100)]
    assert statuses == [CheckpointStatus.PENDING_INPUT, CheckpointStatus.PENDING_INPUT]


async def test_a_waiting_agent_tool_gets_its_answer_in_process(store: BaseStore) -> None:
    def approve_refund(amount: float, ctx: NodeContext) -> str:
        """Ask for approval."""
        answer = ctx.interrupt(f"Refund {amount}?", schema=APPROVAL)
        return "refunded" if answer["approved"] else "declined"

    model = ScriptedChat(
        [{"tool_calls": [{"name": "approve_refund", "arguments": {"amount": 10}}]}, "done"]
    )
    flow = Flow(
        id="agent-wait",
        nodes=[Agent(id="triage", model=model, tools=[approve_refund])],
        checkpoint=CheckpointConfig(enabled=True, store=store),
        wait_for_input_seconds=30,
    )

    async def human() -> None:
        while True:
            info = await store.get_run("aw")
            if info is not None and info.pending_inputs:
                await store.submit_input("aw", info.pending_inputs[0], {"approved": True})
                return
            await asyncio.sleep(0.01)

    helper = asyncio.create_task(human())
    result = await flow.run({"question": "refund"}, run_id="aw")
    await helper
    assert result.status is CheckpointStatus.COMPLETED
    assert model.calls == 2
    messages = result.output["triage"]["messages"]
    assert messages[-2] == {"role": "tool", "tool_call_id": "call_0_0", "content": "refunded"}
    cp = await store.get("aw")
    assert cp is not None and cp.node_states["triage"].status is NodeStatus.SUCCEEDED


def test_bad_human_input_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        HumanInput(id="h", prompt="?", schema={"type": "nonsense"})
    with pytest.raises(ConfigError, match="must be a number >= 0"):
        Flow(id="f", nodes=[HumanInput(id="h", prompt="?")], wait_for_input_seconds=-1)


async def test_an_unfillable_prompt_fails_the_node_with_a_clear_message() -> None:
    from flows import NodeExecutionError

    flow = Flow(id="f", nodes=[HumanInput(id="h", prompt="Approve {plan[title]}?")])
    with pytest.raises(NodeExecutionError, match=r"cannot be filled from the inputs"):
        await flow.run({})


async def test_waiting_works_at_depth_and_for_map_iterations(store: BaseStore) -> None:
    from flows import Map, SubFlow

    asked: list[str] = []

    def check(inputs: dict[str, Any], ctx: NodeContext) -> str:
        asked.append(ctx.path)
        return f"{inputs['item']}:{ctx.interrupt('ok?', schema={'type': 'boolean'})}"

    inner = Flow(
        id="inner",
        nodes=[Map(id="docs", over="input", node=FunctionNode(id="check", fn=check))],
    )
    flow = Flow(
        id="deep-wait",
        nodes=[SubFlow(id="vet", flow=inner)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
        wait_for_input_seconds=30,
    )

    async def human() -> None:
        answered: set[str] = set()
        while len(answered) < 2:
            info = await store.get_run("deep")
            for path in info.pending_inputs if info is not None else []:
                if path not in answered:
                    await store.submit_input("deep", path, path.endswith("[0]/check"))
                    answered.add(path)
            await asyncio.sleep(0.01)

    helper = asyncio.create_task(human())
    try:
        result = await flow.run(["a", "b"], run_id="deep")
    finally:
        await helper
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"vet": {"docs": ["a:True", "b:False"]}}
    assert sorted(set(asked)) == ["vet/docs[0]/check", "vet/docs[1]/check"]
    assert all(r.consumed for r in await store.list_inputs("deep", include_consumed=True))
