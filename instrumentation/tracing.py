"""Spans for flow runs and node executions, on the user's TracerProvider.

The workflow's own tracing goes wherever the application sends it (the global
provider). A checkpoint records the W3C ``traceparent`` of its run span; a
resumed run's span links back to it, so one trace backend shows the original
run and every resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "current_traceparent",
    "node_span",
    "run_span",
    "span_context_from_traceparent",
    "use_tracer_provider",
]

_TRACER_NAME = "flowpoint"
_propagator = TraceContextTextMapPropagator()
_provider: trace.TracerProvider | None = None


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Send run/node spans to ``provider`` rather than the global one (None: global again).

    For applications that keep several providers, and for tests: the global
    provider can be set only once per process.
    """
    global _provider
    _provider = provider


def _tracer() -> trace.Tracer:
    # Looked up per call so a provider installed after import is honoured.
    return trace.get_tracer(_TRACER_NAME, tracer_provider=_provider)


def span_context_from_traceparent(traceparent: str | None) -> trace.SpanContext | None:
    """The span context a W3C ``traceparent`` names, or None when absent or invalid."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


@contextmanager
def run_span(
    flow_id: str,
    run_id: str,
    *,
    resumed_from: str | None = None,
    operation: str = "run",
) -> Iterator[Span]:
    """A span covering one ``run``/``resume``/``fork`` call of a flow.

    ``resumed_from`` is the traceparent stored in the checkpoint being resumed:
    the new span links to it.
    """
    links = []
    linked = span_context_from_traceparent(resumed_from)
    if linked is not None:
        links.append(Link(linked, {"flowpoint.link": "resumed_from"}))
    with _tracer().start_as_current_span(
        f"flow.{operation}",
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={"flowpoint.flow_id": flow_id, "flowpoint.run_id": run_id},
    ) as span:
        yield span


@contextmanager
def node_span(node_id: str, node_type: str) -> Iterator[Span]:
    """A span covering one execution of a node."""
    with _tracer().start_as_current_span(
        f"node {node_id}",
        attributes={"flowpoint.node_id": node_id, "flowpoint.node_type": node_type},
    ) as span:
        yield span


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when there is no valid current span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")
