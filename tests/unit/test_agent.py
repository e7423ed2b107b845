"""Agent: the tool loop, a checkpoint per loop, resume mid-loop, the tool cache (RFC 24-26, 32)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, NodeStatus
from checkpoint.errors import ConfigError
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from flows import Agent, Flow, FunctionNode, NodeContext, NodeExecutionError
from flows.agent import AgentError, MaxLoopsExceededError
from flows.llm import ScriptedChat

APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
    "hQGAhKmMIQAAAABJRU5ErkJggg=="
)


class FailingModel:
    """A ScriptedChat that raises on its n-th call (a provider outage in the middle of a run)."""

    def __init__(self, script: list[Any], fail_on_call: int) -> None:
        self.inner = ScriptedChat(script)
        self.fail_on_call = fail_on_call
        self.calls = 0

    async def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("the model provider is down")
        return await self.inner.chat(messages, tools)


def loop_script(loops: int) -> list[Any]:
    """``loops - 1`` loops that each look something up, then a final answer."""
    script: list[Any] = [
        {"tool_calls": [{"name": "lookup", "arguments": {"key": f"k{i}"}}]}
        for i in range(loops - 1)
    ]
    script.append({"content": f"done after {loops} loops"})
    return script


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = FileStore(tmp_path / "ckpts")
    yield store
    await store.close()


def config(store: BaseStore) -> CheckpointConfig:
    return CheckpointConfig(enabled=True, store=store, max_checkpoints=1000)


async def test_the_agent_calls_tools_then_answers() -> None:
    calls: list[str] = []

    def search(q: str) -> str:
        """Search the knowledge base."""
        calls.append(q)
        return f"policy for {q}: 30 days"

    model = ScriptedChat(
        [
            {"tool_calls": [{"name": "search", "arguments": {"q": "refund"}}]},
            {"content": "Refunds are possible within 30 days."},
        ]
    )
    agent = Agent(id="triage", model=model, tools=[search], system="You help.")
    result = await Flow(id="support", nodes=[agent]).run({"question": "Can I get a refund?"})
    out = result.output["triage"]
    assert out["answer"] == "Refunds are possible within 30 days."
    assert out["loops"] == 2
    assert calls == ["refund"]
    assert model.calls == 2
    assert [m["role"] for m in out["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert out["messages"][1]["content"] == "Can I get a refund?"
    assert out["messages"][3] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": "policy for refund: 30 days",
    }


async def test_each_tool_call_is_saved_as_pending_before_it_runs(store: BaseStore) -> None:
    seen: list[Any] = []

    async def lookup(key: str) -> str:
        """Look a key up."""
        cp = await store.get("pending-1")
        assert cp is not None
        seen.append(cp.node_states["agent"].internal_state)
        return key.upper()

    agent = Agent(id="agent", model=ScriptedChat(loop_script(3)), tools=[lookup])
    flow = Flow(id="loops", nodes=[agent], checkpoint=config(store))
    result = await flow.run({"question": "go"}, run_id="pending-1")
    assert result.output["agent"]["loops"] == 3
    # While loop k's tool runs, the latest checkpoint has the model's reply and the call.
    assert [s["pending_call"]["arguments"] for s in seen] == [{"key": "k0"}, {"key": "k1"}]
    assert [s["pending_call"]["n"] for s in seen] == [1, 2]
    assert [s["loop"] for s in seen] == [0, 1]
    assert [s["messages"][-1]["role"] for s in seen] == ["assistant", "assistant"]
    # One save per tool call and one at the end of each tool loop.
    summaries = await store.list_checkpoints("pending-1", limit=1000)
    events = [(await store.get("pending-1", s.seq)) for s in sorted(summaries, key=lambda s: s.seq)]
    mid = [
        cp.node_states["agent"].internal_state["loop"]
        for cp in events
        if cp is not None and cp.metadata.get("event") == "state"
    ]
    assert mid == [0, 1, 1, 2]


async def test_resume_after_loop_5_of_15_repeats_no_model_call_and_keeps_vision_messages(
    store: BaseStore,
) -> None:
    """RFC behaviour 24: text and vision messages are identical; loops 1-5 are not re-run."""
    lookups: list[str] = []

    def lookup(key: str) -> str:
        """Look a key up."""
        lookups.append(key)
        return f"value of {key}"

    def vision_prompt(inputs: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"type": "text", "text": inputs["input"]["question"]},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
        ]

    def build(model: Any, flow_store: Any) -> Flow:
        agent = Agent(id="agent", model=model, tools=[lookup], prompt=vision_prompt, max_loops=15)
        return Flow(id="vision", nodes=[agent], checkpoint=config(flow_store))

    reference = await build(ScriptedChat(loop_script(15)), store).run(
        {"question": "what is this?"}, run_id="reference"
    )
    lookups.clear()

    failing = FailingModel(loop_script(15), fail_on_call=6)
    with pytest.raises(NodeExecutionError, match="provider is down"):
        await build(failing, store).run({"question": "what is this?"}, run_id="v")
    assert lookups == [f"k{i}" for i in range(5)]
    cp = await store.get("v")
    assert cp is not None and cp.status is CheckpointStatus.FAILED
    state = cp.node_states["agent"].internal_state
    assert state["loop"] == 5 and state["current"] is None
    assert state["messages"][0]["content"][1]["image_url"]["url"] == PIXEL

    fresh = ScriptedChat(loop_script(15))
    result = await build(fresh, store).resume("v")
    assert fresh.calls == 10  # loops 6..15 only
    assert lookups == [f"k{i}" for i in range(14)]  # k0..k4 before, k5..k13 after: none twice
    assert result.output == reference.output
    assert result.output["agent"]["loops"] == 15


async def test_a_cached_tool_call_is_not_invoked_again(store: BaseStore) -> None:
    """RFC behaviour 25: the first call's result is cached; the resume runs only the second."""
    invoked: list[str] = []
    broken = {"flag": True}

    def first(x: int) -> str:
        """First tool."""
        invoked.append("first")
        return ""  # a falsy result must count as cached too

    def second(x: int) -> int:
        """Second tool."""
        invoked.append("second")
        if broken["flag"]:
            raise OSError("disk full")
        return x * 2

    script: list[Any] = [
        {
            "tool_calls": [
                {"name": "first", "arguments": {"x": 1}},
                {"name": "second", "arguments": {"x": 2}},
            ]
        },
        "finished",
    ]

    def build(model: ScriptedChat) -> Flow:
        agent = Agent(id="a", model=model, tools=[first, second], tool_errors="raise")
        return Flow(id="cache", nodes=[agent], checkpoint=config(store))

    model = ScriptedChat(script)
    with pytest.raises(NodeExecutionError, match="disk full"):
        await build(model).run({"question": "q"}, run_id="c1")
    assert invoked == ["first", "second"]
    broken["flag"] = False
    again = ScriptedChat(script)
    result = await build(again).resume("c1")
    assert invoked == ["first", "second", "second"]
    assert again.calls == 1  # loop 1's reply was saved: only the final answer is asked for
    messages = result.output["a"]["messages"]
    assert [m.get("content") for m in messages if m["role"] == "tool"] == ["", "4"]


async def test_tool_cache_and_steps_round_trip_with_integer_keys(store: BaseStore) -> None:
    """RFC behaviour 26: loop keys stay ints, cached values keep their types."""

    def lookup(key: str) -> dict[str, Any]:
        """Look a key up."""
        return {"key": key, "raw": key.encode(), "n": 1}

    flow = Flow(
        id="steps",
        nodes=[Agent(id="agent", model=ScriptedChat(loop_script(3)), tools=[lookup])],
        checkpoint=config(store),
    )
    await flow.run({"question": "go"}, run_id="s1")
    cp = await store.get("s1")  # decoded from the stored wire bytes
    assert cp is not None
    state = cp.node_states["agent"].internal_state
    assert sorted(state["steps"]) == [1, 2, 3]
    assert all(isinstance(k, int) for k in state["steps"])
    assert state["steps"][3]["model_output"] == "done after 3 loops"
    assert state["tool_cache"]["call_0_0"] == {"key": "k0", "raw": b"k0", "n": 1}
    assert state["call_numbers"] == {"call_0_0": 1, "call_1_0": 2}
    assert state["usage"]["total_tokens"] > 0


async def test_max_loops_fails_the_node_with_a_clear_error() -> None:
    agent = Agent(
        id="spinner",
        model=ScriptedChat(loop_script(10)),
        tools=[FunctionNode(id="lookup", fn=lambda inputs: "x")],
        max_loops=3,
    )
    with pytest.raises(NodeExecutionError) as caught:
        await Flow(id="spin", nodes=[agent]).run({"question": "q"})
    assert isinstance(caught.value.__cause__, MaxLoopsExceededError)
    assert "max_loops=3" in str(caught.value)


async def test_tool_problems_are_reported_to_the_model() -> None:
    def divide(a: int, b: int) -> float:
        """Divide a by b."""
        return a / b

    model = ScriptedChat(
        [
            {
                "tool_calls": [
                    {"name": "divide", "arguments": {"a": 1, "b": 0}},
                    {"name": "divide", "arguments": {"a": "one", "b": 1}},
                    {"name": "nosuch", "arguments": {}},
                ]
            },
            "gave up",
        ]
    )
    result = await Flow(id="errs", nodes=[Agent(id="a", model=model, tools=[divide])]).run(
        {"question": "q"}
    )
    contents = [m["content"] for m in result.output["a"]["messages"] if m["role"] == "tool"]
    assert contents[0] == "error: ZeroDivisionError: division by zero"
    assert contents[1].startswith("error: invalid arguments for tool 'divide' at a:")
    assert contents[2].startswith("error: unknown tool 'nosuch'; available tools: ['divide']")


async def test_a_node_can_be_a_tool_and_gets_the_arguments() -> None:
    seen: list[Any] = []

    def fetch(inputs: dict[str, Any], ctx: NodeContext) -> str:
        seen.append((inputs, ctx.path))
        return f"fetched {inputs['arguments']['url']}"

    node = FunctionNode(id="fetch", fn=fetch)
    fetch_script: list[Any] = [{"tool_calls": [{"name": "fetch", "arguments": {"url": "u"}}]}, "ok"]
    model = ScriptedChat(fetch_script)
    agent = Agent(id="web", model=model, tools=[node])
    assert agent.tool_schemas[0]["function"]["name"] == "fetch"
    await Flow(id="nodes", nodes=[agent]).run({"question": "q"})
    assert seen == [({"input": {"question": "q"}, "arguments": {"url": "u"}}, "web/tools/fetch#1")]


async def test_repeated_tool_call_ids_are_made_unique() -> None:
    counter: list[int] = []

    def tick() -> int:
        """Count."""
        counter.append(1)
        return len(counter)

    same_id: dict[str, Any] = {"tool_calls": [{"id": "call_0", "name": "tick", "arguments": {}}]}
    model = ScriptedChat([same_id, same_id, "two ticks"])
    result = await Flow(id="ids", nodes=[Agent(id="a", model=model, tools=[tick])]).run(
        {"question": "q"}
    )
    assert len(counter) == 2  # the second call was not mistaken for a cached one
    tools = [m for m in result.output["a"]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tools] == ["1", "2"]
    assert tools[0]["tool_call_id"] != tools[1]["tool_call_id"]


async def test_a_tool_asks_a_human_and_the_agent_resumes_inside_the_same_loop(
    store: BaseStore,
) -> None:
    """RFC behaviour 32: the paused loop continues; earlier tool calls are not repeated."""
    invoked: list[str] = []

    def search(q: str) -> str:
        """Search."""
        invoked.append(f"search:{q}")
        return "refund policy: yes"

    def approve_refund(amount: float, ctx: NodeContext) -> str:
        """Ask a human to approve a refund."""
        invoked.append("approve")
        answer = ctx.interrupt(f"Refund {amount}?", schema=APPROVAL)
        return "refunded" if answer["approved"] else "declined"

    script: list[Any] = [
        {"tool_calls": [{"name": "search", "arguments": {"q": "a"}}]},
        {"tool_calls": [{"name": "search", "arguments": {"q": "b"}}]},
        {
            "tool_calls": [
                {"name": "search", "arguments": {"q": "c"}},
                {"name": "approve_refund", "arguments": {"amount": 42.5}},
            ]
        },
        "The refund was processed.",
    ]

    def build(model: ScriptedChat) -> Flow:
        agent = Agent(id="triage", model=model, tools=[search, approve_refund])
        return Flow(id="refunds", nodes=[agent], checkpoint=config(store))

    first_model = ScriptedChat(script)
    first = await build(first_model).run({"question": "refund please"}, run_id="h1")
    assert first.status is CheckpointStatus.PENDING_INPUT
    [pending] = first.pending_inputs
    assert pending.path == "triage/tools/approve_refund#4"
    assert pending.prompt == "Refund 42.5?"
    assert first_model.calls == 3

    # A reminder resume without the answer asks again, at the same path.
    model = ScriptedChat(script)
    again = await build(model).resume("h1")
    assert [p.path for p in again.pending_inputs] == ["triage/tools/approve_refund#4"]
    assert model.calls == 0

    model = ScriptedChat(script)
    done = await build(model).resume("h1", inputs={pending.path: {"approved": True}})
    assert done.status is CheckpointStatus.COMPLETED
    assert model.calls == 1  # only the final answer
    assert invoked == ["search:a", "search:b", "search:c", "approve", "approve", "approve"]
    tool_msgs = [m for m in done.output["triage"]["messages"] if m["role"] == "tool"]
    assert tool_msgs[-1]["content"] == "refunded"
    cp = await store.get("h1")
    assert cp is not None and cp.node_states["triage"].status is NodeStatus.SUCCEEDED


async def test_prompt_and_configuration_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="max_loops"):
        Agent(id="a", model=ScriptedChat(["x"]), max_loops=0)
    with pytest.raises(ConfigError, match="must implement ChatModel"):
        Agent(id="a", model=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="two tools named"):

        def t() -> str:
            """T."""
            return ""

        Agent(id="a", model=ScriptedChat(["x"]), tools=[t, t])
    with pytest.raises(ConfigError, match="has no type hint"):

        def untyped(q):  # type: ignore[no-untyped-def]
            return q

        Agent(id="a", model=ScriptedChat(["x"]), tools=[untyped])
    agent = Agent(id="a", model=ScriptedChat(["x"]), prompt="{input[missing]}")
    with pytest.raises(NodeExecutionError) as caught:
        await Flow(id="p", nodes=[agent]).run({"question": "q"})
    assert isinstance(caught.value.__cause__, AgentError)
    assert "cannot be filled from the inputs" in str(caught.value)


async def test_binary_files_kept_by_a_tool_are_byte_identical_after_restore(
    store: BaseStore,
) -> None:
    """RFC behaviour 33: bytes in a tool's saved state come back exactly, across a pause."""
    blob = bytes(range(256)) * 64 + b"\x00\xff"
    seen: list[bytes] = []

    def render_pdf(title: str, ctx: NodeContext) -> str:
        """Render a document, then ask a human before sending it."""
        files = ctx.state.setdefault("files", {})
        if "report.pdf" not in files:
            files["report.pdf"] = blob  # the expensive artifact, made once
        ok = ctx.interrupt("Send the report?", schema={"type": "boolean"})
        seen.append(files["report.pdf"])
        return f"sent {len(files['report.pdf'])} bytes" if ok else "kept"

    script: list[Any] = [
        {"tool_calls": [{"name": "render_pdf", "arguments": {"title": "Q3"}}]},
        "sent",
    ]

    def build() -> Flow:
        agent = Agent(id="docs", model=ScriptedChat(script), tools=[render_pdf])
        return Flow(id="files", nodes=[agent], checkpoint=config(store))

    first = await build().run({"question": "send the report"}, run_id="b1")
    [pending] = first.pending_inputs
    cp = await store.get("b1")
    assert cp is not None
    tool_state = cp.node_states["docs"].internal_state["children"]["tools"]["children"]
    assert tool_state["render_pdf#1"]["files"]["report.pdf"] == blob
    done = await build().resume("b1", inputs={pending.path: True})
    assert done.status is CheckpointStatus.COMPLETED
    assert seen == [blob]
    assert type(seen[0]) is bytes
