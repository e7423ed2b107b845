import datetime as dt
import uuid

import pytest

from checkpoint import (
    CheckpointStatus,
    CorruptCheckpointError,
    FlowCheckpoint,
    NodeState,
    PendingInput,
    UnknownSchemaVersionError,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)


def _checkpoint() -> FlowCheckpoint:
    return FlowCheckpoint(
        flow_id="etl",
        run_id="r1",
        seq=3,
        status=CheckpointStatus.PENDING_INPUT,
        original_input={"blob": b"\x00\xff", "ids": {1, 2}, 7: (1, uuid.UUID(int=5))},
        node_states={
            "a": NodeState(
                node_id="a",
                node_type="FunctionNode",
                status="succeeded",
                output={"$t": "not a tag", "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
            )
        },
        pending_inputs=[PendingInput(path="review", prompt="ok?", schema={"type": "boolean"})],
    )


def test_wire_round_trip_is_exact_and_stable() -> None:
    cp = _checkpoint()
    raw = checkpoint_to_bytes(cp)
    back = checkpoint_from_bytes(raw)
    assert back == cp
    assert back.node_states["a"].output["$t"] == "not a tag"
    assert checkpoint_to_bytes(back) == raw


def test_model_fields_carry_no_codec_tags() -> None:
    raw = checkpoint_to_bytes(_checkpoint()).decode()
    assert '"created_at":"' in raw
    assert '"pending_inputs":[{"metadata":{},"path":"review"' in raw


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FlowCheckpoint(flow_id="f", run_id="r", seq=0, created_at=dt.datetime(2026, 1, 1))


def test_newer_schema_version_is_a_clear_error() -> None:
    raw = checkpoint_to_bytes(_checkpoint()).replace(b'"schema_version":1', b'"schema_version":99')
    with pytest.raises(UnknownSchemaVersionError, match="upgrade Flowpoint"):
        checkpoint_from_bytes(raw)


def test_truncated_bytes_are_corrupt() -> None:
    raw = checkpoint_to_bytes(_checkpoint())
    with pytest.raises(CorruptCheckpointError):
        checkpoint_from_bytes(raw[: len(raw) // 2])
