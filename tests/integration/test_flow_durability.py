"""Durability modes and save failures: (e) disabled = no store call, (f) async never drops,
(g) failing store warn/raise, plus exit mode, mid-node saves and switches."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, NodeStatus
from checkpoint.models import Durability
from checkpoint.store import BaseStore
from flows import CheckpointSaveError, Flow, FunctionNode, NodeContext, NodeExecutionError
from tests.integration.flow_scripts.support import (
    LOCAL_STORES,
    FailingStore,
    ForbiddenStore,
    SlowStore,
    make_store,
    seqs_of,
)


@pytest.fixture(params=LOCAL_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = make_store(str(request.param), tmp_path)
    yield store
    await store.close()


async def noop(inputs: dict[str, Any]) -> int:
    return 1


def chain(n: int, fn: Any = noop) -> list[FunctionNode]:
    return [FunctionNode(id=f"n{i}", fn=fn, depends=[f"n{i - 1}"] if i else []) for i in range(n)]


@pytest.mark.parametrize(
    "cfg",
    [
        None,
        CheckpointConfig(enabled=False),
        CheckpointConfig(enabled=True),
    ],
    ids=["no-config", "disabled", "no-store"],
)
async def test_disabled_checkpointing_never_calls_the_store(cfg: CheckpointConfig | None) -> None:
    store = ForbiddenStore()
    if cfg is not None and not cfg.enabled:
        cfg = cfg.model_copy(update={"store": store})

    def ask(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        ctx.save_state_sync({"k": 1})
        return ctx.interrupt("ok?")

    flow = Flow(
        id="f", nodes=[*chain(3), FunctionNode(id="ask", fn=ask, depends=["n2"])], checkpoint=cfg
    )
    result = await flow.run({"x": 1})
    assert result.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in result.pending_inputs] == ["ask"]
    assert store.touched == []


async def test_async_durability_never_drops_under_a_slow_store_and_flushes_before_return() -> None:
    store = SlowStore(delay=0.002)
    flow = Flow(
        id="f",
        nodes=chain(50),
        checkpoint=CheckpointConfig(
            enabled=True, store=store, durability="async", async_queue_size=2, max_checkpoints=None
        ),
    )
    result = await flow.run(None, run_id="slow")
    # Everything is stored by the time run() returns: start + 50 nodes + completed.
    assert result.seq == 52
    assert store.order == list(range(1, 53))
    assert await seqs_of(store, "slow") == list(range(1, 53))
    assert store.max_in_flight == 1
    cp = await store.get("slow")
    assert cp is not None and cp.status is CheckpointStatus.COMPLETED


async def test_async_durability_flushes_before_a_failure_is_raised() -> None:
    store = SlowStore(delay=0.002)

    async def boom(inputs: dict[str, Any]) -> None:
        raise ValueError("boom")

    flow = Flow(
        id="f",
        nodes=[*chain(10), FunctionNode(id="bad", fn=boom, depends=["n9"])],
        checkpoint=CheckpointConfig(
            enabled=True, store=store, durability="async", async_queue_size=2
        ),
    )
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="af")
    assert caught.value.seq == 13  # start + 10 + bad + failed
    assert store.order == list(range(1, 14))


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_each_durability_mode_resumes_correctly(
    store: BaseStore, durability: Durability
) -> None:
    ran: list[str] = []

    def node(name: str) -> Any:
        def run(inputs: dict[str, Any]) -> str:
            ran.append(name)
            if name == "n3" and ran.count("n3") == 1:
                raise RuntimeError("n3 crashed")
            return name

        return run

    nodes = [
        FunctionNode(id=f"n{i}", fn=node(f"n{i}"), depends=[f"n{i - 1}"] if i else [])
        for i in range(5)
    ]
    flow = Flow(
        id="f",
        nodes=nodes,
        checkpoint=CheckpointConfig(enabled=True, store=store, durability=durability),
    )
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="d1")
    seqs = await seqs_of(store, "d1")
    if durability == "exit":
        assert seqs == [1]  # only the failure checkpoint
    else:
        assert seqs == list(range(1, 7))  # start, n0..n2, n3 failed, failed
    assert caught.value.seq == max(await seqs_of(store, "d1"))
    result = await flow.resume("d1")
    assert ran == ["n0", "n1", "n2", "n3", "n3", "n4"]
    assert result.output == {"n4": "n4"}
    assert (await store.get("d1")).status is CheckpointStatus.COMPLETED  # type: ignore[union-attr]


async def test_failing_store_with_warn_completes_degraded_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore(fail_from=2)  # start and first node saved, then the backend dies
    flow = Flow(id="f", nodes=chain(4), checkpoint=CheckpointConfig(enabled=True, store=store))
    with caplog.at_level(logging.WARNING, logger="flows"):
        result = await flow.run(None, run_id="w")
    assert result.status is CheckpointStatus.COMPLETED and result.output == {"n3": 1}
    assert result.degraded is True
    assert result.seq == 2  # the last checkpoint that was actually saved
    assert "the run continues, degraded" in caplog.text
    assert "backend is down" in caplog.text


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_failing_store_with_raise_is_fatal(durability: Durability) -> None:
    ran: list[int] = []

    def node(inputs: dict[str, Any]) -> int:
        ran.append(1)
        return 1

    store = FailingStore(fail_from=1)
    flow = Flow(
        id="f",
        nodes=chain(6, node),
        checkpoint=CheckpointConfig(
            enabled=True,
            store=store,
            on_save_error="raise",
            durability=durability,
        ),
    )
    with pytest.raises(CheckpointSaveError, match="could not be saved") as caught:
        await flow.run(None, run_id="x")
    assert isinstance(caught.value.__cause__, Exception)
    assert len(ran) < 6  # the run stopped


async def test_mid_node_saves_checkpoint_state_and_resume_continues_from_it(
    store: BaseStore,
) -> None:
    done_items: list[int] = []

    async def loop(inputs: dict[str, Any], ctx: NodeContext) -> int:
        start = ctx.state.get("next", 0)
        for i in range(start, 5):
            done_items.append(i)
            if i == 3 and ctx.attempt == 1:
                raise RuntimeError("crash at item 3")
            ctx.state["next"] = i + 1
            await ctx.save_state()
        return len(done_items)

    def sync_loop(inputs: dict[str, Any], ctx: NodeContext) -> str:
        ctx.save_state_sync({"from_thread": True})
        return "ok"

    flow = Flow(
        id="f",
        nodes=[FunctionNode(id="loop", fn=loop), FunctionNode(id="t", fn=sync_loop)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="mid")
    cp = await store.get("mid")
    assert cp is not None
    assert cp.node_states["loop"].status is NodeStatus.FAILED
    assert cp.node_states["loop"].internal_state == {"next": 3}
    assert cp.node_states["t"].internal_state == {"from_thread": True}
    running = [
        c
        for s in await seqs_of(store, "mid")
        if (c := await store.get("mid", s)) is not None and c.metadata.get("event") == "state"
    ]
    assert len(running) == 4  # three loop items + one from the thread
    assert all(c.node_states[c.metadata["node_id"]].status is NodeStatus.RUNNING for c in running)
    result = await flow.resume("mid")
    assert done_items == [0, 1, 2, 3, 3, 4]  # items 0-2 were not redone
    assert result.output["loop"] == 6


async def test_switches_on_start_after_node_and_mid_node_off(store: BaseStore) -> None:
    async def node(inputs: dict[str, Any], ctx: NodeContext) -> int:
        await ctx.save_state({"x": 1})
        return 1

    flow = Flow(
        id="f",
        nodes=chain(3, node),
        checkpoint=CheckpointConfig(
            enabled=True, store=store, on_start=False, after_node=False, mid_node=False
        ),
    )
    result = await flow.run(None, run_id="quiet")
    assert await seqs_of(store, "quiet") == [1]
    cp = await store.get("quiet")
    assert cp is not None and cp.status is CheckpointStatus.COMPLETED and result.seq == 1
    assert cp.completed_node_ids() == ["n0", "n1", "n2"]

    failing = Flow(
        id="g",
        nodes=[FunctionNode(id="bad", fn=_raise)],
        checkpoint=CheckpointConfig(enabled=True, store=store, on_failure=False, on_start=False),
    )
    with pytest.raises(NodeExecutionError) as caught:
        await failing.run(None, run_id="nofail")
    # Only the after-node checkpoint of the failed node; no failed-status checkpoint.
    assert caught.value.seq == 1
    cp = await store.get("nofail")
    assert cp is not None and cp.status is CheckpointStatus.ACTIVE


def _raise(inputs: dict[str, Any]) -> None:
    raise ValueError("nope")


async def test_unencodable_output_warns_and_the_node_runs_again_on_resume(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def odd(inputs: dict[str, Any]) -> Any:
        ran.append("odd")
        return object() if len(ran) == 1 else "fine"

    def then_fail(inputs: dict[str, Any]) -> str:
        ran.append("next")
        if ran.count("next") == 1:
            raise RuntimeError("later failure")
        return "ok"

    flow = Flow(
        id="f",
        nodes=[
            FunctionNode(id="odd", fn=odd),
            FunctionNode(id="next", fn=then_fail, depends=["odd"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with caplog.at_level(logging.WARNING, logger="flows"), pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="odd")
    assert "the state of node 'odd'" in caplog.text and "cannot checkpoint" in caplog.text
    cp = await store.get("odd")
    assert cp is not None and "odd" not in cp.node_states
    await flow.resume("odd")
    assert ran == ["odd", "next", "odd", "next"]


async def test_payload_over_max_payload_bytes_is_a_save_error(store: BaseStore) -> None:
    def big(inputs: dict[str, Any]) -> str:
        return "x" * 5000

    flow = Flow(
        id="f",
        nodes=[FunctionNode(id="big", fn=big)],
        checkpoint=CheckpointConfig(
            enabled=True, store=store, max_payload_bytes=4000, on_save_error="raise"
        ),
    )
    with pytest.raises(CheckpointSaveError, match="max_payload_bytes=4000"):
        await flow.run(None, run_id="big")


async def test_an_unreachable_store_at_start_runs_degraded_in_warn_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down(FailingStore):
        async def get_run(self, run_id: str) -> Any:
            raise ConnectionError("no route to the store")

    flow = Flow(id="f", nodes=chain(2), checkpoint=CheckpointConfig(enabled=True, store=Down()))
    with caplog.at_level(logging.WARNING, logger="flows"):
        result = await flow.run(None, run_id="down")
    assert result.status is CheckpointStatus.COMPLETED and result.degraded
    assert "store is unreachable" in caplog.text
    strict = Flow(
        id="f",
        nodes=chain(2),
        checkpoint=CheckpointConfig(enabled=True, store=Down(), on_save_error="raise"),
    )
    with pytest.raises(ConnectionError):
        await strict.run(None, run_id="down")


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_postgres_store_runs_and_resumes_a_flow(
    postgres_store: BaseStore, durability: Durability
) -> None:
    """The async writer hands a backlog to put_sealed_many: still every seq, in order."""
    ran: list[str] = []

    def node(name: str) -> Any:
        def run(inputs: dict[str, Any]) -> str:
            ran.append(name)
            if name == "n20" and ran.count("n20") == 1:
                raise RuntimeError("n20 crashed")
            return name

        return run

    nodes = [
        FunctionNode(id=f"n{i}", fn=node(f"n{i}"), depends=[f"n{i - 1}"] if i else [])
        for i in range(30)
    ]
    flow = Flow(
        id="pg",
        nodes=nodes,
        checkpoint=CheckpointConfig(
            enabled=True, store=postgres_store, durability=durability, max_checkpoints=None
        ),
    )
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="pg1")
    assert await seqs_of(postgres_store, "pg1") == list(range(1, caught.value.seq + 1))
    result = await flow.resume("pg1")
    assert result.output == {"n29": "n29"}
    assert ran.count("n0") == 1 and ran.count("n20") == 2
    assert await seqs_of(postgres_store, "pg1") == list(range(1, result.seq + 1))
