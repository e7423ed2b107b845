"""Conformance: put, get, idempotency, conflicts, round trips and corruption."""

from __future__ import annotations

from typing import Any

import pytest

from checkpoint import (
    CorruptCheckpointError,
    SeqConflictError,
    TenantMismatchError,
    checkpoint_to_bytes,
)
from tests.conformance.builders import checkpoint, rich_values, sha_of


async def test_put_is_idempotent(store: Any) -> None:
    cp = checkpoint("run-1", 0)
    assert await store.put(cp) == "stored"
    assert await store.put(cp) == "duplicate"
    assert await store.put(cp.model_copy()) == "duplicate"
    assert [s.seq for s in await store.list_checkpoints("run-1")] == [0]


async def test_conflicting_put_raises_and_keeps_the_stored_checkpoint(store: Any) -> None:
    first = checkpoint("run-1", 0, note="first")
    other = checkpoint("run-1", 0, note="second")
    assert sha_of(first) != sha_of(other)
    assert await store.put(first) == "stored"
    with pytest.raises(SeqConflictError):
        await store.put(other)
    stored = await store.get("run-1", 0)
    assert stored == first
    assert checkpoint_to_bytes(stored) == checkpoint_to_bytes(first)
    [summary] = await store.list_checkpoints("run-1")
    assert summary.sha256 == sha_of(first)


async def test_latest_is_max_seq_even_when_written_out_of_order(store: Any) -> None:
    for seq in (3, 1, 2):
        assert await store.put(checkpoint("run-1", seq)) == "stored"
    latest = await store.get("run-1")
    assert latest is not None
    assert latest.seq == 3
    run = await store.get_run("run-1")
    assert run is not None
    assert run.latest_seq == 3


async def test_get_by_seq_returns_that_checkpoint(store: Any) -> None:
    written = [checkpoint("run-1", seq, note=f"n{seq}") for seq in range(4)]
    for cp in written:
        await store.put(cp)
    for cp in written:
        assert await store.get("run-1", cp.seq) == cp
    assert await store.get("run-1", 99) is None


async def test_get_of_unknown_run_is_none(store: Any) -> None:
    assert await store.get("no-such-run") is None
    assert await store.get("no-such-run", 0) is None
    assert await store.get_run("no-such-run") is None
    assert await store.list_checkpoints("no-such-run") == []


async def test_round_trip_of_rich_user_values_is_exact(store: Any) -> None:
    cp = checkpoint("run-rich", 2, output=rich_values())
    cp.original_input = rich_values()
    cp.metadata = {"tags": {"x", "y"}, "raw": b"\x01\x02"}
    await store.put(cp)
    back = await store.get("run-rich")
    assert back == cp
    assert checkpoint_to_bytes(back) == checkpoint_to_bytes(cp)
    output = back.node_states["n0"].output
    assert output["bytes"] == b"\x00\xff\x10binary"
    assert output["set"] == {1, 2, 3}
    assert output["when"] == rich_values()["when"]
    assert output["when"].tzinfo is not None
    assert output["tuple"] == (1, "two", 3.5)
    assert back.created_at == cp.created_at


async def test_a_run_belongs_to_the_tenant_that_created_it(store: Any) -> None:
    await store.put(checkpoint("run-1", 0, tenant_id="acme"))
    with pytest.raises(TenantMismatchError):
        await store.put(checkpoint("run-1", 1, tenant_id="globex"))
    run = await store.get_run("run-1")
    assert run is not None
    assert (run.tenant_id, run.latest_seq) == ("acme", 0)


async def test_corrupted_payload_is_reported_on_get(store: Any, corrupt: Any) -> None:
    good = checkpoint("run-1", 0)
    await store.put(good)
    await store.put(checkpoint("run-1", 1))
    await corrupt(store, "run-1", 1)
    with pytest.raises(CorruptCheckpointError):
        await store.get("run-1", 1)
    with pytest.raises(CorruptCheckpointError):
        await store.get("run-1")
    assert await store.get("run-1", 0) == good
    # listings still work past the damaged checkpoint
    assert [s.seq for s in await store.list_checkpoints("run-1")] == [1, 0]
