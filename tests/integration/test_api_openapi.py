"""/openapi.json: a valid OpenAPI 3.1 document listing every route of the running sidecar."""

from __future__ import annotations

from typing import Any

import aiohttp
import jsonschema
from openapi_spec_validator import validate

from checkpoint import checkpoint_to_bytes
from tests.conformance.builders import checkpoint, rich_values
from tests.fixtures.sidecar_store import RunningSidecar

USER_VALUE = 'any JSON; codec tags {"$t": ...} may appear only here'


async def _doc(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get("openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_document_is_valid_openapi_3_1(http: aiohttp.ClientSession) -> None:
    doc = await _doc(http)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


async def test_every_registered_route_is_documented_and_nothing_else(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    doc = await _doc(http)
    registered = set()
    for route in sidecar_app.app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue  # added implicitly by aiohttp for GET routes
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route without a path: {route!r}"
        registered.add((route.method.lower(), path))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert registered - documented == set(), "routes missing from /openapi.json"
    assert documented - registered == set(), "documented routes that the app does not serve"
    for required in ("/v1/traces", "/metrics", "/healthz", "/readyz", "/openapi.json"):
        assert required in doc["paths"]


async def test_request_and_response_schemas_come_from_the_models(
    http: aiohttp.ClientSession,
) -> None:
    doc = await _doc(http)
    schemas = doc["components"]["schemas"]
    claim = doc["paths"]["/v1/runs/{run_id}/claim"]["post"]
    assert claim["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClaimRequest"
    }
    assert set(schemas["ClaimRequest"]["required"]) == {"worker_id", "lease_seconds"}
    assert set(claim["responses"]) >= {"200", "404", "409"}
    traces = doc["paths"]["/v1/traces"]["post"]
    assert set(traces["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert set(traces["responses"]) >= {"200", "400", "409", "413", "415", "503"}
    for path, op in (
        ("/v1/runs/{run_id}/prune", "post"),
        ("/v1/maintenance/expire", "post"),
    ):
        assert doc["paths"][path][op]["x-maintenance"] is True
        assert "maintenance" in doc["paths"][path][op]["tags"]
    events = doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(events["text/event-stream"]["x-sse-events"]) >= {
        "checkpoint_created",
        "status_changed",
        "input_requested",
        "input_received",
    }


async def test_flow_checkpoint_schema_documents_user_values_and_validates_the_wire_json(
    http: aiohttp.ClientSession,
) -> None:
    doc = await _doc(http)
    schemas = doc["components"]["schemas"]
    flow = schemas["FlowCheckpoint"]
    for name in ("original_input", "metadata"):
        assert flow["properties"][name]["description"] == USER_VALUE
    for name in ("input", "output", "internal_state"):
        assert schemas["NodeState"]["properties"][name]["description"] == USER_VALUE
    assert schemas["PendingInput"]["properties"]["metadata"]["description"] == USER_VALUE
    assert schemas["InputRequest"]["properties"]["answer"]["description"] == USER_VALUE

    # the schema accepts a real wire payload (codec tags in user values) ...
    cp = checkpoint("run-1", 2, output=rich_values(), pending=["review"])
    import json

    wire = json.loads(checkpoint_to_bytes(cp))
    resolver_doc = {"$defs": schemas, **flow}
    text = json.dumps(resolver_doc).replace("#/components/schemas/", "#/$defs/")
    jsonschema.Draft202012Validator(json.loads(text)).validate(wire)
    # ... and refuses one whose own fields are wrong
    wire["seq"] = -1
    errors = list(jsonschema.Draft202012Validator(json.loads(text)).iter_errors(wire))
    assert errors
