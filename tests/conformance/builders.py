"""Small builders for conformance tests: checkpoints with just the fields a test cares about."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from checkpoint import (
    CheckpointStatus,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    PendingInput,
    checkpoint_to_bytes,
)
from checkpoint.codec import sha256_hex

UTC = dt.UTC


def checkpoint(
    run_id: str = "run-1",
    seq: int = 0,
    *,
    status: CheckpointStatus = CheckpointStatus.ACTIVE,
    flow_id: str = "flow-a",
    tenant_id: str = "default",
    pending: Sequence[str] = (),
    created_at: dt.datetime | None = None,
    output: Any = None,
    note: str = "",
) -> FlowCheckpoint:
    """A checkpoint of ``run_id`` at ``seq``; ``note`` changes its checksum only."""
    pending_inputs = [PendingInput(path=p, prompt=f"answer {p}?") for p in pending]
    if pending_inputs and status is CheckpointStatus.ACTIVE:
        status = CheckpointStatus.PENDING_INPUT
    nodes = {
        f"n{i}": NodeState(
            node_id=f"n{i}",
            node_type="FunctionNode",
            status=NodeStatus.SUCCEEDED,
            output=output if output is not None else {"i": i},
        )
        for i in range(seq + 1)
    }
    return FlowCheckpoint(
        tenant_id=tenant_id,
        flow_id=flow_id,
        run_id=run_id,
        seq=seq,
        status=status,
        graph_fingerprint="fp-1",
        node_states=nodes,
        original_input={"q": "question"},
        pending_inputs=pending_inputs,
        created_at=created_at or dt.datetime.now(UTC),
        metadata={"note": note} if note else {},
    )


def rich_values() -> dict[str, Any]:
    """User values JSON cannot express, which must come back exactly."""
    return {
        "bytes": b"\x00\xff\x10binary",
        "set": {1, 2, 3},
        "frozen": frozenset({"a", "b"}),
        "when": dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        "day": dt.date(2026, 3, 4),
        "tuple": (1, "two", 3.5),
        "uuid": uuid.UUID(int=42),
        "decimal": Decimal("10.25"),
        "int_keys": {1: "one", 2: "two"},
        "nested": [{"deep": {b"k"}}],
        "$t": "not a tag",
    }


def sha_of(cp: FlowCheckpoint) -> str:
    """The SHA-256 a store must record for ``cp``."""
    return sha256_hex(checkpoint_to_bytes(cp))


def days_ago(days: float) -> dt.datetime:
    """An aware UTC datetime ``days`` before now."""
    return dt.datetime.now(UTC) - dt.timedelta(days=days)
