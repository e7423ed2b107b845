"""The acceptance behaviours of RFC-001 (digest section 4: 1-23, 34, 35), through real stores.

Each test is named after its behaviour number. Important ones run against the
memory, file and SQLite stores.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import (
    CheckpointConfig,
    CheckpointNotFoundError,
    CheckpointStatus,
    CorruptCheckpointError,
    FlowCheckpoint,
    NodeStatus,
    RunNotFoundError,
    UnknownSchemaVersionError,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from checkpoint.codec import register_enum
from checkpoint.store import BaseStore
from checkpoint.stores.memory import MemoryStore
from flows import Flow, FunctionNode, Node, NodeContext, NodeExecutionError
from tests.integration.flow_scripts.support import (
    LOCAL_STORES,
    FailingStore,
    ForbiddenStore,
    ago,
    make_store,
    seqs_of,
)


@pytest.fixture(params=LOCAL_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = make_store(str(request.param), tmp_path)
    yield store
    await store.close()


def config(store: Any, **kw: Any) -> CheckpointConfig:
    return CheckpointConfig(enabled=True, store=store, **kw)


class Calls:
    """Counts node executions and can make one node fail on chosen attempts."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: dict[str, int] = {}  # node id -> fail while count <= n
        self.seen_inputs: dict[str, Any] = {}

    def count(self, node_id: str) -> int:
        return self.log.count(node_id)

    def fn(self, node_id: str) -> Any:
        def run(inputs: dict[str, Any]) -> Any:
            self.log.append(node_id)
            self.seen_inputs[node_id] = inputs
            if self.count(node_id) <= self.fail.get(node_id, 0):
                raise RuntimeError(f"{node_id} crashed")
            deps = [v for k, v in sorted(inputs.items()) if k != "input"]
            return {"node": node_id, "sum": sum(d["sum"] for d in deps) + 1}

        return run


def linear(calls: Calls, n: int = 5, **cfg: Any) -> list[Node]:
    return [
        FunctionNode(id=f"n{i}", fn=calls.fn(f"n{i}"), depends=[f"n{i - 1}"] if i > 1 else [])
        for i in range(1, n + 1)
    ]


# -- 1, 2: disabled means no checkpoint work at all -------------------------------------------


async def test_b01_no_config_no_store_calls_no_state_hooks_no_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from checkpoint import codec

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("checkpoint encoding ran with checkpointing off")

    monkeypatch.setattr(codec, "to_jsonable", forbidden)
    monkeypatch.setattr(codec, "canonical_json", forbidden)

    restored: list[str] = []

    class Stateful(Node):
        def restore(self, state: dict[str, Any]) -> dict[str, Any]:
            restored.append(self.id)
            return state

        async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
            ctx.state["progress"] = 1
            await ctx.save_state()
            return inputs["input"] + 1

    store = ForbiddenStore()
    for cfg in (None, CheckpointConfig(enabled=False, store=store)):
        flow = Flow(id="f", nodes=[Stateful(id="a")], checkpoint=cfg)
        result = await flow.run(1)
        assert result.status is CheckpointStatus.COMPLETED and result.output == {"a": 2}
        assert result.seq == 0
        assert await flow.list_checkpoints(result.run_id) == []
    assert store.touched == []
    assert restored == []


async def test_b02_enabled_without_store_saves_nothing_and_raises_nothing() -> None:
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 2), checkpoint=CheckpointConfig(enabled=True))
    result = await flow.run({"x": 1})
    assert result.status is CheckpointStatus.COMPLETED and result.seq == 0
    assert await flow.latest_checkpoint(result.run_id) is None
    assert await flow.delete_run(result.run_id) is False


# -- 3, 4, 12: what the checkpoints hold --------------------------------------------------------


async def test_b03_fresh_run_saves_active_checkpoint_with_input_before_any_node(
    store: BaseStore,
) -> None:
    seen: dict[str, Any] = {}

    async def first(inputs: dict[str, Any], ctx: NodeContext) -> str:
        cp = await store.get(ctx.run_id)
        seen["cp"] = cp
        return "ok"

    flow = Flow(id="f", nodes=[FunctionNode(id="a", fn=first)], checkpoint=config(store))
    await flow.run({"question": "why?", "raw": b"\x01"}, run_id="r3")
    cp = seen["cp"]
    assert cp is not None and cp.seq == 1
    assert cp.status is CheckpointStatus.ACTIVE
    assert cp.original_input == {"question": "why?", "raw": b"\x01"}
    assert cp.node_states == {}
    assert cp.graph_fingerprint == flow.graph_fingerprint


async def test_b04_each_finished_node_is_checkpointed_with_io_and_status(store: BaseStore) -> None:
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 3), checkpoint=config(store))
    await flow.run({"x": 1}, run_id="r4")
    assert await seqs_of(store, "r4") == [1, 2, 3, 4, 5]
    for seq, done in [(2, ["n1"]), (3, ["n1", "n2"]), (4, ["n1", "n2", "n3"])]:
        cp = await store.get("r4", seq)
        assert cp is not None and cp.status is CheckpointStatus.ACTIVE
        assert sorted(cp.node_states) == done
        last = cp.node_states[done[-1]]
        assert last.status is NodeStatus.SUCCEEDED
        assert last.output == {"node": done[-1], "sum": len(done)}
        assert last.input["input"] == {"x": 1}
        assert last.attempts == 1 and last.started_at is not None and last.finished_at is not None
        assert cp.metadata == {"event": "node", "node_id": done[-1]}


async def test_b12_success_ends_with_completed_checkpoint_covering_all_nodes(
    store: BaseStore,
) -> None:
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 4), checkpoint=config(store))
    result = await flow.run(None, run_id="r12")
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"n4": {"node": "n4", "sum": 4}}
    cp = await store.get("r12")
    assert cp is not None and cp.seq == result.seq == 6
    assert cp.status is CheckpointStatus.COMPLETED
    assert cp.completed_node_ids() == ["n1", "n2", "n3", "n4"]
    assert cp.pending_inputs == []
    info = await store.get_run("r12")
    assert info is not None and info.status is CheckpointStatus.COMPLETED


# -- 5, 6, 7, 8: crash in node 4 and resume ------------------------------------------------------


async def test_b05_crash_in_node_4_leaves_failed_checkpoint_with_1_to_3_completed(
    store: BaseStore,
) -> None:
    calls = Calls()
    calls.fail["n4"] = 1
    flow = Flow(id="f", nodes=linear(calls), checkpoint=config(store))
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run({"x": 1}, run_id="r5")
    error = caught.value
    assert isinstance(error.__cause__, RuntimeError) and str(error.__cause__) == "n4 crashed"
    assert error.run_id == "r5" and error.node_id == "n4"
    cp = await store.get("r5")
    assert cp is not None and cp.seq == error.seq
    assert cp.status is CheckpointStatus.FAILED
    assert cp.completed_node_ids() == ["n1", "n2", "n3"]
    n4 = cp.node_states["n4"]
    assert n4.status is NodeStatus.FAILED
    assert n4.error is not None and n4.error.message == "n4 crashed"
    assert "n5" not in cp.node_states


async def test_b06_b07_b08_resume_skips_completed_nodes_and_feeds_restored_output(
    store: BaseStore,
) -> None:
    calls = Calls()
    calls.fail["n4"] = 1
    flow = Flow(id="f", nodes=linear(calls), checkpoint=config(store))
    with pytest.raises(NodeExecutionError):
        await flow.run({"x": 1}, run_id="r6")
    # A new process would rebuild the flow: new node objects, fresh counters.
    calls2 = Calls()
    flow2 = Flow(id="f", nodes=linear(calls2), checkpoint=config(store))
    result = await flow2.resume("r6")
    assert result.status is CheckpointStatus.COMPLETED
    assert calls.log == ["n1", "n2", "n3", "n4"]  # 1-3 ran exactly once
    assert calls2.log == ["n4", "n5"]
    assert result.executed == ["n4", "n5"] and result.skipped == ["n1", "n2", "n3"]
    # 7: node 4 receives node 3's restored output; 8: the original input is reused.
    assert calls2.seen_inputs["n4"] == {"input": {"x": 1}, "n3": {"node": "n3", "sum": 3}}
    assert result.output == {"n5": {"node": "n5", "sum": 5}}
    cp = await store.get("r6")
    assert cp is not None and cp.node_states["n4"].attempts == 2


# -- 9, 10, 11: which checkpoint a resume uses ----------------------------------------------------


async def test_b09_resume_from_an_explicit_seq_or_the_latest(store: BaseStore) -> None:
    calls = Calls()
    calls.fail["n3"] = 1
    flow = Flow(id="f", nodes=linear(calls, 3), checkpoint=config(store))
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="r9")
    latest = await store.get("r9")
    assert latest is not None
    # seq 2 holds only n1: resuming from it re-runs n2 as well; history stays append-only.
    result = await flow.resume("r9", seq=2)
    assert calls.log == ["n1", "n2", "n3", "n2", "n3"]
    assert result.seq > latest.seq
    first_new = await store.get("r9", latest.seq + 1)
    assert first_new is not None and first_new.metadata["resumed_from_seq"] == 2
    assert await seqs_of(store, "r9") == list(range(1, result.seq + 1))


async def test_b10_b11_unknown_run_or_seq_is_a_clear_error(store: BaseStore) -> None:
    flow = Flow(id="f", nodes=linear(Calls(), 2), checkpoint=config(store))
    with pytest.raises(RunNotFoundError):
        await flow.resume("nobody")
    await flow.run(None, run_id="r11")
    with pytest.raises(CheckpointNotFoundError, match="seq 99"):
        await flow.resume("r11", seq=99)
    # 11: no seq means the latest (completed here, so nothing runs).
    result = await flow.resume("r11")
    assert result.status is CheckpointStatus.COMPLETED and result.executed == []
    # The failed resumes released their claims: a third worker can claim.
    claim = await store.claim("r11", "someone-else", 5)
    assert claim.worker_id == "someone-else"


# -- 13, 14: retention ----------------------------------------------------------------------------


async def test_b13_max_checkpoints_bounds_a_runs_history(store: BaseStore) -> None:
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 12), checkpoint=config(store, max_checkpoints=10))
    result = await flow.run(None, run_id="r13")
    assert result.seq == 14  # start + 12 nodes + completed
    seqs = await seqs_of(store, "r13")
    assert seqs == list(range(5, 15))

    pruned_during_run: list[int] = []

    def watch(inputs: dict[str, Any], ctx: NodeContext) -> int:
        return 1

    long_flow = Flow(
        id="g",
        nodes=[
            FunctionNode(id=f"m{i}", fn=watch, depends=[f"m{i - 1}"] if i else [])
            for i in range(25)
        ],
        checkpoint=config(store, max_checkpoints=4),
        callbacks=[_Watcher(store, "r13b", pruned_during_run)],
    )
    await long_flow.run(None, run_id="r13b")
    # History stayed bounded while the run went on, not only at the end.
    assert max(pruned_during_run) <= 4 + 4
    assert len(await seqs_of(store, "r13b")) == 4


class _Watcher:
    def __init__(self, store: BaseStore, run_id: str, sizes: list[int]) -> None:
        self.store = store
        self.run_id = run_id
        self.sizes = sizes

    async def on_checkpoint(self, cp: FlowCheckpoint) -> None:
        self.sizes.append(len(await seqs_of(self.store, self.run_id)))


async def test_b14_retention_days_expires_old_checkpoints(store: BaseStore) -> None:
    old = FlowCheckpoint(flow_id="f", run_id="old", seq=1, created_at=ago(30))
    for seq in (1, 2, 3):
        await store.put(old.model_copy(update={"seq": seq}))
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 2), checkpoint=config(store, retention_days=7))
    await flow.run(None, run_id="fresh")
    assert await seqs_of(store, "old") == [3]  # the latest checkpoint of a run is always kept
    assert await seqs_of(store, "fresh") == [1, 2, 3, 4]


# -- 15, 16, 17 -----------------------------------------------------------------------------------


async def test_b15_excluded_nodes_never_appear_and_run_again_on_resume(store: BaseStore) -> None:
    calls = Calls()
    calls.fail["n3"] = 1
    flow = Flow(id="f", nodes=linear(calls, 3), checkpoint=config(store, exclude_nodes=["n2"]))
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="r15")
    for summary in await store.list_checkpoints("r15"):
        cp = await store.get("r15", summary.seq)
        assert cp is not None and "n2" not in cp.node_states
    await flow.resume("r15")
    assert calls.log == ["n1", "n2", "n3", "n2", "n3"]


async def test_b16_a_failing_store_lets_the_run_succeed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    flow = Flow(id="f", nodes=linear(calls, 3), checkpoint=config(FailingStore()))
    with caplog.at_level(logging.WARNING, logger="flows"):
        result = await flow.run(None, run_id="r16")
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"n3": {"node": "n3", "sum": 3}}
    assert result.degraded and result.seq == 0
    assert "could not be saved" in caplog.text


async def test_b17_failing_restore_reexecutes_from_scratch_and_completes(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[dict[str, Any]] = []

    class Fragile(Node):
        def restore(self, state: dict[str, Any]) -> dict[str, Any]:
            raise KeyError("format changed")

        async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
            attempts.append(dict(ctx.state))
            ctx.state["step"] = 1
            await ctx.save_state()
            if len(attempts) == 1:
                raise RuntimeError("crash mid-node")
            return "done"

    flow = Flow(id="f", nodes=[Fragile(id="x")], checkpoint=config(store))
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="r17")
    with caplog.at_level(logging.WARNING, logger="flows"):
        result = await flow.resume("r17")
    assert result.output == {"x": "done"}
    assert attempts == [{}, {}]
    assert "could not restore its saved state" in caplog.text


# -- 18, 19: only what failed runs again ----------------------------------------------------------


async def test_b18_diamond_where_d_fails_resumes_only_d(store: BaseStore) -> None:
    calls = Calls()
    calls.fail["d"] = 1
    nodes = [
        FunctionNode(id="a", fn=calls.fn("a")),
        FunctionNode(id="b", fn=calls.fn("b"), depends=["a"]),
        FunctionNode(id="c", fn=calls.fn("c"), depends=["a"]),
        FunctionNode(id="d", fn=calls.fn("d"), depends=["b", "c"]),
    ]
    flow = Flow(id="diamond", nodes=nodes, checkpoint=config(store))
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="r18")
    result = await flow.resume("r18")
    assert result.executed == ["d"]
    assert sorted(calls.log) == ["a", "b", "c", "d", "d"]
    assert result.output == {"d": {"node": "d", "sum": 5}}


async def test_b19_parallel_siblings_resume_only_the_failed_one(store: BaseStore) -> None:
    calls = Calls()
    calls.fail["c"] = 1
    nodes = [
        FunctionNode(id="a", fn=calls.fn("a")),
        FunctionNode(id="b", fn=calls.fn("b"), depends=["a"]),
        FunctionNode(id="c", fn=calls.fn("c"), depends=["a"]),
    ]
    flow = Flow(id="fan", nodes=nodes, checkpoint=config(store))
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="r19")
    cp = await store.get("r19", caught.value.seq)
    assert cp is not None
    assert cp.node_states["b"].status is NodeStatus.SUCCEEDED
    assert cp.node_states["c"].status is NodeStatus.FAILED
    result = await flow.resume("r19")
    assert result.executed == ["c"]
    assert sorted(calls.log) == ["a", "b", "c", "c"]
    assert result.output == {"b": {"node": "b", "sum": 2}, "c": {"node": "c", "sum": 2}}


# -- 20, 21: human input ---------------------------------------------------------------------------


def approval_flow(store: Any, ran: list[str]) -> Flow:
    def plan(inputs: dict[str, Any]) -> str:
        ran.append("plan")
        return "the plan"

    def review(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        ran.append("review")
        return ctx.interrupt(
            f"Approve {inputs['plan']}?",
            schema={
                "type": "object",
                "properties": {"approved": {"type": "boolean"}},
                "required": ["approved"],
            },
            metadata={"channel": "slack"},
        )

    def act(inputs: dict[str, Any]) -> str:
        ran.append("act")
        return "shipped" if inputs["review"]["approved"] else "dropped"

    return Flow(
        id="approve",
        nodes=[
            FunctionNode(id="plan", fn=plan),
            FunctionNode(id="review", fn=review, depends=["plan"]),
            FunctionNode(id="act", fn=act, depends=["review"]),
        ],
        checkpoint=config(store),
    )


async def test_b20_interrupt_saves_pending_input_checkpoint_and_returns(store: BaseStore) -> None:
    ran: list[str] = []
    result = await approval_flow(store, ran).run(None, run_id="r20")
    assert result.status is CheckpointStatus.PENDING_INPUT
    assert [p.path for p in result.pending_inputs] == ["review"]
    cp = await store.get("r20")
    assert cp is not None and cp.seq == result.seq
    assert cp.status is CheckpointStatus.PENDING_INPUT
    (pending,) = cp.pending_inputs
    assert pending.path == "review"
    assert pending.prompt == "Approve the plan?"
    assert pending.metadata == {"channel": "slack"}
    assert pending.schema_ is not None and pending.schema_["required"] == ["approved"]
    assert cp.node_states["review"].status is NodeStatus.WAITING
    info = await store.get_run("r20")
    assert info is not None and info.pending_inputs == ["review"]


async def test_b21_resuming_with_the_answer_completes_and_clears_the_pending_input(
    store: BaseStore,
) -> None:
    ran: list[str] = []
    flow = approval_flow(store, ran)
    await flow.run(None, run_id="r21")
    result = await flow.resume("r21", inputs={"review": {"approved": True}})
    assert result.status is CheckpointStatus.COMPLETED
    assert result.output == {"act": "shipped"}
    assert result.pending_inputs == []
    assert ran == ["plan", "review", "review", "act"]
    cp = await store.get("r21")
    assert cp is not None and cp.pending_inputs == []
    assert cp.node_states["review"].output == {"approved": True}
    assert cp.node_states["review"].internal_state["answers"] == {"review": {"approved": True}}


# -- 22, 23: model round trip and schema versions, through the flow --------------------------------


@register_enum
class Mood(enum.Enum):
    HAPPY = "happy"


async def test_b22_a_flow_checkpoint_round_trips_exactly(store: BaseStore) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)

    def node(inputs: dict[str, Any], ctx: NodeContext) -> Any:
        ctx.child("[0]").state["seen"] = {1, 2}
        return {"when": when, "mood": Mood.HAPPY, "pair": (1, b"\x00"), 3: "int key"}

    flow = Flow(id="f", nodes=[FunctionNode(id="a", fn=node)], checkpoint=config(store))
    await flow.run({"at": when}, run_id="r22")
    cp = await flow.latest_checkpoint("r22")
    assert cp is not None
    out = cp.node_states["a"].output
    assert out == {"when": when, "mood": Mood.HAPPY, "pair": (1, b"\x00"), 3: "int key"}
    assert cp.node_states["a"].internal_state == {"children": {"[0]": {"seen": {1, 2}}}}
    assert cp.created_at.tzinfo is not None and cp.status is CheckpointStatus.COMPLETED
    raw = checkpoint_to_bytes(cp)
    back = checkpoint_from_bytes(raw)
    assert back == cp and checkpoint_to_bytes(back) == raw


@pytest.mark.parametrize(
    ("version", "error"),
    [(99, UnknownSchemaVersionError), (0, CorruptCheckpointError)],
)
async def test_b23_schema_version_is_validated_on_resume(
    store: BaseStore, version: int, error: type[Exception]
) -> None:
    calls = Calls()
    calls.fail["n2"] = 1
    flow = Flow(id="f", nodes=linear(calls, 2), checkpoint=config(store))
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="r23")
    cp = await store.get("r23")
    assert cp is not None
    bad = cp.model_copy(update={"seq": caught.value.seq + 1})
    raw = checkpoint_to_bytes(bad).replace(
        b'"schema_version":1', f'"schema_version":{version}'.encode()
    )
    await store.put_sealed(store.seal_raw(bad, raw))
    with pytest.raises(error, match="schema_version"):
        await flow.resume("r23")
    assert calls.log == ["n1", "n2"]  # nothing ran


# -- 34, 35: callbacks and helpers -----------------------------------------------------------------


async def test_b34_callbacks_on_resume_and_on_checkpoint(store: BaseStore) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.resumed: list[tuple[str, int]] = []
            self.seqs: list[int] = []

        def on_resume(self, run_id: str, seq: int) -> None:
            self.resumed.append((run_id, seq))

        async def on_checkpoint(self, cp: FlowCheckpoint) -> None:
            self.seqs.append(cp.seq)

    class Partial:  # defines neither hook: ignored
        pass

    class Broken:
        def on_checkpoint(self, cp: FlowCheckpoint) -> None:
            raise ValueError("callback bug")

    recorder = Recorder()
    calls = Calls()
    calls.fail["n2"] = 1
    flow = Flow(
        id="f",
        nodes=linear(calls, 2),
        checkpoint=config(store),
        callbacks=[recorder, Partial(), Broken()],
    )
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(None, run_id="r34")
    failed_seq = caught.value.seq
    assert recorder.seqs == list(range(1, failed_seq + 1))
    await flow.resume("r34")
    assert recorder.resumed == [("r34", failed_seq)]
    assert recorder.seqs == await seqs_of(store, "r34")


async def test_b35_list_checkpoints_newest_first_and_delete_run(store: BaseStore) -> None:
    flow = Flow(id="f", nodes=linear(Calls(), 3), checkpoint=config(store))
    await flow.run(None, run_id="r35")
    listed = await flow.list_checkpoints("r35", limit=3)
    assert [c.seq for c in listed] == [5, 4, 3]
    assert listed[0].status is CheckpointStatus.COMPLETED
    assert await flow.delete_run("r35") is True
    assert await flow.delete_run("r35") is False
    assert await flow.list_checkpoints("r35") == []
    assert await flow.latest_checkpoint("r35") is None

    plain = Flow(id="f", nodes=linear(Calls(), 1))
    assert await plain.list_checkpoints("r35") == []
    assert await plain.latest_checkpoint("r35") is None
    assert await plain.delete_run("r35") is False


def test_b35_sync_twins_work_outside_a_loop(tmp_path: Path) -> None:
    store = MemoryStore()
    flow = Flow(id="f", nodes=linear(Calls(), 2), checkpoint=config(store))
    result = flow.run_sync({"q": 1}, run_id="sync1")
    assert result.status is CheckpointStatus.COMPLETED
    assert [c.seq for c in flow.list_checkpoints_sync("sync1")] == [4, 3, 2, 1]
    latest = flow.latest_checkpoint_sync("sync1")
    assert latest is not None and latest.seq == 4
    assert flow.resume_sync("sync1").executed == []
    assert flow.delete_run_sync("sync1") is True
