"""Map: order, bounded concurrency, resume per iteration (RFC 27), human input per item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, NodeStatus
from checkpoint.errors import ConfigError
from checkpoint.store import BaseStore
from checkpoint.stores.sqlite import SQLiteStore
from flows import Flow, FunctionNode, HumanInput, Map, NodeContext, NodeExecutionError
from flows.map import MapIterationError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = SQLiteStore(tmp_path / "ckpts.db")
    yield store
    await store.close()


def config(store: BaseStore) -> CheckpointConfig:
    return CheckpointConfig(enabled=True, store=store, max_checkpoints=1000)


async def test_results_keep_input_order_and_concurrency_stays_bounded() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def work(inputs: dict[str, Any]) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            release.set()  # let everyone go once the bound is reached
        await release.wait()
        # later items finish first, so completion order differs from input order
        for _ in range(10 - inputs["index"]):
            await asyncio.sleep(0)
        running -= 1
        return f"{inputs['index']}:{inputs['item']}:{inputs['input']['tag']}"

    flow = Flow(
        id="order",
        nodes=[
            Map(
                id="m",
                over="input.docs",
                node=FunctionNode(id="w", fn=work),
                max_concurrency=3,
            )
        ],
    )
    docs = [f"d{i}" for i in range(10)]
    result = await flow.run({"docs": docs, "tag": "t"})
    assert result.output == {"m": [f"{i}:d{i}:t" for i in range(10)]}
    assert peak == 3


async def test_a_failure_at_the_4th_item_resumes_only_the_7_left(store: BaseStore) -> None:
    """RFC behaviour 27: 3 succeed, the 4th fails; resume runs 7; output order = input order."""
    executions: list[int] = []
    broken = {"flag": True}

    def work(inputs: dict[str, Any]) -> int:
        executions.append(inputs["index"])
        if inputs["index"] == 3 and broken["flag"]:
            raise ValueError("item 3 is malformed")
        return int(inputs["item"]) * 10

    def build() -> Flow:
        return Flow(
            id="ten",
            nodes=[
                Map(
                    id="m",
                    over=lambda inputs: inputs["input"]["items"],
                    node=FunctionNode(id="w", fn=work),
                    max_concurrency=1,
                )
            ],
            checkpoint=config(store),
        )

    with pytest.raises(NodeExecutionError, match="iteration 3 failed") as caught:
        await build().run({"items": list(range(10))}, run_id="m1")
    assert isinstance(caught.value.__cause__, MapIterationError)
    assert executions == [0, 1, 2, 3]
    cp = await store.get("m1")
    assert cp is not None
    state = cp.node_states["m"].internal_state
    assert state["completed"] == {0: 0, 1: 10, 2: 20}  # int keys after the round trip
    assert state["failed"][3]["type"] == "ValueError"
    assert state["items"] == list(range(10))

    broken["flag"] = False
    executions.clear()
    result = await build().resume("m1")
    assert sorted(executions) == [3, 4, 5, 6, 7, 8, 9]
    assert result.output == {"m": [i * 10 for i in range(10)]}


async def test_running_iterations_finish_and_are_saved_before_the_node_fails(
    store: BaseStore,
) -> None:
    gate = asyncio.Event()
    all_started = asyncio.Event()
    started: list[int] = []

    async def work(inputs: dict[str, Any]) -> int:
        i: int = inputs["index"]
        started.append(i)
        if len(started) == 4:
            all_started.set()
        if i == 0:
            await all_started.wait()
            gate.set()
            raise RuntimeError("first item fails fast")
        await gate.wait()
        return i

    flow = Flow(
        id="drain",
        nodes=[Map(id="m", over="input", node=FunctionNode(id="w", fn=work), max_concurrency=4)],
        checkpoint=config(store),
    )
    with pytest.raises(NodeExecutionError, match="first item fails fast"):
        await flow.run(list(range(8)), run_id="d1")
    cp = await store.get("d1")
    assert cp is not None
    # Items 1-3 were already running: they finished and were saved; nothing new started.
    assert cp.node_states["m"].internal_state["completed"] == {1: 1, 2: 2, 3: 3}
    assert sorted(started) == [0, 1, 2, 3]


async def test_the_saved_items_are_used_on_resume(store: BaseStore) -> None:
    produced: list[int] = []

    def over(inputs: dict[str, Any]) -> list[int]:
        produced.append(1)
        return [len(produced) * 100 + i for i in range(3)]  # different on every call

    broken = {"flag": True}

    def work(inputs: dict[str, Any]) -> int:
        if inputs["index"] == 2 and broken["flag"]:
            raise RuntimeError("boom")
        return int(inputs["item"])

    def build() -> Flow:
        return Flow(
            id="items",
            nodes=[Map(id="m", over=over, node=FunctionNode(id="w", fn=work), max_concurrency=1)],
            checkpoint=config(store),
        )

    with pytest.raises(NodeExecutionError):
        await build().run(None, run_id="i1")
    broken["flag"] = False
    result = await build().resume("i1")
    assert result.output == {"m": [100, 101, 102]}
    assert produced == [1]


async def test_iterations_ask_humans_at_indexed_paths_and_resume_one_by_one(
    store: BaseStore,
) -> None:
    ran: list[int] = []

    def check(inputs: dict[str, Any], ctx: NodeContext) -> str:
        ran.append(inputs["index"])
        if inputs["item"] % 2:
            ok = ctx.interrupt(f"publish {inputs['item']}?", schema={"type": "boolean"})
            return f"{inputs['item']}:{'yes' if ok else 'no'}"
        return f"{inputs['item']}:auto"

    def build() -> Flow:
        return Flow(
            id="hitl-map",
            nodes=[Map(id="docs", over="input", node=FunctionNode(id="check", fn=check))],
            checkpoint=config(store),
        )

    first = await build().run([0, 1, 2, 3], run_id="h1")
    assert first.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in first.pending_inputs] == ["docs[1]/check", "docs[3]/check"]
    assert sorted(ran) == [0, 1, 2, 3]

    ran.clear()
    second = await build().resume("h1", inputs={"docs[3]/check": False})
    assert second.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in second.pending_inputs] == ["docs[1]/check"]
    assert sorted(ran) == [1, 3]  # completed items 0 and 2 did not run again

    ran.clear()
    third = await build().resume("h1", inputs={"docs[1]/check": True})
    assert third.output == {"docs": ["0:auto", "1:yes", "2:auto", "3:no"]}
    assert ran == [1]


async def test_a_flow_per_item_runs_as_a_sub_flow_and_pauses_inside(store: BaseStore) -> None:
    prepared: list[int] = []

    def prepare(inputs: dict[str, Any]) -> str:
        prepared.append(inputs["input"]["index"])
        return f"draft {inputs['input']['item']}"

    per_item = Flow(
        id="per-item",
        nodes=[
            FunctionNode(id="prepare", fn=prepare),
            HumanInput(id="review", prompt="Approve {prepare}?", depends=["prepare"]),
        ],
    )
    flow = Flow(
        id="outer",
        nodes=[Map(id="m", over="input", node=per_item, max_concurrency=2)],
        checkpoint=config(store),
    )
    first = await flow.run(["a", "b"], run_id="f1")
    assert [(p.path, p.prompt) for p in first.pending_inputs] == [
        ("m[0]/review", "Approve draft a?"),
        ("m[1]/review", "Approve draft b?"),
    ]
    cp = await store.get("f1")
    assert cp is not None
    inner = cp.node_states["m"].internal_state["children"]["[0]"]["node_states"]
    assert inner["prepare"]["status"] == "succeeded"
    assert inner["review"]["status"] == "waiting"
    done = await flow.resume("f1", inputs={"m[0]/review": "ok a", "m[1]/review": "ok b"})
    assert done.output == {"m": [{"review": "ok a"}, {"review": "ok b"}]}
    assert sorted(prepared) == [0, 1]
    final = await store.get("f1")
    assert final is not None and final.node_states["m"].status is NodeStatus.SUCCEEDED


async def test_bad_configuration_and_bad_items_are_clear_errors() -> None:
    node = FunctionNode(id="w", fn=lambda i: i)
    with pytest.raises(ConfigError, match="max_concurrency"):
        Map(id="m", over="input", node=node, max_concurrency=0)
    with pytest.raises(ConfigError, match="over must be"):
        Map(id="m", over=3, node=node)  # type: ignore[arg-type]
    with pytest.raises(NodeExecutionError, match=r"input has no 'docs' \(path 'input.docs'"):
        await Flow(id="x", nodes=[Map(id="m", over="input.docs", node=node)]).run({"doc": 1})
    with pytest.raises(NodeExecutionError, match="must give a list of items, got int"):
        await Flow(id="x", nodes=[Map(id="m", over="input", node=node)]).run(5)
    empty = await Flow(id="x", nodes=[Map(id="m", over="input", node=node)]).run([])
    assert empty.output == {"m": []}


def test_the_fingerprint_depends_on_what_the_iterations_run() -> None:
    a = Flow(id="f", nodes=[Map(id="m", over="input", node=FunctionNode(id="w", fn=len))])
    b = Flow(id="f", nodes=[Map(id="m", over="input", node=HumanInput(id="w", prompt="?"))])
    inner = Flow(id="inner", nodes=[FunctionNode(id="w", fn=len)])
    c = Flow(id="f", nodes=[Map(id="m", over="input", node=inner)])
    assert len({a.graph_fingerprint, b.graph_fingerprint, c.graph_fingerprint}) == 3
