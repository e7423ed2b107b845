"""The checkpoint emitter: one ``checkpoint.save`` span per checkpoint, acknowledged.

OpenTelemetry's usual pipeline (BatchSpanProcessor + exporter) is lossy by
design: it queues spans in memory, drops them when full and never tells the
caller. Checkpoints are data, so this emitter builds each span on a dedicated
SDK TracerProvider (never the global one; always-on sampler; no attribute
limits; immune to ``OTEL_SDK_DISABLED``), encodes it with the standard OTLP
protobuf encoder and POSTs it to the sidecar itself, and returns only when the
sidecar answered. Concurrent checkpoints share a request when every request slot
is busy (see :class:`CheckpointEmitter`). With an ``outbox_dir``
the record is on disk before the first send and leaves it only on an answer,
so a killed worker loses nothing that was not already reported to it.

Answers (see :mod:`instrumentation.errors`): 200 -> :class:`EmitAck`;
400/413/415 -> ``EmitRejected``; 409 -> ``EmitConflict``; 401/403 ->
``EmitUnauthorized``; 429/502/503/504 and connection errors are retried with
exponential backoff and jitter, honouring ``Retry-After``, for up to
``max_retry_seconds``, then ``EmitUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

import aiohttp
from multidict import CIMultiDict
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
    _encode_value,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    _SPAN_KIND_MAP,
    _span_flags,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    InstrumentationScope as PB2InstrumentationScope,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PB2Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.re import parse_env_headers
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_before_delay
from tenacity.wait import wait_exponential_jitter

from instrumentation.errors import (
    EmitArgumentError,
    EmitConflict,
    EmitError,
    EmitRejected,
    EmitUnauthorized,
    EmitUnavailable,
    OutboxError,
)
from instrumentation.outbox import AttributeValue, CorruptRecordError, Outbox, OutboxRecord

__all__ = ["DEFAULT_ENDPOINT", "SPAN_NAME", "CheckpointEmitter", "EmitAck"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:4318/v1/traces"
SPAN_NAME: Final = "checkpoint.save"
PAYLOAD_ATTR: Final = "flowpoint.payload"
SHA256_ATTR: Final = "flowpoint.sha256"
#: The sidecar's answer header naming each checkpoint's outcome (stored, duplicate, spooled);
#: checkpoint.stores.sidecar.OUTCOME_HEADER, restated: instrumentation imports no checkpoint.
OUTCOME_HEADER: Final = "Flowpoint-Outcome"
_SCOPE: Final = "flowpoint.checkpoint"
_CONTENT_TYPE: Final = "application/x-protobuf"
_RETRYABLE: Final = frozenset({429, 502, 503, 504})
_REJECTED: Final = frozenset({400, 413, 415})
_UNAUTHORIZED: Final = frozenset({401, 403})
_SHA256_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_MAX_MESSAGE: Final = 2000
_PLACEHOLDER: Final = b""

# Explicitly unlimited, so OTEL_ATTRIBUTE_*_LIMIT / OTEL_SPAN_ATTRIBUTE_*_LIMIT in the
# environment cannot truncate or drop checkpoint attributes.
_UNLIMITED = SpanLimits(
    max_attributes=SpanLimits.UNSET,
    max_span_attributes=SpanLimits.UNSET,
    max_attribute_length=SpanLimits.UNSET,
    max_span_attribute_length=SpanLimits.UNSET,
)
_propagator = TraceContextTextMapPropagator()
_SCOPE_INFO: Final = InstrumentationScope(_SCOPE)  # what provider.get_tracer(_SCOPE) records
_SAMPLED: Final = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_UNSET: Final = Status(StatusCode.UNSET)


@dataclass(frozen=True, slots=True)
class EmitAck:
    """The sidecar's acknowledgement: the checkpoint is durable."""

    key: str
    status: int
    #: seconds from the emit() call (or the replay) to the acknowledgement
    elapsed: float
    attempts: int
    trace_id: str
    span_id: str
    headers: Mapping[str, str]
    body: bytes


class _Retry(Exception):
    """A retryable outcome (not durable yet); becomes EmitUnavailable when time runs out."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        error: str | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.error = error
        self.body = body


@dataclass(slots=True, eq=False)
class _Queued:
    """A checkpoint waiting for a free request slot, to share a request with others."""

    span: ReadableSpan
    payload: bytes
    key: str
    name: str | None  # its outbox record
    started: float
    future: asyncio.Future[EmitAck]


class _Lane:
    """The requests of one event loop: how many are in flight, and who waits for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: int) -> None:
        self.loop = loop
        self.slots = slots
        self.active = 0
        self.queue: deque[_Queued] = deque()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def free(self) -> bool:
        """A request may start now without overtaking anyone."""
        return self.active < self.slots and not self.queue


class _CheckpointTracerProvider(TracerProvider):
    """The dedicated provider of checkpoint spans (their resource and ids), never disabled.

    OTEL_SDK_DISABLED turns telemetry off; checkpoints are not telemetry, and a
    disabled provider would hand out a no-op tracer that silently records
    nothing. The tests pin this behaviour, so an SDK change cannot slip by.
    """

    def __init__(self, *, service_name: str) -> None:
        super().__init__(
            sampler=ALWAYS_ON,
            resource=Resource.create({"service.name": service_name}),
            shutdown_on_exit=False,
            span_limits=_UNLIMITED,
        )
        self._disabled = False


def _env_headers() -> dict[str, str]:
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    )
    headers = dict(parse_env_headers(raw, liberal=True)) if raw.strip() else {}
    token = os.environ.get("FLOWPOINT_TOKEN", "").strip()
    if token and not any(k.lower() == "authorization" for k in headers):
        headers["authorization"] = f"Bearer {token}"
    return headers


def _merge_headers(explicit: Mapping[str, str] | None) -> dict[str, str]:
    headers = _env_headers()
    for name, value in (explicit or {}).items():
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    for existing in [k for k in headers if k.lower() == "content-type"]:
        del headers[existing]
    headers["Content-Type"] = _CONTENT_TYPE
    return headers


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def describe_answer(body: bytes, content_type: str) -> tuple[str, str | None]:
    """The human message and error code in a sidecar/collector error body.

    Understands Flowpoint's JSON errors (``{"error", "message"}``), OTLP's
    protobuf ``google.rpc.Status`` and plain text.
    """
    if not body:
        return "", None
    if "json" in content_type:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            message, code = doc.get("message"), doc.get("error")
            if isinstance(code, dict):  # {"error": {"code": .., "message": ..}}
                message = message or code.get("message")
                code = code.get("code") or code.get("status")
            text = message if isinstance(message, str) else json.dumps(doc)[:_MAX_MESSAGE]
            return text, str(code) if code is not None else None
    if "protobuf" in content_type:
        try:
            # googleapis-common-protos comes with the OTLP exporter packages
            from google.rpc.status_pb2 import Status

            status = Status.FromString(body)
        except Exception:  # ImportError, or protobuf's DecodeError (a bare Exception)
            status = None
        if status is not None and status.message:
            return status.message, None
    return body[:_MAX_MESSAGE].decode("utf-8", "replace").strip(), None


def _rejected_spans(body: bytes, content_type: str) -> str | None:
    """The partial-success rejection in a 200 answer, or None when everything was taken."""
    if not body:
        return None
    if "protobuf" in content_type:
        try:
            answer = ExportTraceServiceResponse.FromString(body)
        except Exception:  # DecodeError: not an OTLP answer, nothing to read
            return None
        partial = answer.partial_success
        if partial.rejected_spans > 0:
            return partial.error_message or f"{partial.rejected_spans} span(s) rejected"
    elif "json" in content_type:
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        partial = doc.get("partialSuccess") if isinstance(doc, dict) else None
        rejected = partial.get("rejectedSpans") if isinstance(partial, dict) else None
        if isinstance(partial, dict) and str(rejected or 0).isdigit() and int(rejected or 0) > 0:
            return str(partial.get("errorMessage") or f"{rejected} span(s) rejected")
    return None


@functools.lru_cache(maxsize=16)
def _resource_pb(resource: Resource) -> PB2Resource:
    return _encode_resource(resource)


@functools.lru_cache(maxsize=16)
def _scope_pb(scope: InstrumentationScope | None) -> PB2InstrumentationScope:
    if scope is None:  # what the standard encoder writes for a span without a scope
        return PB2InstrumentationScope()
    return _encode_instrumentation_scope(scope)


def _encode(spans: Sequence[tuple[ReadableSpan, bytes]]) -> bytes:
    """The OTLP/protobuf request body for checkpoint spans, each carrying its payload.

    Byte for byte what the standard encoder (``encode_spans``) writes, built straight
    into one message: the standard encoder goes through Python helpers per attribute
    and re-encodes the resource for every span (~0.1 ms of a 1 KB save), and copies a
    value into every nesting level (~7 copies of a 1 MB payload). The resource and
    scope are encoded once; the payload bytes are assigned once. All spans come from
    one emitter, so they share one resource and one scope.
    """
    first = spans[0][0]
    if any(
        s.events or s.links or s.get_span_context() is None or s.resource is not first.resource
        for s, _ in spans
    ):  # never on checkpoint spans; keep the exact encoder
        return _encode_reference(spans)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource = first.resource
    resource_spans.resource.CopyFrom(_resource_pb(resource))
    if resource.schema_url:
        resource_spans.schema_url = resource.schema_url
    scope_spans = resource_spans.scope_spans.add()
    scope = first.instrumentation_scope or None
    if any((s.instrumentation_scope or None) != scope for s, _ in spans):
        return _encode_reference(spans)
    scope_spans.scope.CopyFrom(_scope_pb(scope))
    if scope is not None and scope.schema_url:
        scope_spans.schema_url = scope.schema_url
    for span, payload in spans:
        _encode_span(scope_spans.spans.add(), span, payload)
    body: bytes = request.SerializeToString()
    return body


def _encode_span(pb: PB2Span, span: ReadableSpan, payload: bytes) -> None:
    ctx = span.get_span_context()
    assert ctx is not None  # checked by _encode
    pb.trace_id = ctx.trace_id.to_bytes(16, "big")
    pb.span_id = ctx.span_id.to_bytes(8, "big")
    if ctx.trace_state is not None:
        pb.trace_state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
    if span.parent:
        pb.parent_span_id = span.parent.span_id.to_bytes(8, "big")
    pb.name = span.name
    pb.kind = _SPAN_KIND_MAP[span.kind]
    if span.start_time:
        pb.start_time_unix_nano = span.start_time
    if span.end_time:
        pb.end_time_unix_nano = span.end_time
    found = False
    for key, value in (span.attributes or {}).items():
        kv = pb.attributes.add()
        kv.key = key
        if key == PAYLOAD_ATTR:
            kv.value.bytes_value = payload
            found = True
        elif isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, str):
            kv.value.string_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.CopyFrom(_encode_value(value))
    if not found:
        raise EmitError("internal: the encoded span lacks its payload attribute")
    status = span.status
    pb.status.SetInParent()
    if status.status_code.value:
        pb.status.code = status.status_code.value  # type: ignore[assignment]
    if status.description:
        pb.status.message = status.description
    pb.dropped_attributes_count = span.dropped_attributes
    pb.dropped_events_count = span.dropped_events
    pb.dropped_links_count = span.dropped_links
    pb.flags = _span_flags(span.parent)


def _encode_reference(spans: Sequence[tuple[ReadableSpan, bytes]]) -> bytes:
    """:func:`_encode` through the standard encoder (the slow, reference road)."""
    request = encode_spans([span for span, _ in spans])
    encoded = [
        pb
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for pb in scope_spans.spans
    ]
    by_id = {span.get_span_context().span_id: payload for span, payload in spans}  # type: ignore[union-attr]
    for pb in encoded:
        payload = by_id[int.from_bytes(pb.span_id, "big")]
        for kv in pb.attributes:
            if kv.key == PAYLOAD_ATTR:
                kv.value.bytes_value = payload
                break
        else:
            raise EmitError("internal: the encoded span lacks its payload attribute")
    body: bytes = request.SerializeToString()
    return body


def _traceparent(ctx: trace.SpanContext | None) -> str | None:
    if ctx is None or not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _validate(
    attributes: Mapping[str, AttributeValue], payload: bytes, payload_sha256: str, key: str
) -> tuple[dict[str, AttributeValue], bytes, str]:
    if not isinstance(key, str) or not key:
        raise EmitArgumentError(f"key must be a non-empty string, got {key!r}")
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise EmitArgumentError(f"payload must be bytes, got {type(payload).__name__}", key=key)
    if not isinstance(payload_sha256, str) or not _SHA256_RE.fullmatch(payload_sha256):
        raise EmitArgumentError(
            f"payload_sha256 must be 64 hex characters, got {payload_sha256!r}", key=key
        )
    sha = payload_sha256.lower()
    if not isinstance(attributes, Mapping):
        raise EmitArgumentError("attributes must be a mapping", key=key)
    clean: dict[str, AttributeValue] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not name:
            raise EmitArgumentError(f"attribute names must be non-empty strings: {name!r}", key=key)
        if isinstance(value, bool):
            clean[name] = bool(value)
        elif isinstance(value, int):
            clean[name] = int(value)  # IntEnum and friends travel as plain ints
        elif isinstance(value, str):
            # str.__str__ gives a str subclass's (e.g. an enum's) own text, never "Cls.MEMBER"
            clean[name] = str.__str__(value)
        else:
            raise EmitArgumentError(
                f"attribute {name!r} must be str, int or bool, got {type(value).__name__}",
                key=key,
            )
    if PAYLOAD_ATTR in clean:
        raise EmitArgumentError(f"{PAYLOAD_ATTR} is set by the emitter from `payload`", key=key)
    given = clean.pop(SHA256_ATTR, None)
    if given is not None and str(given).lower() != sha:
        raise EmitArgumentError(
            f"attribute {SHA256_ATTR} ({given!r}) differs from payload_sha256 ({sha})", key=key
        )
    return clean, payload, sha


def _resolve(future: asyncio.Future[EmitAck], outcome: EmitAck | BaseException) -> None:
    if future.done():  # its emit() call was cancelled: nobody is waiting
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _outcomes(headers: Mapping[str, str], count: int) -> list[str | None]:
    """Each span's ``Flowpoint-Outcome`` from a shared answer (None: keep the header as is).

    The sidecar names one outcome when all spans share it, else one per span in order.
    """
    value = headers.get(OUTCOME_HEADER)
    if value is None:
        return [None] * count
    parts = [part.strip() for part in value.split(",")]
    if len(parts) == count:
        return list(parts)
    if len(parts) == 1:
        return [parts[0]] * count
    return [None] * count


class CheckpointEmitter:
    """Sends checkpoints to the sidecar as ``checkpoint.save`` spans and waits for the ack.

    One emitter serves one event loop at a time (its HTTP session is bound to
    the loop); when used from a new loop after the old one closed, it opens a
    new session.

    Concurrent emit() calls share requests: up to ``max_requests`` are in flight
    at once; a checkpoint emitted while all of them are busy waits for the next
    free one and travels in it with the others that waited (at most
    ``max_batch_spans`` spans and ``max_batch_bytes`` of payload per request),
    as OTel's batching exporters do, but every caller still gets the sidecar's
    answer for its own checkpoint. A lone checkpoint never waits. Sharing cuts
    the HTTP work per checkpoint on both sides, which is what bounds throughput.

    Example (inside a coroutine)::

        emitter = CheckpointEmitter("http://127.0.0.1:4318/v1/traces", outbox_dir="outbox")
        ack = await emitter.emit(attrs, payload, payload_sha256=sha, key="run-1:3")
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        outbox_dir: str | Path | None = None,
        outbox_fsync: bool = True,
        service_name: str = "flowpoint-worker",
        max_retry_seconds: float = 30.0,
        max_requests: int = 4,
        max_batch_spans: int = 64,
        max_batch_bytes: int = 1024 * 1024,
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise EmitArgumentError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if timeout <= 0:
            raise EmitArgumentError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_retry_seconds < 0:
            raise EmitArgumentError(f"max_retry_seconds must be >= 0, got {max_retry_seconds!r}")
        if max_requests < 1 or max_batch_spans < 1 or max_batch_bytes < 1:
            raise EmitArgumentError(
                "max_requests, max_batch_spans and max_batch_bytes must be >= 1, got "
                f"{max_requests!r}, {max_batch_spans!r}, {max_batch_bytes!r}"
            )
        self.max_requests = int(max_requests)
        self.max_batch_spans = int(max_batch_spans)
        self.max_batch_bytes = int(max_batch_bytes)
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.max_retry_seconds = float(max_retry_seconds)
        self._headers = _merge_headers(headers)
        self._client_timeout = aiohttp.ClientTimeout(total=self.timeout)
        self.outbox: Outbox | None = (
            Outbox(outbox_dir, fsync=outbox_fsync) if outbox_dir is not None else None
        )
        self._provider = _CheckpointTracerProvider(service_name=service_name)
        self._backoff = wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.2)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[str] = set()
        self._replay_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._lane_: _Lane | None = None
        self._closed = False

    # -- public API -----------------------------------------------------------------------

    async def emit(
        self,
        attributes: Mapping[str, AttributeValue],
        payload: bytes,
        *,
        payload_sha256: str,
        key: str,
    ) -> EmitAck:
        """Send one checkpoint span and return once the sidecar made it durable.

        ``attributes`` become span attributes as given; the emitter adds
        ``flowpoint.payload`` (the bytes) and ``flowpoint.sha256``. The span's
        parent is the current span, so a trace shows node -> checkpoint.save.
        ``key`` (e.g. ``f"{run_id}:{seq}"``) names the record in errors and
        orders the outbox replay. Raises an :class:`~instrumentation.errors.EmitError`.
        """
        started = time.perf_counter()
        start_ns = time.time_ns()
        self._check_open()
        attrs, payload, sha = _validate(attributes, payload, payload_sha256, key)
        span = self._span(attrs, sha, start_ns, parent=None, key=key)
        lane = self._lane()
        body: bytes | None = None
        name: str | None = None
        if self.outbox is not None:
            name = Outbox.new_name(start_ns)
            record = OutboxRecord(key, attrs, payload, sha, start_ns, _traceparent(span.parent))
            self._inflight.add(name)
            # The file write (fsync included) runs in a thread while the loop encodes.
            writing = asyncio.ensure_future(asyncio.to_thread(self.outbox.write, name, record))
            try:
                if lane.free:
                    body = _encode([(span, payload)])
                await writing
            except OSError as exc:
                self._inflight.discard(name)
                raise OutboxError(
                    f"cannot write the outbox record in {self.outbox.directory}: {exc}", key=key
                ) from exc
            except BaseException:
                self._inflight.discard(name)
                await asyncio.gather(writing, return_exceptions=True)
                raise
        if lane.free:
            # Nothing is waiting and a request slot is free: send at once, from this task.
            lane.active += 1
            try:
                if body is None:
                    body = _encode([(span, payload)])
                return await self._deliver(name, key, body, span, started)
            finally:
                lane.active -= 1
                self._kick(lane)
        # Every slot is busy: wait to share the next request with the others waiting.
        item = _Queued(span, payload, key, name, started, lane.loop.create_future())
        lane.queue.append(item)
        self._kick(lane)
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in lane.queue:  # never sent: it stays in the outbox for a replay
                lane.queue.remove(item)
                if name is not None:
                    self._inflight.discard(name)
            raise

    async def replay_outbox(self) -> int:
        """Send again what an earlier emitter left unacknowledged, in key order (run, seq).

        Returns how many records were acknowledged. Records the sidecar refuses
        for good move to ``rejected/``; so do unreadable files. Stops with
        ``EmitUnavailable``/``EmitUnauthorized`` (the rest stay for later) when
        the sidecar cannot take them now.
        """
        self._check_open()
        outbox = self.outbox
        if outbox is None:
            return 0
        loop = asyncio.get_running_loop()
        if self._replay_lock is None or self._replay_lock[0] is not loop:
            # an asyncio.Lock belongs to one loop; a run_sync caller brings a new one
            self._replay_lock = (loop, asyncio.Lock())
        acked = 0
        async with self._replay_lock[1]:
            entries = await asyncio.to_thread(outbox.pending, exclude=frozenset(self._inflight))
            for entry in entries:
                if entry.name in self._inflight:
                    continue
                try:
                    record = await asyncio.to_thread(outbox.read, entry.name)
                except FileNotFoundError:
                    continue  # acknowledged meanwhile by another replayer
                except (CorruptRecordError, OSError) as exc:
                    await asyncio.to_thread(outbox.quarantine, entry.name, exc)
                    continue
                started = time.perf_counter()
                parent = _propagator.extract({"traceparent": record.traceparent or ""})
                span = self._span(
                    dict(record.attributes),
                    record.sha256,
                    record.start_time_ns,
                    parent=parent,
                    key=record.key,
                )
                body = _encode([(span, record.payload)])
                self._inflight.add(entry.name)
                try:
                    await self._deliver(entry.name, record.key, body, span, started)
                except (EmitRejected, EmitConflict) as exc:
                    log.warning("outbox replay: %s refused (now in rejected/): %s", entry.name, exc)
                    continue
                acked += 1
        return acked

    async def aclose(self) -> None:
        """Close the HTTP session and the tracer provider. Safe to call twice."""
        if self._closed:
            return
        lane = self._lane_
        if lane is not None and lane.loop is asyncio.get_running_loop():
            while lane.tasks:  # let the shared requests already under way finish
                await asyncio.gather(*lane.tasks, return_exceptions=True)
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await self._close_session(session, self._session_loop)
        self._session_loop = None
        self._provider.shutdown()

    async def __aenter__(self) -> CheckpointEmitter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EmitError("the checkpoint emitter is closed")

    def _span(
        self,
        attrs: dict[str, AttributeValue],
        sha: str,
        start_ns: int,
        *,
        parent: otel_context.Context | None,
        key: str,
    ) -> ReadableSpan:
        """The ended ``checkpoint.save`` span, a child of the span current in ``parent``.

        Built as the SDK's tracer would build it on the dedicated provider (its resource
        and id generator, sampled as ALWAYS_ON decides, the parent's trace and trace
        state, no attribute limits), but directly: the tracer's sampler call, span
        processors and attribute cleaning cost ~15 us a checkpoint, a fifth of the
        emitter's work, and have nothing to do for a span that is always recorded and
        whose attributes :func:`_validate` has checked. The tests hold the encoded
        bytes to the SDK encoder's.
        """
        all_attrs: dict[str, AttributeValue | bytes] = dict(attrs)
        all_attrs[SHA256_ATTR] = sha
        all_attrs[PAYLOAD_ATTR] = _PLACEHOLDER  # the bytes go in at encoding: see _encode
        up = trace.get_current_span(parent).get_span_context()
        ids = self._provider.id_generator
        if up.is_valid:
            trace_id, parent_ctx, trace_state = up.trace_id, up, up.trace_state
        else:
            trace_id, parent_ctx, trace_state = ids.generate_trace_id(), None, None
        context = trace.SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED,
            trace_state=trace_state,
        )
        return ReadableSpan(
            name=SPAN_NAME,
            context=context,
            parent=parent_ctx,
            resource=self._provider.resource,
            attributes=all_attrs,
            kind=SpanKind.INTERNAL,
            instrumentation_scope=_SCOPE_INFO,
            status=_UNSET,
            start_time=start_ns,
            end_time=time.time_ns(),
        )

    def _lane(self) -> _Lane:
        loop = asyncio.get_running_loop()
        lane = self._lane_
        if lane is None or lane.loop is not loop:
            # A lane belongs to one loop (a run_sync caller brings a new one each time).
            lane = self._lane_ = _Lane(loop, self.max_requests)
        return lane

    def _kick(self, lane: _Lane) -> None:
        """Start shared requests for the waiting checkpoints while slots are free."""
        while lane.queue and lane.active < lane.slots:
            batch: list[_Queued] = []
            size = 0
            while lane.queue and len(batch) < self.max_batch_spans:
                item = lane.queue[0]
                if batch and size + len(item.payload) > self.max_batch_bytes:
                    break
                lane.queue.popleft()
                batch.append(item)
                size += len(item.payload)
            lane.active += 1
            task = lane.loop.create_task(self._flush(lane, batch))
            lane.tasks.add(task)
            task.add_done_callback(lane.tasks.discard)

    async def _flush(self, lane: _Lane, batch: list[_Queued]) -> None:
        try:
            if len(batch) == 1:
                await self._settle(batch[0])
            else:
                await self._settle_many(batch)
        finally:
            lane.active -= 1
            self._kick(lane)

    async def _settle(self, item: _Queued) -> None:
        """Send one queued checkpoint alone and hand its outcome to its emit() call."""
        try:
            body = _encode([(item.span, item.payload)])
            ack = await self._deliver(item.name, item.key, body, item.span, item.started)
        except Exception as exc:
            _resolve(item.future, exc)
        else:
            _resolve(item.future, ack)

    async def _settle_many(self, batch: list[_Queued]) -> None:
        """Send several checkpoints in one request; each emit() call gets its own answer.

        A 200 acknowledges every span of the request. Any other final answer is about
        the request as a whole, so each checkpoint is then sent again alone to learn
        its own verdict: writes are idempotent, and one already stored is answered
        "duplicate". Only "unavailable" needs no second look: nothing was acknowledged.
        """
        label = f"{batch[0].key} and {len(batch) - 1} more"
        try:
            body = _encode([(item.span, item.payload) for item in batch])
            status, headers, answer, attempts = await self._send(body, label)
        except EmitUnavailable as exc:
            for item in batch:
                if item.name is not None:
                    self._inflight.discard(item.name)
                _resolve(
                    item.future,
                    EmitUnavailable(
                        exc.message, status=exc.status, error=exc.error, body=exc.body, key=item.key
                    ),
                )
            return
        except Exception:
            await asyncio.gather(*(self._settle(item) for item in batch))
            return
        outcomes = _outcomes(headers, len(batch))
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.name is not None:
                self._inflight.discard(item.name)
                if self.outbox is not None:
                    self.outbox.delete(item.name)
            own: Mapping[str, str] = headers
            if outcome is not None:
                own = CIMultiDict(headers)
                own[OUTCOME_HEADER] = outcome
            _resolve(
                item.future,
                self._ack(item.key, status, attempts, item.span, item.started, own, answer),
            )

    async def _deliver(
        self, name: str | None, key: str, body: bytes, span: ReadableSpan, started: float
    ) -> EmitAck:
        outbox = self.outbox
        try:
            status, headers, answer, attempts = await self._send(body, key)
        except (EmitRejected, EmitConflict) as exc:
            if outbox is not None and name is not None:
                await asyncio.to_thread(outbox.reject, name, str(exc), status=exc.status)
            raise
        finally:
            if name is not None:
                self._inflight.discard(name)
        if outbox is not None and name is not None:
            outbox.delete(name)  # a bare unlink: cheaper inline than a thread hop
        return self._ack(key, status, attempts, span, started, headers, answer)

    @staticmethod
    def _ack(
        key: str,
        status: int,
        attempts: int,
        span: ReadableSpan,
        started: float,
        headers: Mapping[str, str],
        answer: bytes,
    ) -> EmitAck:
        ctx = span.get_span_context()
        return EmitAck(
            key=key,
            status=status,
            elapsed=time.perf_counter() - started,
            attempts=attempts,
            trace_id=f"{ctx.trace_id:032x}" if ctx else "",
            span_id=f"{ctx.span_id:016x}" if ctx else "",
            headers=headers,
            body=answer,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            # Honour the server's delay, plus a little jitter so workers spread out.
            return exc.retry_after + random.uniform(0.0, min(0.5, 0.1 * exc.retry_after))
        return float(self._backoff(state))

    async def _send(self, body: bytes, key: str) -> tuple[int, Mapping[str, str], bytes, int]:
        attempts = 0
        began = time.monotonic()
        # The first attempt runs without tenacity (its machinery costs ~30 us a call, a
        # tenth of a small save); a retryable failure then enters the retry loop as its
        # attempt 1, with the time already spent taken off the budget.
        try:
            status, headers, answer = await self._post(body, key)
        except _Retry as exc:
            failed: _Retry | None = exc
        else:
            return status, headers, answer, 1
        retrying = AsyncRetrying(
            stop=stop_before_delay(max(0.0, self.max_retry_seconds - (time.monotonic() - began))),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if failed is not None:
                        first, failed = failed, None
                        raise first
                    status, headers, answer = await self._post(body, key)
                    return status, headers, answer, attempts
        except _Retry as exc:
            raise EmitUnavailable(
                f"not acknowledged after {attempts} attempt(s) in "
                f"{time.monotonic() - began:.1f}s: {exc.message}",
                status=exc.status,
                error=exc.error,
                body=exc.body,
                key=key,
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post(self, body: bytes, key: str) -> tuple[int, Mapping[str, str], bytes]:
        session = await self._get_session()
        try:
            async with session.post(
                self.endpoint, data=body, headers=self._headers, timeout=self._client_timeout
            ) as resp:
                answer = await resp.read()
                status = resp.status
                headers = resp.headers.copy()
                content_type = resp.content_type
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except aiohttp.ClientError as exc:
            raise EmitError(f"cannot send to {self.endpoint}: {exc}", key=key) from exc

        if status == 200:
            refused = _rejected_spans(answer, content_type)
            if refused is not None:
                raise EmitRejected(
                    f"the sidecar refused the span: {refused}", status=200, body=answer, key=key
                )
            return status, headers, answer
        message, code = describe_answer(answer, content_type)
        message = message or f"HTTP {status} from {self.endpoint}"
        if status in _RETRYABLE:
            raise _Retry(
                message,
                status=status,
                retry_after=_retry_after(headers.get("Retry-After")),
                error=code,
                body=answer,
            )
        cls: type[EmitError] = EmitError
        if status in _REJECTED:
            cls = EmitRejected
        elif status == 409:
            cls = EmitConflict
        elif status in _UNAUTHORIZED:
            cls = EmitUnauthorized
        else:
            message = f"unexpected answer: {message}"
        raise cls(message, status=status, error=code, body=answer, key=key)

    async def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and not session.closed and self._session_loop is loop:
            return session
        if session is not None and not session.closed:
            await self._close_session(session, self._session_loop)
        self._check_open()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30.0),
            # The body is already bytes of a known type; skip aiohttp's sniffing.
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "flowpoint-emitter"},
        )
        self._session_loop = loop
        return self._session

    @staticmethod
    async def _close_session(
        session: aiohttp.ClientSession, owner: asyncio.AbstractEventLoop | None
    ) -> None:
        current = asyncio.get_running_loop()
        if owner is None or owner is current:
            await session.close()
            return
        if owner.is_running():
            raise EmitError(
                "this CheckpointEmitter is in use on another running event loop; "
                "create one emitter per event loop"
            )
        # The owning loop is gone (e.g. an earlier asyncio.run): its sockets cannot be
        # closed from here; mark everything closed so nothing warns or is reused.
        connector = session.connector
        session.detach()
        if connector is not None:
            with contextlib.suppress(RuntimeError):
                await connector.close()
