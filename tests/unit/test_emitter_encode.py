"""The emitter's direct OTLP encoding is byte for byte the standard encoder's."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from instrumentation.emitter import CheckpointEmitter, _encode, _encode_reference

ATTRS = {
    "flowpoint.tenant_id": "default",
    "flowpoint.flow_id": "flow",
    "flowpoint.run_id": "run-1",
    "flowpoint.seq": 7,
    "flowpoint.status": "active",
    "flowpoint.schema_version": 1,
    "flowpoint.epoch": 0,
    "custom.flag": True,
    "custom.big": 2**62,
    "custom.empty": "",
}


@pytest.fixture
async def emitter() -> CheckpointEmitter:
    em = CheckpointEmitter("http://127.0.0.1:9/v1/traces")
    yield em  # type: ignore[misc]
    await em.aclose()


@pytest.mark.parametrize("payload", [b"", b'{"a":1}', bytes(range(256)) * 4096])
async def test_direct_encoding_equals_the_standard_encoder(
    emitter: CheckpointEmitter, payload: bytes
) -> None:
    span = emitter._span(dict(ATTRS), "ab" * 32, time.time_ns(), parent=None, key="k")
    assert _encode([(span, payload)]) == _encode_reference([(span, payload)])


@pytest.mark.parametrize("remote", [True, False])
async def test_direct_encoding_with_a_parent_and_trace_state(
    emitter: CheckpointEmitter, remote: bool
) -> None:
    parent = SpanContext(
        0x0123456789ABCDEF0123456789ABCDEF,
        0x0123456789ABCDEF,
        is_remote=remote,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x"), ("other", "y")]),
    )
    ctx = trace.set_span_in_context(NonRecordingSpan(parent))
    span = emitter._span(dict(ATTRS), "cd" * 32, time.time_ns(), parent=ctx, key="k")
    body = _encode([(span, b"payload")])
    assert body == _encode_reference([(span, b"payload")])
    assert parent.trace_id.to_bytes(16, "big") in body


async def test_several_spans_in_one_request_equal_the_standard_encoder(
    emitter: CheckpointEmitter,
) -> None:
    payloads = [b'{"seq":1}', b"", bytes(range(256)) * 64]
    spans = [
        (
            emitter._span(
                {**ATTRS, "flowpoint.seq": i}, f"{i:064x}", time.time_ns(), parent=None, key="k"
            ),
            p,
        )
        for i, p in enumerate(payloads, start=1)
    ]
    body = _encode(spans)
    assert body == _encode_reference(spans)
    decoded = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = decoded.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    got = [
        {kv.key: kv.value for kv in pb.attributes}["flowpoint.payload"].bytes_value
        for pb in scope_spans.spans
    ]
    assert got == payloads  # each span carries its own payload, in order
