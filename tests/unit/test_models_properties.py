"""FlowCheckpoint wire format: exact round trips of user values, tags only where they belong."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import (
    CheckpointStatus,
    CodecError,
    CorruptCheckpointError,
    ErrorInfo,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    ParentRef,
    PendingInput,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from checkpoint.codec import TAG
from tests.unit.test_codec_strategies import exactly_equal, str_key_dicts, values

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True).filter(
    lambda s: ".." not in s
)
aware = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
# JSON schemas are plain JSON (not codec values): no "$t" keys, no tagged types.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8).filter(lambda k: k != TAG), inner, max_size=3)
    ),
    max_leaves=8,
)

node_states = st.builds(
    NodeState,
    node_id=ids,
    node_type=st.sampled_from(["FunctionNode", "Agent", "Map", "HumanInput", "SubFlow"]),
    status=st.sampled_from(list(NodeStatus)),
    input=values,
    output=values,
    error=st.none() | st.builds(ErrorInfo, type=st.text(max_size=20), message=st.text()),
    internal_state=str_key_dicts,
    attempts=st.integers(0, 10),
    started_at=st.none() | aware,
    finished_at=st.none() | aware,
)
pending = st.builds(
    PendingInput,
    path=st.text(min_size=1, max_size=30),
    prompt=st.text(),
    schema=st.none() | st.dictionaries(st.text(max_size=8).filter(lambda k: k != TAG), json_values),
    metadata=str_key_dicts,
    requested_at=aware,
)


@st.composite
def checkpoints(draw: st.DrawFn) -> FlowCheckpoint:
    states = draw(st.lists(node_states, max_size=3, unique_by=lambda n: n.node_id))
    return FlowCheckpoint(
        tenant_id=draw(ids),
        flow_id=draw(ids),
        run_id=draw(ids),
        seq=draw(st.integers(0, 2**40)),
        status=draw(st.sampled_from(list(CheckpointStatus))),
        graph_fingerprint=draw(st.text(max_size=64)),
        node_states={s.node_id: s for s in states},
        original_input=draw(values),
        pending_inputs=draw(st.lists(pending, max_size=2)),
        parent=draw(st.none() | st.builds(ParentRef, run_id=ids, seq=st.integers(0, 1000))),
        created_at=draw(aware),
        trace_context=draw(st.none() | st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01")),
        metadata=draw(str_key_dicts),
    )


USER_FIELDS = {"original_input", "metadata"}
NODE_USER_FIELDS = {"input", "output", "internal_state"}
PENDING_USER_FIELDS = {"metadata"}


def _tagged_paths(value: Any, path: str = "$") -> list[str]:
    """Paths of every dict in ``value`` that carries a codec tag key."""
    found: list[str] = []
    if isinstance(value, dict):
        if TAG in value:
            found.append(path)
        for key, item in value.items():
            found += _tagged_paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _tagged_paths(item, f"{path}[{i}]")
    return found


def tags_outside_user_values(doc: dict[str, Any]) -> list[str]:
    """Codec tags found in the model's own fields (there must be none)."""
    found: list[str] = []
    for key, value in doc.items():
        if key == "node_states":
            for node_id, state in value.items():
                for field, item in state.items():
                    if field not in NODE_USER_FIELDS:
                        found += _tagged_paths(item, f"$.node_states.{node_id}.{field}")
        elif key == "pending_inputs":
            for i, request in enumerate(value):
                for field, item in request.items():
                    if field not in PENDING_USER_FIELDS:
                        found += _tagged_paths(item, f"$.pending_inputs[{i}].{field}")
        elif key not in USER_FIELDS:
            found += _tagged_paths(value, f"$.{key}")
    return found


def assert_same_checkpoint(back: FlowCheckpoint, cp: FlowCheckpoint) -> None:
    assert exactly_equal(back.original_input, cp.original_input)
    assert exactly_equal(back.metadata, cp.metadata)
    # Canonical JSON sorts keys, so node_states come back ordered by node id.
    assert list(back.node_states) == sorted(cp.node_states)
    for node_id, state in cp.node_states.items():
        got = back.node_states[node_id]
        for field in NODE_USER_FIELDS:
            assert exactly_equal(getattr(got, field), getattr(state, field)), (node_id, field)
        assert got.model_dump(exclude=NODE_USER_FIELDS) == state.model_dump(
            exclude=NODE_USER_FIELDS
        )
    assert len(back.pending_inputs) == len(cp.pending_inputs)
    for got_input, want_input in zip(back.pending_inputs, cp.pending_inputs, strict=True):
        assert exactly_equal(got_input.metadata, want_input.metadata)
        assert got_input.model_dump(exclude={"metadata"}) == want_input.model_dump(
            exclude={"metadata"}
        )
    plain = {"original_input", "metadata", "node_states", "pending_inputs"}
    assert back.model_dump(exclude=plain) == cp.model_dump(exclude=plain)


@PROPERTY
@given(checkpoints())
def test_wire_round_trip_is_exact_and_tags_stay_in_user_values(cp: FlowCheckpoint) -> None:
    # One property for both checks: drawing checkpoints is the expensive part.
    raw = checkpoint_to_bytes(cp)
    back = checkpoint_from_bytes(raw)
    assert_same_checkpoint(back, cp)
    assert checkpoint_to_bytes(back) == raw
    doc = json.loads(raw)
    assert tags_outside_user_values(doc) == []
    assert doc["created_at"].endswith("Z") or doc["created_at"].endswith("+00:00")
    assert doc["status"] == cp.status.value


def test_the_tag_walker_finds_misplaced_tags() -> None:
    # The walker must be able to fail, or the property above proves nothing.
    doc = {
        "run_id": "r",
        "original_input": {TAG: "bytes", "v": ""},
        "parent": {"run_id": {TAG: "uuid", "v": "0" * 32}},
        "node_states": {"a": {"output": {TAG: "set", "v": []}, "error": [{TAG: "tuple", "v": []}]}},
        "pending_inputs": [{"metadata": {TAG: "map", "v": []}, "schema": {"x": {TAG: "x"}}}],
    }
    assert tags_outside_user_values(doc) == [
        "$.parent.run_id",
        "$.node_states.a.error[0]",
        "$.pending_inputs[0].schema.x",
    ]


def test_user_values_that_look_like_tags_stay_user_values() -> None:
    lookalike = {TAG: "bytes", "v": "AA=="}
    cp = FlowCheckpoint(
        flow_id="f",
        run_id="r",
        seq=1,
        original_input=lookalike,
        metadata={TAG: "enum", "cls": "os:system", "v": "echo"},
        node_states={
            "n": NodeState(
                node_id="n",
                node_type="FunctionNode",
                status=NodeStatus.SUCCEEDED,
                internal_state=lookalike,
            )
        },
    )
    back = checkpoint_from_bytes(checkpoint_to_bytes(cp))
    assert back.original_input == lookalike
    assert back.metadata == {TAG: "enum", "cls": "os:system", "v": "echo"}
    assert back.node_states["n"].internal_state == lookalike


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (lambda bad: {"original_input": {"a": [1, bad]}}, r"\$\.original_input\.a\[1\]"),
        (lambda bad: {"metadata": {"k": bad}}, r"\$\.metadata\.k"),
        (
            lambda bad: {
                "node_states": {
                    "fetch": NodeState(
                        node_id="fetch",
                        node_type="FunctionNode",
                        status=NodeStatus.RUNNING,
                        output=bad,
                    )
                }
            },
            r"\$\.node_states\.fetch\.output",
        ),
        (
            lambda bad: {
                "node_states": {
                    "agent": NodeState(
                        node_id="agent",
                        node_type="Agent",
                        status=NodeStatus.RUNNING,
                        internal_state={"messages": [{"tool": bad}]},
                    )
                }
            },
            r"\$\.node_states\.agent\.internal_state\.messages\[0\]\.tool",
        ),
        (
            lambda bad: {
                "pending_inputs": [PendingInput(path="review", prompt="ok?", metadata={"x": bad})]
            },
            r"\$\.pending_inputs\[review\]\.metadata\.x",
        ),
    ],
)
def test_unsupported_user_values_name_the_field(build: Any, where: str) -> None:
    class Connection:
        pass

    cp = FlowCheckpoint(flow_id="f", run_id="r", seq=0, **build(Connection()))
    with pytest.raises(CodecError, match=f"type .*Connection at {where}"):
        checkpoint_to_bytes(cp)


def test_too_deep_user_values_are_a_codec_error() -> None:
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    with pytest.raises(CodecError, match=r"\$\.original_input.*nested deeper than 200"):
        checkpoint_to_bytes(FlowCheckpoint(flow_id="f", run_id="r", seq=0, original_input=deep))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"flow_id":"f","run_id":"r","seq":0,"original_input":'
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}",
        b'{"flow_id":"f","run_id":"r","seq":0,"original_input":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"flow_id":"f","run_id":"r","seq":0,"original_input":{"$t":"nope","v":1}}',
        b'{"flow_id":"f","run_id":"r","seq":0,"metadata":{"$t":"uuid","v":5}}',
        b'{"flow_id":"f","run_id":"r","seq":0,"node_states":{"a":{"node_id":"a","node_type":"x",'
        b'"status":"succeeded","output":{"$t":"enum","cls":"nowhere:X","v":1}}}}',
        b'{"flow_id":"f","run_id":"../etc","seq":0}',
        b"[1,2]",
        b"\xff",
    ],
)
def test_hostile_wire_bytes_are_corrupt_checkpoints(raw: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        checkpoint_from_bytes(raw)
