"""The retention policy travelling flow -> checkpoint metadata -> summary -> sidecar task."""

from __future__ import annotations

from typing import Any

import pytest

from checkpoint.retention import (
    DEFAULT_MAX_CHECKPOINTS,
    SUMMARY_KEY,
    RetentionPolicy,
    policy_from_summary,
    policy_metadata,
    policy_summary,
)
from checkpoint.store import summarize
from flows import Flow, FunctionNode
from sidecar.config import Settings, parse_duration
from tests.conformance.builders import checkpoint


def test_only_values_off_the_defaults_are_written() -> None:
    assert policy_metadata(DEFAULT_MAX_CHECKPOINTS, None) == {}
    assert policy_metadata(3, None) == {"max_checkpoints": 3}
    assert policy_metadata(None, 1.5) == {"max_checkpoints": None, "retention_days": 1.5}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, None),
        ({"event": "node"}, None),
        ({"max_checkpoints": 3}, {"max_checkpoints": 3}),
        ({"max_checkpoints": None}, {"max_checkpoints": None}),
        ({"retention_days": 2}, {"retention_days": 2.0}),
        # the user's metadata may hold anything: malformed values are ignored
        ({"max_checkpoints": 0}, None),
        ({"max_checkpoints": True}, None),
        ({"max_checkpoints": "5"}, None),
        ({"retention_days": -1}, None),
        ({"retention_days": float("nan")}, None),
    ],
)
def test_summary_picks_valid_entries(metadata: dict[str, Any], expected: Any) -> None:
    assert policy_summary(metadata) == expected


def test_policy_from_summary_falls_back_to_defaults() -> None:
    assert policy_from_summary(None) == RetentionPolicy(10, None)
    assert policy_from_summary({}, default_max_checkpoints=4, default_retention_days=9) == (
        RetentionPolicy(4, 9)
    )
    summary = {SUMMARY_KEY: {"max_checkpoints": None, "retention_days": 1.0}}
    assert policy_from_summary(summary, default_max_checkpoints=4) == RetentionPolicy(None, 1.0)
    bad = {SUMMARY_KEY: {"max_checkpoints": -2, "retention_days": "x"}}
    assert policy_from_summary(bad, default_max_checkpoints=4) == RetentionPolicy(4, None)
    assert policy_from_summary({SUMMARY_KEY: "nope"}) == RetentionPolicy()


def test_the_store_summary_carries_the_policy() -> None:
    cp = checkpoint("run-1", 0).model_copy(update={"metadata": {"max_checkpoints": 2}})
    assert summarize(cp)[SUMMARY_KEY] == {"max_checkpoints": 2}
    assert SUMMARY_KEY not in summarize(checkpoint("run-1", 0))


async def test_a_flow_writes_its_policy_into_checkpoint_metadata() -> None:
    from checkpoint import CheckpointConfig
    from checkpoint.stores import MemoryStore

    store = MemoryStore()
    nodes = [FunctionNode(id="a", fn=lambda inputs: 1)]
    custom = Flow(
        id="f",
        nodes=nodes,
        checkpoint=CheckpointConfig(enabled=True, store=store, max_checkpoints=3, retention_days=7),
    )
    await custom.run({}, run_id="custom")
    cp = await store.get("custom")
    assert cp is not None
    assert cp.metadata["max_checkpoints"] == 3 and cp.metadata["retention_days"] == 7
    record = await store.get_sealed("custom")
    assert record is not None
    assert record.summary[SUMMARY_KEY] == {"max_checkpoints": 3, "retention_days": 7.0}

    plain = Flow(id="g", nodes=nodes, checkpoint=CheckpointConfig(enabled=True, store=store))
    await plain.run({}, run_id="plain")
    cp = await store.get("plain")
    assert cp is not None and "max_checkpoints" not in cp.metadata


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60", 60.0), ("60s", 60.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert Settings(retention_interval=text).retention_interval == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["soon", "5 minutes", "inf", "1e999s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
