"""Decoding OTLP/HTTP trace exports, and splitting checkpoint spans from the rest.

Both OTLP/HTTP encodings are accepted:

* ``application/x-protobuf``: an ``ExportTraceServiceRequest`` message;
* ``application/json``: the OTLP JSON mapping of the same message (lowerCamelCase field
  names, ``bytesValue`` in base64, 64-bit integers as strings, and trace/span ids in hex,
  as the OTLP specification requires; snake_case names are accepted too).

A span named ``checkpoint.save`` is a checkpoint: its ``flowpoint.*`` attributes are
checked against the wire contract and it becomes a :class:`CheckpointSpan`. Every other span
is telemetry that the sidecar forwards (or counts and drops). Nothing here verifies the
payload itself: that is the ingest's job.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from checkpoint.errors import ErrorCode, FlowpointError, InvalidIdError
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus

__all__ = [
    "ATTR",
    "CHECKPOINT_SPAN_NAME",
    "JSON",
    "PROTOBUF",
    "CheckpointSpan",
    "DecodedTraces",
    "InvalidCheckpointSpanError",
    "MalformedRequestError",
    "OtlpError",
    "decode_json",
    "decode_protobuf",
    "encode_response",
    "other_spans_request",
]

CHECKPOINT_SPAN_NAME: Final = "checkpoint.save"
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"


class ATTR:
    """The attribute keys of the checkpoint span (public contract)."""

    TENANT_ID: Final = "flowpoint.tenant_id"
    FLOW_ID: Final = "flowpoint.flow_id"
    RUN_ID: Final = "flowpoint.run_id"
    SEQ: Final = "flowpoint.seq"
    STATUS: Final = "flowpoint.status"
    SCHEMA_VERSION: Final = "flowpoint.schema_version"
    EPOCH: Final = "flowpoint.epoch"
    SHA256: Final = "flowpoint.sha256"
    PAYLOAD: Final = "flowpoint.payload"


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# OTLP ints are int64 and so are the store's columns; only a double can carry more.
_INT64_MAX: Final = 2**63 - 1
_STATUSES: Final = frozenset(s.value for s in CheckpointStatus)


class OtlpError(FlowpointError, ValueError):
    """A trace export that cannot be accepted. ``reason`` is the metrics label."""

    reason: str = "malformed"
    code: ErrorCode = ErrorCode.MALFORMED_REQUEST


class MalformedRequestError(OtlpError):
    """The body is not a valid OTLP ExportTraceServiceRequest in the declared encoding."""


class InvalidCheckpointSpanError(OtlpError):
    """A ``checkpoint.save`` span lacks a required attribute, or one has the wrong type."""

    reason = "invalid_attributes"
    code = ErrorCode.INVALID_CHECKPOINT


@dataclass(slots=True)
class CheckpointSpan:
    """One ``checkpoint.save`` span, its attributes checked against the contract.

    ``payload`` is the canonical JSON of a FlowCheckpoint, not yet verified;
    ``trace_id`` / ``span_id`` are lowercase hex, empty when the span carried none.
    """

    tenant_id: str
    flow_id: str
    run_id: str
    seq: int
    status: CheckpointStatus
    schema_version: int
    epoch: int
    sha256: str
    payload: bytes
    start_time_unix_nano: int
    trace_id: str
    span_id: str

    @property
    def key(self) -> str:
        """``run_id#seq``, for messages and logs."""
        return f"{self.run_id}#{self.seq}"


@dataclass(slots=True)
class DecodedTraces:
    """A decoded export: its checkpoint spans, and how many other spans it holds."""

    request: ExportTraceServiceRequest
    checkpoints: list[CheckpointSpan]
    other_spans: int


# -- decoding ------------------------------------------------------------------------------


def decode_protobuf(body: bytes) -> DecodedTraces:
    """Decode an OTLP protobuf export. Raises :class:`OtlpError` on any bad input."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedRequestError(
            f"the body is not an OTLP ExportTraceServiceRequest protobuf: {exc}"
        ) from exc
    return _split(request)


def decode_json(body: bytes) -> DecodedTraces:
    """Decode an OTLP JSON export. Raises :class:`OtlpError` on any bad input."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedRequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedRequestError("an OTLP JSON export must be a JSON object")
    _hex_ids_to_base64(doc)
    _check_shapes(doc)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedRequestError(f"the body is not an OTLP JSON trace export: {exc}") from exc
    return _split(request)


def encode_response(content_type: str) -> tuple[bytes, str]:
    """An empty ``ExportTraceServiceResponse`` (full success) in the request's encoding."""
    if content_type == JSON:
        return b"{}", JSON
    return _EMPTY_RESPONSE, PROTOBUF


# Answered on every accepted export: serialized once, not per request.
_EMPTY_RESPONSE: Final = ExportTraceServiceResponse().SerializeToString()


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    # protobuf's JSON mapping reads `bytes` fields as base64, but OTLP JSON writes trace and
    # span ids in hex: convert them where the OTLP schema puts them.
    for rs in _items(doc, "resourceSpans", "resource_spans"):
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            for span in _items(ss, "spans"):
                _fix_ids(span, ("traceId", "trace_id", "spanId", "span_id"))
                _fix_ids(span, ("parentSpanId", "parent_span_id"))
                for link in _items(span, "links"):
                    _fix_ids(link, ("traceId", "trace_id", "spanId", "span_id"))


def _check_shapes(doc: dict[str, Any]) -> None:
    # protobuf's ParseDict iterates whatever it is given for a message: {"resourceSpans":
    # ["AAA"]} would parse as one empty ResourceSpans and the export answer 200 with the
    # client's checkpoints silently gone. Every message must be an object, every repeated
    # message field an array (null is "unset" in the JSON mapping). Iterative: no depth limit.
    stack: list[tuple[Any, Any, str]] = [(doc, ExportTraceServiceRequest.DESCRIPTOR, "body")]
    while stack:
        value, descriptor, where = stack.pop()
        if not isinstance(value, dict):
            raise MalformedRequestError(
                f"OTLP JSON {where} must be an object ({descriptor.name}), got "
                f"{type(value).__name__}"
            )
        for key, item in value.items():
            field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(
                key
            )
            if field is None or field.message_type is None or item is None:
                continue
            path = f"{where}.{key}"
            if field.is_repeated:
                if not isinstance(item, list):
                    raise MalformedRequestError(
                        f"OTLP JSON {path} must be an array, got {type(item).__name__}"
                    )
                stack.extend(
                    (element, field.message_type, f"{path}[{i}]") for i, element in enumerate(item)
                )
            else:
                stack.append((item, field.message_type, path))


def _items(obj: Any, *names: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    for name in names:
        value = obj.get(name)
        if isinstance(value, list):
            return value
    return []


def _fix_ids(obj: Any, names: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        return
    for name in names:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            continue
        if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
            obj[name] = base64.b64encode(binascii.unhexlify(value)).decode("ascii")
        else:
            raise MalformedRequestError(
                f"OTLP JSON {name} must be {'32' if 'race' in name else '16'} hex digits, "
                f"got {value[:40]!r}"
            )


# -- splitting -----------------------------------------------------------------------------


def _split(request: ExportTraceServiceRequest) -> DecodedTraces:
    checkpoints: list[CheckpointSpan] = []
    others = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.name == CHECKPOINT_SPAN_NAME:
                    checkpoints.append(_checkpoint_span(span))
                else:
                    others += 1
    return DecodedTraces(request=request, checkpoints=checkpoints, other_spans=others)


def other_spans_request(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """A copy of ``request`` without its checkpoint spans (payloads never leave the pod)."""
    out = ExportTraceServiceRequest()
    for rs in request.resource_spans:
        kept_rs = None
        for ss in rs.scope_spans:
            kept_ss = None
            for span in ss.spans:
                if span.name == CHECKPOINT_SPAN_NAME:
                    continue
                if kept_rs is None:
                    kept_rs = out.resource_spans.add()
                    kept_rs.resource.CopyFrom(rs.resource)
                    kept_rs.schema_url = rs.schema_url
                if kept_ss is None:
                    kept_ss = kept_rs.scope_spans.add()
                    kept_ss.scope.CopyFrom(ss.scope)
                    kept_ss.schema_url = ss.schema_url
                kept_ss.spans.add().CopyFrom(span)
    return out


def _checkpoint_span(span: Any) -> CheckpointSpan:
    attrs: dict[str, AnyValue] = {
        kv.key: kv.value for kv in span.attributes if kv.key.startswith("flowpoint.")
    }
    where = _Where(attrs)
    try:
        tenant_id = validate_id(_string(attrs, ATTR.TENANT_ID, where), "flowpoint.tenant_id")
        flow_id = validate_id(_string(attrs, ATTR.FLOW_ID, where), "flowpoint.flow_id")
        run_id = validate_id(_string(attrs, ATTR.RUN_ID, where), "flowpoint.run_id")
    except InvalidIdError as exc:
        raise InvalidCheckpointSpanError(f"checkpoint span{where}: {exc}") from exc
    seq = _int(attrs, ATTR.SEQ, where, minimum=0)
    status = _string(attrs, ATTR.STATUS, where)
    if status not in _STATUSES:
        raise InvalidCheckpointSpanError(
            f"checkpoint span{where}: {ATTR.STATUS} {status!r} is not one of "
            f"{', '.join(sorted(_STATUSES))}"
        )
    schema_version = _int(attrs, ATTR.SCHEMA_VERSION, where, minimum=1)
    epoch = _int(attrs, ATTR.EPOCH, where, minimum=0)
    sha = _string(attrs, ATTR.SHA256, where)
    if not _SHA256.fullmatch(sha):
        raise InvalidCheckpointSpanError(
            f"checkpoint span{where}: {ATTR.SHA256} must be 64 hex digits (the SHA-256 of "
            "the payload bytes)"
        )
    return CheckpointSpan(
        tenant_id=tenant_id,
        flow_id=flow_id,
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus(status),
        schema_version=schema_version,
        epoch=epoch,
        sha256=sha.lower(),
        payload=_payload(attrs, where),
        start_time_unix_nano=int(span.start_time_unix_nano),
        trace_id=_hex_id(span.trace_id),
        span_id=_hex_id(span.span_id),
    )


class _Where:
    """`` run#seq`` for error messages, formatted only when a message is built."""

    __slots__ = ("_attrs",)

    def __init__(self, attrs: dict[str, AnyValue]) -> None:
        self._attrs = attrs

    def __str__(self) -> str:
        return _where(self._attrs)

    def __format__(self, spec: str) -> str:
        return format(_where(self._attrs), spec)


def _where(attrs: dict[str, AnyValue]) -> str:
    run = attrs.get(ATTR.RUN_ID)
    seq = attrs.get(ATTR.SEQ)
    if run is None or run.WhichOneof("value") != "string_value":
        return ""
    suffix = f"#{seq.int_value}" if seq is not None and seq.WhichOneof("value") else ""
    return f" {run.string_value[:128]}{suffix}"


def _missing(key: str, where: _Where, expected: str) -> InvalidCheckpointSpanError:
    return InvalidCheckpointSpanError(
        f"checkpoint span{where} has no {key} attribute ({expected} required by the "
        "checkpoint span contract)"
    )


def _wrong(key: str, where: _Where, expected: str, value: AnyValue) -> InvalidCheckpointSpanError:
    kind = value.WhichOneof("value") or "empty"
    return InvalidCheckpointSpanError(
        f"checkpoint span{where}: {key} must be {expected}, got {kind.removesuffix('_value')}"
    )


def _string(attrs: dict[str, AnyValue], key: str, where: _Where) -> str:
    value = attrs.get(key)
    if value is None:
        raise _missing(key, where, "a string")
    if value.WhichOneof("value") != "string_value":
        raise _wrong(key, where, "a string", value)
    return str(value.string_value)


def _int(
    attrs: dict[str, AnyValue], key: str, where: _Where, *, minimum: int, maximum: int = _INT64_MAX
) -> int:
    value = attrs.get(key)
    if value is None:
        raise _missing(key, where, "an int")
    kind = value.WhichOneof("value")
    if kind == "int_value":
        number = int(value.int_value)
    elif kind == "double_value" and float(value.double_value).is_integer():
        # Some SDKs send every number as a double; an integral one is accepted.
        number = int(value.double_value)
    else:
        raise _wrong(key, where, "an int", value)
    if number < minimum:
        raise InvalidCheckpointSpanError(f"checkpoint span{where}: {key} must be >= {minimum}")
    if number > maximum:
        raise InvalidCheckpointSpanError(f"checkpoint span{where}: {key} must be <= {maximum}")
    return number


def _payload(attrs: dict[str, AnyValue], where: _Where) -> bytes:
    value = attrs.get(ATTR.PAYLOAD)
    if value is None:
        raise _missing(ATTR.PAYLOAD, where, "bytes")
    kind = value.WhichOneof("value")
    if kind == "bytes_value":
        return bytes(value.bytes_value)
    if kind == "string_value":
        # SDKs without bytes attributes can send the canonical JSON as a string: it is
        # UTF-8 text, so its bytes are exactly the hashed ones.
        return str(value.string_value).encode("utf-8")
    raise _wrong(ATTR.PAYLOAD, where, "bytes", value)


def _hex_id(raw: bytes) -> str:
    return raw.hex() if raw and any(raw) else ""
