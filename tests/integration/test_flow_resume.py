"""Resume, fork and recovery: (b) diamond, (c) siblings, (d) completed runs, (k) graph change,
(l) fork, (m) fallback over a corrupted checkpoint, plus claims and seq continuation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import (
    CheckpointConfig,
    CheckpointStatus,
    ClaimConflictError,
    CorruptCheckpointError,
    GraphMismatchError,
    ParentRef,
)
from checkpoint.store import BaseStore
from checkpoint.stores.file import FileStore
from flows import Flow, FunctionNode, NodeContext, NodeExecutionError, RunExistsError
from tests.integration.flow_scripts.support import LOCAL_STORES, make_store, seqs_of


@pytest.fixture(params=LOCAL_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    store = make_store(str(request.param), tmp_path)
    yield store
    await store.close()


class Recorder:
    def __init__(self, fail_once: set[str] | None = None) -> None:
        self.log: list[str] = []
        self.fail_once = set(fail_once or ())

    def node(self, node_id: str, depends: list[str] | None = None) -> FunctionNode:
        async def run(inputs: dict[str, Any]) -> int:
            self.log.append(node_id)
            if node_id in self.fail_once:
                self.fail_once.discard(node_id)
                raise ValueError(f"{node_id} failed")
            return 1 + sum(int(v) for k, v in inputs.items() if k != "input")

        return FunctionNode(id=node_id, fn=run, depends=depends or [])


def diamond(rec: Recorder, store: Any) -> Flow:
    return Flow(
        id="diamond",
        nodes=[
            rec.node("a"),
            rec.node("b", ["a"]),
            rec.node("c", ["a"]),
            rec.node("d", ["b", "c"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )


async def test_diamond_whose_last_node_fails_reruns_only_it(store: BaseStore) -> None:
    rec = Recorder(fail_once={"d"})
    flow = diamond(rec, store)
    with pytest.raises(NodeExecutionError):
        await flow.run(0, run_id="dia")
    rec.log.clear()
    result = await flow.resume("dia")
    assert rec.log == ["d"]
    assert result.output == {"d": 5}


async def test_parallel_siblings_rerun_only_the_failed_one(store: BaseStore) -> None:
    rec = Recorder(fail_once={"c"})
    flow = Flow(
        id="fan",
        nodes=[rec.node("a"), rec.node("b", ["a"]), rec.node("c", ["a"]), rec.node("e", ["a"])],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError):
        await flow.run(0, run_id="fan")
    rec.log.clear()
    result = await flow.resume("fan")
    assert rec.log == ["c"]
    assert result.output == {"b": 2, "c": 2, "e": 2}


async def test_resuming_a_completed_run_executes_nothing(store: BaseStore) -> None:
    rec = Recorder()
    flow = diamond(rec, store)
    first = await flow.run(0, run_id="done")
    before = await seqs_of(store, "done")
    rec.log.clear()
    again = await flow.resume("done")
    assert rec.log == []
    assert again.status is CheckpointStatus.COMPLETED
    assert again.output == first.output == {"d": 5}
    assert again.seq == first.seq and again.executed == []
    assert await seqs_of(store, "done") == before  # nothing written


async def test_graph_change_is_refused_unless_allowed(store: BaseStore) -> None:
    rec = Recorder(fail_once={"d"})
    with pytest.raises(NodeExecutionError):
        await diamond(rec, store).run(0, run_id="g")
    cfg = CheckpointConfig(enabled=True, store=store)
    changed = Flow(
        id="diamond",
        nodes=[rec.node("a"), rec.node("b", ["a"]), rec.node("d", ["b"])],
        checkpoint=cfg,
    )
    latest = await store.get("g")
    assert latest is not None
    with pytest.raises(GraphMismatchError, match=r"only in the checkpoint: \['c'\]"):
        await changed.resume("g")
    other_flow = Flow(id="other", nodes=diamond(rec, store).nodes, checkpoint=cfg)
    with pytest.raises(GraphMismatchError, match="belongs to flow 'diamond'"):
        await other_flow.resume("g")
    assert (await store.get("g")).seq == latest.seq  # type: ignore[union-attr]
    rec.log.clear()
    result = await changed.resume("g", allow_graph_change=True)
    assert rec.log == ["d"]
    assert result.output == {"d": 3}
    cp = await store.get("g")
    assert cp is not None and cp.graph_fingerprint == changed.graph_fingerprint


async def test_fork_starts_a_new_run_from_an_old_checkpoint(store: BaseStore) -> None:
    rec = Recorder()
    flow = diamond(rec, store)
    await flow.run(0, run_id="orig")
    orig_seqs = await seqs_of(store, "orig")
    # seq 3 = after a and b: the fork runs c and d only.
    rec.log.clear()
    result = await flow.fork("orig", 3, new_run_id="forked")
    assert sorted(rec.log) == ["c", "d"]
    assert result.run_id == "forked" and result.output == {"d": 5}
    assert await seqs_of(store, "forked") == list(range(1, result.seq + 1))
    first = await store.get("forked", 1)
    assert first is not None and first.parent == ParentRef(run_id="orig", seq=3)
    assert first.metadata["forked_from"] == {"run_id": "orig", "seq": 3}
    assert await seqs_of(store, "orig") == orig_seqs  # the original is untouched
    with pytest.raises(RunExistsError, match="resume it instead"):
        await flow.fork("orig", 3, new_run_id="forked")


async def test_fallback_to_previous_walks_back_over_a_corrupt_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "ckpts")
    rec = Recorder(fail_once={"d"})
    flow = diamond(rec, store)
    with pytest.raises(NodeExecutionError) as caught:
        await flow.run(0, run_id="bad")
    latest = caught.value.seq  # the failed checkpoint
    # Damage the payload of the latest checkpoint file (header intact).
    path = store.checkpoint_path("bad", latest)
    data = path.read_bytes()
    cut = data.index(b"\n") + 1
    blob = bytearray(data[cut:])
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(data[:cut] + bytes(blob))

    with pytest.raises(CorruptCheckpointError):
        await flow.resume("bad")
    rec.log.clear()
    with caplog.at_level(logging.WARNING, logger="flows"):
        result = await flow.resume("bad", fallback_to_previous=True)
    assert f"checkpoint seq {latest} is corrupt" in caplog.text
    # The previous checkpoint (d failed, a-c done) is used: only d runs.
    assert rec.log == ["d"] and result.output == {"d": 5}
    assert result.seq > latest  # history continues after the corrupt one


async def test_a_run_id_that_exists_is_refused(store: BaseStore) -> None:
    flow = diamond(Recorder(), store)
    await flow.run(0, run_id="twice")
    with pytest.raises(RunExistsError, match="resume it instead"):
        await flow.run(0, run_id="twice")


async def test_resume_claims_the_run_and_releases_it(store: BaseStore) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    calls: list[str] = []

    async def wait_node(inputs: dict[str, Any], ctx: NodeContext) -> str:
        calls.append("wait")
        if len(calls) == 1:
            raise ValueError("first attempt fails")
        entered.set()
        await gate.wait()
        return "ok"

    flow = Flow(
        id="claimed",
        nodes=[FunctionNode(id="w", fn=wait_node)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="c1")
    task = asyncio.create_task(flow.resume("c1", worker_id="w1", lease_seconds=30))
    await entered.wait()
    info = await store.get_run("c1")
    assert info is not None and info.claim is not None and info.claim.worker_id == "w1"
    with pytest.raises(ClaimConflictError):
        await flow.resume("c1", worker_id="w2")
    gate.set()
    result = await task
    assert result.status is CheckpointStatus.COMPLETED
    info = await store.get_run("c1")
    assert info is not None and info.claim is None


async def test_the_lease_is_renewed_while_a_resume_runs(store: BaseStore) -> None:
    renewals: list[float] = []
    renewed_twice = asyncio.Event()
    real_renew = store.renew

    async def counting_renew(*args: Any, **kwargs: Any) -> Any:
        renewals.append(1)
        if len(renewals) >= 2:
            renewed_twice.set()
        return await real_renew(*args, **kwargs)

    store.renew = counting_renew  # type: ignore[method-assign]
    attempts: list[int] = []

    async def slow(inputs: dict[str, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        await renewed_twice.wait()  # a lease of 0.3 s is renewed every 0.1 s
        return "ok"

    flow = Flow(
        id="lease",
        nodes=[FunctionNode(id="s", fn=slow)],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="l1")
    result = await asyncio.wait_for(flow.resume("l1", lease_seconds=0.3), timeout=60)
    assert result.status is CheckpointStatus.COMPLETED
    assert len(renewals) >= 2
