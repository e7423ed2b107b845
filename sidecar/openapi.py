"""The sidecar's OpenAPI 3.1 document, served at ``/openapi.json``.

Schemas come from the pydantic models (``model_json_schema``), so the document cannot drift
from what the handlers validate and send. The operation table below lists every route of
the sidecar, the ingest and operations routes included; a test compares it with the routes
actually registered on the application.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from checkpoint.models import CheckpointStatus, FlowCheckpoint, PendingInput
from sidecar.schemas import (
    INT64_MAX,
    USER_VALUE_DESCRIPTION,
    CheckpointCreatedEvent,
    CheckpointEnvelope,
    CheckpointList,
    ClaimRequest,
    ClaimResponse,
    ConsumeRequest,
    ConsumeResponse,
    ErrorBody,
    ExpireRequest,
    ExpireResponse,
    InputAccepted,
    InputList,
    InputReceivedEvent,
    InputRequest,
    InputRequestedEvent,
    PruneRequest,
    PruneResponse,
    ReleaseRequest,
    ReleaseResponse,
    RenewRequest,
    RenewResponse,
    RunDetail,
    RunList,
    StatusChangedEvent,
    StreamEndEvent,
)

__all__ = ["OPERATIONS", "Operation", "build_openapi", "openapi_handler"]

_REF = "#/components/schemas/{model}"
_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

_MODELS: Final[tuple[type[BaseModel], ...]] = (
    FlowCheckpoint,
    PendingInput,
    ErrorBody,
    RunList,
    RunDetail,
    CheckpointList,
    CheckpointEnvelope,
    ClaimRequest,
    ClaimResponse,
    RenewRequest,
    RenewResponse,
    ReleaseRequest,
    ReleaseResponse,
    InputRequest,
    InputAccepted,
    InputList,
    ConsumeRequest,
    ConsumeResponse,
    PruneRequest,
    PruneResponse,
    ExpireRequest,
    ExpireResponse,
    CheckpointCreatedEvent,
    StatusChangedEvent,
    InputRequestedEvent,
    InputReceivedEvent,
    StreamEndEvent,
)

# Fields holding user values, per schema: they are any JSON, codec-tagged.
_USER_FIELDS: Final = {
    "FlowCheckpoint": ("original_input", "metadata"),
    "NodeState": ("input", "output", "internal_state"),
    "PendingInput": ("metadata",),
    "InputRequest": ("answer",),
    "InputItem": ("answer",),
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }
    if where == "query" and not required:
        # The handlers read an empty value (?flow_id=) as "not set".
        param["allowEmptyValue"] = True
    return param


RUN_ID = _param("run_id", "path", {"type": "string", "pattern": _ID_PATTERN}, "the run id")
SEQ = _param(
    "seq", "path", {"type": "integer", "minimum": 0, "maximum": INT64_MAX}, "the checkpoint's seq"
)
LIMIT = _param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "page size",
)
ID_QUERY = {"type": "string", "pattern": _ID_PATTERN}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: method, path template, and what it takes and answers."""

    method: str
    path: str
    operation_id: str
    summary: str
    tags: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...] = ()
    request: type[BaseModel] | None = None
    responses: dict[int, tuple[str, Any]] = field(default_factory=dict)
    maintenance: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # extra OpenAPI keys as they are


def _errors(*codes: int) -> dict[int, tuple[str, Any]]:
    text = {
        400: "invalid id, parameter or JSON (nesting deeper than 64 is refused)",
        401: "a bearer token is required (tokens configured)",
        403: "not allowed for this token",
        404: "unknown run (or another tenant's), or no such checkpoint",
        409: "conflict",
        413: "body too large",
        415: "unsupported content type",
        422: "body or answer does not validate, or the stored checkpoint is corrupt",
        503: "the store is unavailable; retry after Retry-After",
    }
    return {c: (text[c], ErrorBody) for c in codes}


_COMMON = (400, 401, 404, 503)

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "GET",
        "/v1/runs",
        "listRuns",
        "List runs, newest first",
        ("runs",),
        (
            _param("flow_id", "query", ID_QUERY, "only runs of this flow"),
            _param(
                "status",
                "query",
                {"$ref": _REF.format(model="CheckpointStatus")},
                "only runs whose latest checkpoint has this status",
            ),
            _param(
                "tenant_id",
                "query",
                ID_QUERY,
                "only this tenant's runs (a token may name only its own)",
            ),
            LIMIT,
            _param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
        ),
        responses={200: ("a page of runs", RunList), **_errors(400, 401, 403, 503)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}",
        "getRun",
        "Run summary: status, latest seq, pending inputs, claim",
        ("runs",),
        (RUN_ID,),
        responses={200: ("the run", RunDetail), **_errors(*_COMMON)},
    ),
    Operation(
        "DELETE",
        "/v1/runs/{run_id}",
        "deleteRun",
        "Delete a run with its checkpoints and inputs",
        ("runs",),
        (RUN_ID,),
        responses={204: ("deleted", None), **_errors(*_COMMON)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/checkpoints",
        "listCheckpoints",
        "List a run's checkpoints, newest first",
        ("checkpoints",),
        (
            RUN_ID,
            LIMIT,
            _param(
                "before_seq",
                "query",
                {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                "only checkpoints with a smaller seq (pass next_cursor)",
            ),
        ),
        responses={200: ("a page of checkpoints", CheckpointList), **_errors(*_COMMON)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/checkpoints/latest",
        "getLatestCheckpoint",
        "The latest checkpoint (max seq), verified",
        ("checkpoints",),
        (RUN_ID,),
        responses={200: ("the checkpoint", CheckpointEnvelope), **_errors(*_COMMON, 422)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/checkpoints/{seq}",
        "getCheckpoint",
        "A checkpoint by seq, verified",
        ("checkpoints",),
        (RUN_ID, SEQ),
        responses={200: ("the checkpoint", CheckpointEnvelope), **_errors(*_COMMON, 422)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/claim",
        "claimRun",
        "Claim a run for resuming (lease + epoch)",
        ("claims",),
        (
            RUN_ID,
            _param(
                "include_checkpoint",
                "query",
                {"type": "boolean", "default": True},
                "send the checkpoint the claim was given",
            ),
        ),
        ClaimRequest,
        {200: ("claimed", ClaimResponse), **_errors(*_COMMON, 409, 422)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/claim/renew",
        "renewClaim",
        "Extend a held claim",
        ("claims",),
        (RUN_ID,),
        RenewRequest,
        {200: ("renewed", RenewResponse), **_errors(*_COMMON, 409, 422)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/claim/release",
        "releaseClaim",
        "Release a held claim",
        ("claims",),
        (RUN_ID,),
        ReleaseRequest,
        {200: ("released", ReleaseResponse), **_errors(*_COMMON, 409, 422)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/inputs",
        "listInputs",
        "List submitted answers",
        ("inputs",),
        (
            RUN_ID,
            _param(
                "include_consumed",
                "query",
                {"type": "boolean", "default": False},
                "also list answers already consumed",
            ),
        ),
        responses={200: ("the answers", InputList), **_errors(*_COMMON)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/inputs",
        "submitInput",
        "Answer a pending input (validated against its JSON schema)",
        ("inputs",),
        (RUN_ID,),
        InputRequest,
        {202: ("accepted", InputAccepted), **_errors(*_COMMON, 409, 413, 415, 422)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/inputs/consume",
        "consumeInputs",
        "Mark answers consumed (exactly once)",
        ("inputs",),
        (RUN_ID,),
        ConsumeRequest,
        {200: ("the paths consumed by this call", ConsumeResponse), **_errors(*_COMMON, 422)},
    ),
    Operation(
        "GET",
        "/v1/runs/{run_id}/events",
        "runEvents",
        "Server-Sent Events of a run (current state first)",
        ("events",),
        (RUN_ID,),
        responses={200: ("the event stream", "sse"), **_errors(*_COMMON)},
    ),
    Operation(
        "POST",
        "/v1/runs/{run_id}/prune",
        "pruneRun",
        "Keep the newest max_checkpoints (never the latest, pending or claimed one)",
        ("maintenance",),
        (RUN_ID,),
        PruneRequest,
        {200: ("pruned", PruneResponse), **_errors(*_COMMON, 422)},
        maintenance=True,
    ),
    Operation(
        "POST",
        "/v1/maintenance/expire",
        "expireCheckpoints",
        "Remove checkpoints older than a cutoff (never a run's latest, pending or claimed one)",
        ("maintenance",),
        (),
        ExpireRequest,
        {200: ("expired", ExpireResponse), **_errors(400, 401, 403, 422, 503)},
        maintenance=True,
    ),
    Operation(
        "POST",
        "/v1/traces",
        "exportTraces",
        "OTLP/HTTP trace export; checkpoint.save spans are stored durably",
        ("ingest",),
        responses={
            200: ("every checkpoint in the request is durable", "otlp"),
            **_errors(400, 401, 409, 413, 415, 503),
        },
        raw={"x-otlp": True},
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (OpenMetrics when asked)",
        ("ops",),
        responses={200: ("the metrics", "metrics")},
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "Liveness: the process answers",
        ("ops",),
        responses={200: ("alive", "status")},
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "Readiness: checkpoints can be made durable (the database, or the spool while it is down)",
        ("ops",),
        responses={200: ("ready", "status"), 503: ("not ready", "status")},
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        ("ops",),
        responses={200: ("the OpenAPI 3.1 document", "openapi")},
    ),
)

_SSE_EVENTS: Final = {
    "checkpoint_created": "CheckpointCreatedEvent",
    "status_changed": "StatusChangedEvent",
    "input_requested": "InputRequestedEvent",
    "input_received": "InputReceivedEvent",
    "stream_overflow": "StreamEndEvent",
    "stream_closed": "StreamEndEvent",
}

_OTLP_JSON: Final = {
    "type": "object",
    "description": (
        "OTLP/JSON ExportTraceServiceRequest (camelCase fields, bytes as base64, 64-bit "
        "integers as strings). A checkpoint is a span named checkpoint.save with the "
        "flowpoint.* attributes; flowpoint.payload is a bytesValue holding the canonical JSON "
        "of a FlowCheckpoint (see components.schemas.FlowCheckpoint)."
    ),
    # null is "unset" in the protobuf JSON mapping that OTLP/JSON follows: an empty export.
    "properties": {"resourceSpans": {"type": ["array", "null"], "items": {"type": "object"}}},
}

_CHECKPOINT_SPAN: Final = {
    "type": "object",
    "description": "The attributes of a checkpoint.save span (the wire protocol).",
    "properties": {
        "flowpoint.tenant_id": {"type": "string", "pattern": _ID_PATTERN},
        "flowpoint.flow_id": {"type": "string", "pattern": _ID_PATTERN},
        "flowpoint.run_id": {"type": "string", "pattern": _ID_PATTERN},
        "flowpoint.seq": {"type": "integer", "minimum": 0},
        "flowpoint.status": {"$ref": _REF.format(model="CheckpointStatus")},
        "flowpoint.schema_version": {"type": "integer", "minimum": 1},
        "flowpoint.epoch": {"type": "integer", "minimum": 0, "description": "0 if unclaimed"},
        "flowpoint.sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "flowpoint.payload": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "bytes: the canonical JSON of a FlowCheckpoint",
        },
    },
    "required": [
        "flowpoint.tenant_id",
        "flowpoint.flow_id",
        "flowpoint.run_id",
        "flowpoint.seq",
        "flowpoint.status",
        "flowpoint.schema_version",
        "flowpoint.epoch",
        "flowpoint.sha256",
        "flowpoint.payload",
    ],
}


def _schemas() -> dict[str, Any]:
    # Validation mode throughout: one name per model (no -Input/-Output split), and it is
    # the shape the handlers accept and emit.
    _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template=_REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    for name, fields in _USER_FIELDS.items():
        props = schemas.get(name, {}).get("properties", {})
        for f in fields:
            if f in props:
                props[f]["description"] = USER_VALUE_DESCRIPTION
    flow = schemas["FlowCheckpoint"]
    flow["description"] = (
        "The wire JSON of a checkpoint (what flowpoint.payload holds and what its sha256 "
        "covers: canonical JSON, sorted keys, compact, UTF-8). Its own fields are plain JSON; "
        'user values are any JSON, and codec tags {"$t": ...} may appear only inside them.'
    )
    schemas["CheckpointEnvelope"]["properties"]["checkpoint"] = {
        "$ref": _REF.format(model="FlowCheckpoint")
    }
    schemas.setdefault(
        "CheckpointStatus",
        {"type": "string", "enum": [s.value for s in CheckpointStatus]},
    )
    schemas["CheckpointSpanAttributes"] = copy.deepcopy(_CHECKPOINT_SPAN)
    schemas["OtlpJsonTraces"] = copy.deepcopy(_OTLP_JSON)
    return schemas


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _response(description: str, body: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if body is None:
        return out
    if isinstance(body, type) and issubclass(body, BaseModel):
        out["content"] = _json_content({"$ref": _REF.format(model=body.__name__)})
    elif body == "sse":
        out["content"] = {
            "text/event-stream": {
                # Before OpenAPI 3.2 (itemSchema), `schema` of an event stream describes one
                # event: its fields, with `data` holding the JSON of the event's model.
                "schema": {
                    "type": "object",
                    "description": (
                        "Server-Sent Events. Each event has an id, a name and JSON data. On "
                        "connect the current state is sent first: a status_changed with the "
                        "run's status and an input_requested per pending input (snapshot: "
                        "true). stream_overflow (client too slow) and stream_closed (shutdown) "
                        "end the stream: reconnect."
                    ),
                    "required": ["event", "data"],
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"enum": list(_SSE_EVENTS)},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "retry": {"type": "integer"},
                    },
                    "oneOf": [
                        {
                            "properties": {
                                "event": {"const": name},
                                "data": {"contentSchema": {"$ref": _REF.format(model=model)}},
                            }
                        }
                        for name, model in _SSE_EVENTS.items()
                    ],
                },
                "x-sse-events": {
                    name: {"$ref": _REF.format(model=model)} for name, model in _SSE_EVENTS.items()
                },
            }
        }
    elif body == "otlp":
        out["content"] = {
            "application/x-protobuf": {
                "schema": {
                    "type": "string",
                    "contentMediaType": "application/x-protobuf",
                    "description": "opentelemetry.proto ExportTraceServiceResponse",
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "OTLP/JSON ExportTraceServiceResponse",
                    "properties": {"partialSuccess": {"type": "object"}},
                }
            },
        }
    elif body == "metrics":
        text = {"type": "string"}
        out["content"] = {
            "text/plain; version=0.0.4": {"schema": text},
            "application/openmetrics-text; version=1.0.0": {"schema": text},
        }
    elif body == "status":
        out["content"] = _json_content({"type": "object", "additionalProperties": True})
    elif body == "openapi":
        out["content"] = _json_content({"type": "object"})
    else:  # pragma: no cover - a typo in the table above
        raise ValueError(f"unknown response kind {body!r}")
    return out


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
        "responses": {str(code): _response(*spec) for code, spec in op.responses.items()},
    }
    if op.parameters:
        doc["parameters"] = [copy.deepcopy(p) for p in op.parameters]
    if op.request is not None:
        # Every JSON body is read bounded and typed: too large is a 413, not JSON a 415.
        for code in (413, 415):
            doc["responses"].setdefault(str(code), _response(*_errors(code)[code]))
        doc["requestBody"] = {
            "required": True,
            "content": _json_content({"$ref": _REF.format(model=op.request.__name__)}),
        }
    if op.path == "/v1/traces":
        doc["requestBody"] = {
            "required": True,
            "description": "gzip Content-Encoding accepted; the size limit applies inflated",
            "content": {
                "application/x-protobuf": {
                    "schema": {
                        "type": "string",
                        "contentMediaType": "application/x-protobuf",
                        "description": "opentelemetry.proto ExportTraceServiceRequest",
                    }
                },
                "application/json": {"schema": {"$ref": _REF.format(model="OtlpJsonTraces")}},
            },
        }
    if "503" in doc["responses"]:
        doc["responses"]["503"]["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    if op.maintenance:
        doc["x-maintenance"] = True
        doc["description"] = (
            "Maintenance route (not part of the public contract): used by SidecarStore and "
            "operators."
        )
    if op.path.startswith("/v1/"):
        doc["security"] = [{}, {"bearerAuth": []}]
    doc.update(op.raw)
    return doc


@functools.cache
def _document() -> bytes:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Flowpoint sidecar",
            "version": "1.0.0",
            "description": (
                "Checkpoint ingest over OTLP/HTTP and the resume API. All bodies are JSON "
                'unless stated. Errors are {"error": code, "message": text}.'
            ),
        },
        "servers": [{"url": "http://127.0.0.1:4318"}],
        "tags": [
            {"name": "runs"},
            {"name": "checkpoints"},
            {"name": "claims"},
            {"name": "inputs"},
            {"name": "events"},
            {"name": "maintenance", "description": "operator routes, not the public contract"},
            {"name": "ingest"},
            {"name": "ops"},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required when the sidecar has tokens configured",
                }
            },
        },
    }
    return json.dumps(doc, sort_keys=False, separators=(",", ":")).encode("utf-8")


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document as a fresh dict."""
    result: dict[str, Any] = json.loads(_document())
    return result


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.Response(body=_document(), content_type="application/json")


def wire_json_schema() -> dict[str, Any]:
    """A standalone JSON Schema (2020-12) of the checkpoint payload, for other languages.

    The same definitions as ``components.schemas.FlowCheckpoint`` of ``/openapi.json``,
    with references rewritten to ``$defs``. ``docs/flowcheckpoint.schema.json`` is this.
    """
    schemas = build_openapi()["components"]["schemas"]
    needed = ["FlowCheckpoint", "NodeState", "NodeStatus", "PendingInput", "ParentRef"]
    needed += ["ErrorInfo", "CheckpointStatus"]
    text = json.dumps({name: schemas[name] for name in needed})
    defs = json.loads(text.replace("#/components/schemas/", "#/$defs/"))
    root = defs.pop("FlowCheckpoint")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://flowpoint.dev/schemas/flowcheckpoint.schema.json",
        "title": "FlowCheckpoint",
        **root,
        "$defs": defs,
    }
