"""Run and node spans on a real SDK provider with its in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from instrumentation import (
    current_traceparent,
    node_span,
    run_span,
    span_context_from_traceparent,
    use_tracer_provider,
)

OLD_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(None)
        provider.shutdown()


def test_run_and_node_spans_nest(exporter: InMemorySpanExporter) -> None:
    with run_span("etl", "run-1"), node_span("fetch", "function"):
        pass
    with run_span("etl", "run-2"):
        pass
    node_1, run_1, run_2 = exporter.get_finished_spans()  # in the order they ended
    assert (node_1.name, run_1.name, run_2.name) == ("node fetch", "flow.run", "flow.run")
    assert node_1.parent is not None and run_1.context is not None
    assert node_1.parent.span_id == run_1.context.span_id
    assert node_1.context is not None and node_1.context.trace_id == run_1.context.trace_id
    assert run_1.parent is None
    assert dict(run_1.attributes or {}) == {"flowpoint.flow_id": "etl", "flowpoint.run_id": "run-1"}
    assert dict(node_1.attributes or {}) == {
        "flowpoint.node_id": "fetch",
        "flowpoint.node_type": "function",
    }
    assert run_2.context is not None and run_2.context.trace_id != run_1.context.trace_id


def test_current_traceparent_is_the_current_span(exporter: InMemorySpanExporter) -> None:
    assert current_traceparent() is None
    with run_span("etl", "run-1"), node_span("fetch", "function") as node:
        ctx = node.get_span_context()
        flags = int(ctx.trace_flags)
        assert flags & 0x01  # sampled
        assert current_traceparent() == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"
    assert current_traceparent() is None


def test_resumed_run_links_to_the_stored_traceparent(exporter: InMemorySpanExporter) -> None:
    with run_span("etl", "run-1", resumed_from=OLD_TRACEPARENT, operation="resume") as span:
        ctx = span.get_span_context()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "flow.resume"
    (link,) = finished.links
    assert f"{link.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{link.context.span_id:016x}" == "b7ad6b7169203331"
    assert dict(link.attributes or {}) == {"flowpoint.link": "resumed_from"}
    # a resume starts its own trace; the link, not the parent, ties it to the original
    assert finished.parent is None
    assert ctx.trace_id != int("0af7651916cd43dd8448eb211c80319c", 16)


@pytest.mark.parametrize("bad", [None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_invalid_traceparent_means_no_link(exporter: InMemorySpanExporter, bad: str | None) -> None:
    assert span_context_from_traceparent(bad) is None
    with run_span("etl", "run-1", resumed_from=bad):
        pass
    (finished,) = exporter.get_finished_spans()
    assert finished.links == ()


def test_span_context_from_traceparent_round_trip(exporter: InMemorySpanExporter) -> None:
    with node_span("n", "function"):
        tp = current_traceparent()
    ctx = span_context_from_traceparent(tp)
    (finished,) = exporter.get_finished_spans()
    assert ctx is not None and finished.context is not None
    assert (ctx.trace_id, ctx.span_id) == (finished.context.trace_id, finished.context.span_id)
    assert ctx.is_remote


def test_a_failing_node_records_the_error(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="boom"), node_span("clean", "function"):
        raise ValueError("boom")
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert [e.name for e in finished.events] == ["exception"]
    assert (finished.events[0].attributes or {})["exception.message"] == "boom"
