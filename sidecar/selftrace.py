"""The sidecar's own traces: its stages under each checkpoint span, exported over OTLP.

A worker's ``checkpoint.save`` span ends at the sidecar, which never forwards it (its
payload stays in the pod). For a trace backend to show node -> checkpoint -> commit, the
sidecar therefore sends, to ``--forward-otlp``:

* a copy of every ``checkpoint.save`` span it answered (200, 400 or 409; a 503 will come
  again), with the same trace id, span id, parent, timing and resource, and every
  attribute except ``flowpoint.payload``;
* one span per stage of that checkpoint's trip, as children of the checkpoint span:
  ``sidecar.decode``, ``sidecar.verify``, ``sidecar.compress``, ``sidecar.queue`` (waiting
  for the group commit) and ``sidecar.commit``.

A group commit covers a batch of records from many traces. Rather than one batch span
linked to all of them, each record gets its own short ``sidecar.commit`` span (same
window for every record of a batch) carrying ``flowpoint.batch_size``, the outcome and
the sizes: each trace then stays complete on its own, and a failed commit marks every
trace it touched.

The spans are made by a :class:`~opentelemetry.sdk.trace.TracerProvider` owned by the
sidecar application (never the global one) and exported by the OTLP/HTTP exporter behind a
``BatchSpanProcessor``: export happens in the SDK's thread, never on the event loop, and,
as with any telemetry, spans are dropped when the queue is full or the collector is down.
Without ``--forward-otlp`` the tracer is disabled and costs one attribute check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from sidecar.otlp import ATTR, CHECKPOINT_SPAN_NAME

__all__ = ["SERVICE_NAME", "STAGE_PREFIX", "SelfTracer", "StageWindow"]

SERVICE_NAME: Final = "flowpoint-sidecar"
STAGE_PREFIX: Final = "sidecar."
_SCOPE: Final = "flowpoint.sidecar"
# Attributes every stage span carries; the rest of a record's attributes go on its commit.
_ON_EVERY_STAGE: Final = frozenset({"flowpoint.run_id", "flowpoint.seq"})
_COMMIT: Final = "commit"

AttributeValue = str | bool | int | float | bytes | Sequence[Any]


class StageWindow(Protocol):
    """One stage of a checkpoint's trip through the sidecar, in wall-clock nanoseconds."""

    @property
    def name(self) -> str: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...


class SelfTracer:
    """Makes and exports the sidecar's spans (see the module docstring).

    ``endpoint`` is the OTLP/HTTP traces URL (``--forward-otlp``); None disables tracing.
    ``exporter`` replaces the OTLP exporter (a test's in-memory one, say).
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        exporter: SpanExporter | None = None,
        schedule_delay_ms: float = 500.0,
        export_timeout_s: float = 5.0,
        max_queue_size: int = 8192,
    ) -> None:
        self.endpoint = endpoint
        self._provider: TracerProvider | None = None
        self._processor: BatchSpanProcessor | None = None
        self._tracer: trace.Tracer | None = None
        if exporter is None and endpoint is None:
            return
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout_s)
        self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_ms,
            export_timeout_millis=export_timeout_s * 1000,
        )
        self._provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource.create({"service.name": SERVICE_NAME}),
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer(_SCOPE)

    @property
    def enabled(self) -> bool:
        """True when spans are made and exported."""
        return self._tracer is not None

    def stages(
        self,
        trace_id: str,
        parent_span_id: str,
        stages: Iterable[StageWindow],
        attributes: Mapping[str, str | int],
        *,
        error: str | None = None,
    ) -> None:
        """One ``sidecar.<stage>`` span per stage, children of the given checkpoint span.

        ``trace_id`` / ``parent_span_id`` are the checkpoint span's ids in hex (a record
        without them gets no spans). ``attributes`` describe the record: run id and seq go
        on every stage, everything on the commit span, which also carries ``error``.
        """
        tracer = self._tracer
        if tracer is None or not trace_id or not parent_span_id:
            return
        parent = trace.set_span_in_context(
            NonRecordingSpan(
                SpanContext(
                    trace_id=int(trace_id, 16),
                    span_id=int(parent_span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
            )
        )
        common = {k: v for k, v in attributes.items() if k in _ON_EVERY_STAGE}
        for stage in stages:
            is_commit = stage.name == _COMMIT
            span = tracer.start_span(
                STAGE_PREFIX + stage.name,
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=dict(attributes) if is_commit else common,
                start_time=stage.start_ns,
            )
            if is_commit and error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end(end_time=max(stage.end_ns, stage.start_ns))

    def checkpoint_spans(self, request: ExportTraceServiceRequest) -> None:
        """Export a copy of each ``checkpoint.save`` span in ``request``, minus its payload."""
        processor = self._processor
        if processor is None:
            return
        for rs in request.resource_spans:
            resource: Resource | None = None
            for ss in rs.scope_spans:
                scope: InstrumentationScope | None = None
                for span in ss.spans:
                    if span.name != CHECKPOINT_SPAN_NAME or not any(span.trace_id):
                        continue
                    if resource is None:
                        resource = Resource(_attributes(rs.resource.attributes))
                    if scope is None:
                        scope = InstrumentationScope(ss.scope.name, ss.scope.version or None)
                    processor.on_end(_copy(span, resource, scope))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now (blocking); True when everything went out."""
        if self._provider is None:
            return True
        return self._provider.force_flush(int(timeout_s * 1000))

    async def aclose(self) -> None:
        """Export what is queued and stop (the exporter's blocking work runs in a thread)."""
        provider, self._provider = self._provider, None
        self._tracer = None
        self._processor = None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)


def _copy(span: Any, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """A finished SDK span equal to the OTLP ``span``, without the checkpoint payload."""
    # The span was recorded and exported, so it is sampled, whatever its flags field says
    # (the Python SDK fills only the remote-parent bits there); the batch processor drops
    # unsampled spans.
    flags = TraceFlags(TraceFlags.SAMPLED)
    trace_id = int.from_bytes(span.trace_id, "big")
    parent = None
    if any(span.parent_span_id):
        parent = SpanContext(
            trace_id=trace_id,
            span_id=int.from_bytes(span.parent_span_id, "big"),
            is_remote=False,
            trace_flags=flags,
        )
    kind = SpanKind(span.kind - 1) if 1 <= span.kind <= 5 else SpanKind.INTERNAL
    return ReadableSpan(
        name=span.name,
        context=SpanContext(
            trace_id=trace_id,
            span_id=int.from_bytes(span.span_id, "big"),
            is_remote=False,
            trace_flags=flags,
        ),
        parent=parent,
        resource=resource,
        attributes=_attributes(span.attributes, skip=ATTR.PAYLOAD),
        kind=kind,
        status=_status(span.status.code, span.status.message),
        start_time=int(span.start_time_unix_nano),
        end_time=int(span.end_time_unix_nano) or int(span.start_time_unix_nano),
        instrumentation_scope=scope,
    )


def _status(code: int, message: str) -> Status:
    if code == StatusCode.ERROR.value:
        return Status(StatusCode.ERROR, message or None)
    return Status(StatusCode.OK if code == StatusCode.OK.value else StatusCode.UNSET)


def _attributes(pairs: Iterable[KeyValue], skip: str = "") -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for kv in pairs:
        if kv.key == skip:
            continue
        value = _value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def _value(value: AnyValue) -> AttributeValue | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "int_value":
        return int(value.int_value)
    if kind == "double_value":
        return float(value.double_value)
    if kind == "bytes_value":
        return bytes(value.bytes_value)
    if kind == "array_value":
        items = [_value(v) for v in value.array_value.values]
        # SDK attributes hold homogeneous arrays of primitives only.
        kept = [i for i in items if isinstance(i, (str, bool, int, float))]
        if kept and all(type(i) is type(kept[0]) for i in kept):
            return kept
        return None
    return None  # kvlist and empty values have no SDK attribute form
