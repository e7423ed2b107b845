"""SnapshotBuilder encodes exactly like checkpoint_to_bytes; CheckpointWriter keeps seq order."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import json
import logging
import uuid
from typing import Any

import pytest

from checkpoint import (
    CheckpointStatus,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    ParentRef,
    PayloadTooLargeError,
    PendingInput,
    StaleEpochError,
    StoreUnavailableError,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from checkpoint.errors import CodecError
from checkpoint.models import Durability
from checkpoint.store import SealedCheckpoint, summarize
from checkpoint.stores.memory import MemoryStore
from flows import CheckpointSaveError
from flows.redact import REDACTED, Redactor
from flows.saver import CheckpointWriter, Snapshot, SnapshotBuilder
from tests.integration.flow_scripts.support import FailingStore, SlowStore


class Color(enum.Enum):
    RED = "red"


NOW = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)
ODD_INPUT: dict[Any, Any] = {
    "blob": b"\x00\xff",
    "when": NOW,
    "ids": {3, 1, 2},
    "pair": (1, "ü"),
    7: Color.RED,
    "price": decimal.Decimal("1.10"),
    "id": uuid.UUID(int=9),
    "$t": "not a tag",
    # Floats orjson and json.dumps write differently, infinities, huge integers.
    "floats": [1e-05, 2.5e-07, 0.1, 1e16, -0.0, float("inf"), float("-inf")],
    "big": 2**70,
}


def _builder(**kw: Any) -> SnapshotBuilder:
    args: dict[str, Any] = dict(
        tenant_id="acme",
        flow_id="etl",
        run_id="r1",
        graph_fingerprint="f" * 64,
        original_input=ODD_INPUT,
        parent=ParentRef(run_id="r0", seq=4),
        trace_context="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    args.update(kw)
    return SnapshotBuilder(**args)


def _state(node_id: str, status: NodeStatus, **kw: Any) -> NodeState:
    return NodeState(node_id=node_id, node_type="FunctionNode", status=status, **kw)


def test_builder_bytes_equal_the_canonical_encoding_of_the_same_checkpoint() -> None:
    builder = _builder()
    states = [
        _state(
            "b",
            NodeStatus.SUCCEEDED,
            input={"input": ODD_INPUT},
            output=[1, {2: "x"}],
            started_at=NOW,
            finished_at=NOW,
            attempts=1,
        ),
        _state("a", NodeStatus.WAITING, internal_state={"answers": {"a": True}}, attempts=2),
        _state("c", NodeStatus.FAILED, error={"type": "ValueError", "message": "bad"}),
    ]
    builder.set_nodes(states)
    pending = [
        PendingInput(path="a", prompt="ok?", schema={"type": "boolean"}, metadata={"x": b"1"})
    ]
    snap = builder.build(
        seq=12,
        status=CheckpointStatus.PENDING_INPUT,
        pending_inputs=pending,
        metadata={"event": "pending_input", "n": (1, 2)},
    )
    expected = FlowCheckpoint(
        tenant_id="acme",
        flow_id="etl",
        run_id="r1",
        seq=12,
        status=CheckpointStatus.PENDING_INPUT,
        graph_fingerprint="f" * 64,
        node_states={s.node_id: s for s in states},
        original_input=ODD_INPUT,
        pending_inputs=pending,
        parent=ParentRef(run_id="r0", seq=4),
        created_at=snap.header.created_at,
        trace_context=snap.header.trace_context,
        metadata={"event": "pending_input", "n": (1, 2)},
    )
    assert snap.raw == checkpoint_to_bytes(expected)
    # Canonical means json.dumps' own form, whichever encoder wrote it.
    reference = json.dumps(
        json.loads(snap.raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert snap.raw == reference.encode()
    decoded = checkpoint_from_bytes(snap.raw)
    assert decoded == expected
    assert checkpoint_to_bytes(decoded) == snap.raw
    assert summarize(snap.header) == summarize(expected)
    assert snap.header.seq == 12 and snap.header.status is CheckpointStatus.PENDING_INPUT


def test_snapshot_is_taken_at_the_moment_of_the_event() -> None:
    builder = _builder(original_input={"k": [1]})
    output = {"rows": [1, 2]}
    builder.set_node(_state("a", NodeStatus.SUCCEEDED, output=output))
    snap = builder.build(seq=1, status=CheckpointStatus.ACTIVE, pending_inputs=[], metadata={})
    output["rows"].append(3)  # a dependant mutating the output later
    assert checkpoint_from_bytes(snap.raw).node_states["a"].output == {"rows": [1, 2]}


def test_builder_redacts_inputs_outputs_state_original_input_and_metadata() -> None:
    builder = _builder(original_input={"Token": "t", "q": 1}, redact=Redactor(["token"]))
    live = {"TOKEN": "secret", "deep": [{"token": "s"}]}
    builder.set_node(
        _state("a", NodeStatus.SUCCEEDED, input=live, output=live, internal_state={"token": 1})
    )
    snap = builder.build(
        seq=1, status=CheckpointStatus.ACTIVE, pending_inputs=[], metadata={"token": "m"}
    )
    cp = checkpoint_from_bytes(snap.raw)
    assert cp.original_input == {"Token": REDACTED, "q": 1}
    assert cp.node_states["a"].output == {"TOKEN": REDACTED, "deep": [{"token": REDACTED}]}
    assert cp.node_states["a"].input == cp.node_states["a"].output
    assert cp.node_states["a"].internal_state == {"token": REDACTED}
    assert cp.metadata == {"token": REDACTED}
    assert live["TOKEN"] == "secret"
    assert b"secret" not in snap.raw


def test_unencodable_values_and_oversized_payloads_are_clear_errors() -> None:
    with pytest.raises(CodecError, match="cannot checkpoint a value of type"):
        _builder(original_input=object())
    builder = _builder(original_input=None, max_payload_bytes=2000)
    builder.set_node(_state("a", NodeStatus.SUCCEEDED, output="x"))
    with pytest.raises(CodecError):
        builder.set_node(_state("a", NodeStatus.SUCCEEDED, output=object()))
    assert builder.node_ids == ["a"]  # the previous state is kept
    builder.set_node(_state("b", NodeStatus.SUCCEEDED, output="y" * 3000))
    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes=2000"):
        builder.build(seq=1, status=CheckpointStatus.ACTIVE, pending_inputs=[], metadata={})


def _snaps(n: int, run_id: str = "r1", start: int = 1) -> list[Snapshot]:
    builder = _builder(run_id=run_id, original_input=None, parent=None, trace_context=None)
    out = []
    for seq in range(start, start + n):
        builder.set_node(_state(f"n{seq}", NodeStatus.SUCCEEDED, output=seq))
        out.append(
            builder.build(seq=seq, status=CheckpointStatus.ACTIVE, pending_inputs=[], metadata={})
        )
    return out


async def test_async_writer_keeps_order_blocks_when_full_and_flushes() -> None:
    store = SlowStore(delay=0.001)
    writer = CheckpointWriter(store, run_id="r1", durability="async", queue_size=2)
    for snap in _snaps(20):
        await writer.save(snap)
        assert writer._queue.qsize() <= 2  # bounded: save() waited for room
    await writer.flush()
    assert store.order == list(range(1, 21))
    assert store.max_in_flight == 1
    assert writer.last_durable_seq == 20
    await writer.close()


async def test_async_writer_durable_save_waits_for_everything_before_it() -> None:
    store = SlowStore(delay=0.001)
    writer = CheckpointWriter(store, run_id="r1", durability="async", queue_size=8)
    snaps = _snaps(6)
    for snap in snaps[:-1]:
        await writer.save(snap)
    await writer.save(snaps[-1], durable=True)
    assert store.order == [1, 2, 3, 4, 5, 6]
    await writer.close()


async def test_concurrent_saves_in_sync_mode_are_written_in_seq_order() -> None:
    store = SlowStore(delay=0.001)
    writer = CheckpointWriter(store, run_id="r1", durability="sync")
    await asyncio.gather(*(writer.save(s) for s in _snaps(10)))
    assert store.order == list(range(1, 11))
    assert store.max_in_flight == 1


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_save_errors_warn_and_degrade_or_raise(
    durability: Durability, caplog: pytest.LogCaptureFixture
) -> None:
    warn = CheckpointWriter(FailingStore(), run_id="r1", durability=durability)
    with caplog.at_level(logging.WARNING, logger="flows"):
        for snap in _snaps(3):
            await warn.save(snap)
        await warn.flush()
    assert warn.degraded and warn.last_durable_seq == 0
    assert "checkpoint r1#1 could not be saved" in caplog.text
    await warn.close()

    strict = CheckpointWriter(
        FailingStore(fail_from=1),
        run_id="r1",
        durability=durability,
        on_save_error="raise",
    )
    first, second, third = _snaps(3)
    await strict.save(first)
    with pytest.raises(CheckpointSaveError, match="r1#2 could not be saved"):
        await strict.save(second)
        await strict.flush()
    with pytest.raises(CheckpointSaveError):
        await strict.save(third)
    assert strict.last_durable_seq == 1
    await strict.close()


async def test_a_stale_epoch_is_fatal_even_in_warn_mode() -> None:
    store = MemoryStore()
    first, second = _snaps(2)
    await CheckpointWriter(store, run_id="r1").save(first)
    await store.claim("r1", "other", 60)  # another worker took the run: epoch 1
    writer = CheckpointWriter(store, run_id="r1", epoch=0)
    with pytest.raises(StaleEpochError):
        await writer.save(second)
    assert not writer.degraded


def test_builder_bytes_match_for_a_checkpoint_without_nodes() -> None:
    builder = _builder(original_input=None, parent=None, trace_context=None)
    snap = builder.build(seq=1, status=CheckpointStatus.ACTIVE, pending_inputs=[], metadata={})
    expected = FlowCheckpoint(
        tenant_id="acme",
        flow_id="etl",
        run_id="r1",
        seq=1,
        graph_fingerprint="f" * 64,
        created_at=snap.header.created_at,
    )
    assert snap.raw == checkpoint_to_bytes(expected)


async def test_a_backlog_is_sealed_in_one_batch_and_still_written_in_order() -> None:
    store = SlowStore(delay=0.001)
    writer = CheckpointWriter(store, run_id="r1", durability="async", queue_size=64)
    snaps = _snaps(30)
    for snap in snaps:  # no await yields to the writer until the queue is full or done
        await writer.save(snap)
    await writer.flush()
    assert store.order == list(range(1, 31))
    stored = await store.get("r1", 17)
    assert stored is not None and checkpoint_to_bytes(stored) == snaps[16].raw
    await writer.close()


class BatchingStore(MemoryStore):
    """A store that, like PostgresStore, writes a backlog in one call (put_sealed_many)."""

    def __init__(self, refuse_seq: int | None = None) -> None:
        super().__init__()
        self.batches: list[list[int]] = []
        self.refuse_seq = refuse_seq

    async def put_sealed_many(self, items: list[tuple[SealedCheckpoint, int]]) -> list[Any]:
        self.batches.append([record.seq for record, _ in items])
        results: list[Any] = []
        for record, epoch in items:
            if record.seq == self.refuse_seq:
                results.append(StoreUnavailableError("refused (test)"))
                continue
            results.append(await self.put_sealed(record, epoch=epoch))
        return results


async def test_a_backlog_goes_to_put_sealed_many_in_one_call_and_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = BatchingStore(refuse_seq=7)
    writer = CheckpointWriter(store, run_id="r1", durability="async", queue_size=64)
    with caplog.at_level(logging.WARNING, logger="flows"):
        for snap in _snaps(12):
            await writer.save(snap)
        await writer.flush()
    assert store.batches == [list(range(1, 13))]
    assert await store.list_checkpoints("r1", limit=100) != []
    stored = sorted(s.seq for s in await store.list_checkpoints("r1", limit=100))
    assert stored == [s for s in range(1, 13) if s != 7]
    assert writer.degraded and "r1#7 could not be saved" in caplog.text
    assert writer.last_durable_seq == 12
    await writer.close()
