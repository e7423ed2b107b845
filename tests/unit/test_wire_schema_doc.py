"""The published JSON Schema of the wire payload is current and describes real checkpoints."""

import json
from pathlib import Path

import jsonschema

from checkpoint import FlowCheckpoint, NodeState, PendingInput, checkpoint_to_bytes
from sidecar.openapi import wire_json_schema

DOC = Path(__file__).parents[2] / "docs" / "flowcheckpoint.schema.json"


def test_published_schema_matches_the_code() -> None:
    assert json.loads(DOC.read_text()) == wire_json_schema(), (
        "docs/flowcheckpoint.schema.json is stale: regenerate it from "
        "sidecar.openapi.wire_json_schema()"
    )


def test_a_real_checkpoint_validates_and_a_broken_one_does_not() -> None:
    cp = FlowCheckpoint(
        flow_id="f",
        run_id="r",
        seq=2,
        status="pending_input",
        original_input={"blob": b"\x00"},
        node_states={"a": NodeState(node_id="a", node_type="FunctionNode", status="succeeded")},
        pending_inputs=[PendingInput(path="review", prompt="ok?", schema={"type": "boolean"})],
    )
    doc = json.loads(checkpoint_to_bytes(cp))
    validator = jsonschema.Draft202012Validator(wire_json_schema())
    validator.validate(doc)
    doc["seq"] = "two"
    assert not validator.is_valid(doc)
