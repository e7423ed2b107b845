"""Run and node spans of a flow, on a real SDK provider; checkpoints carry the run's traceparent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from checkpoint import CheckpointConfig
from checkpoint.stores.memory import MemoryStore
from flows import Flow, FunctionNode, NodeExecutionError
from instrumentation import use_tracer_provider


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


async def test_run_and_node_spans_and_the_stored_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    attempts: list[int] = []

    def flaky(inputs: dict[str, Any]) -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first try fails")
        return 2

    store = MemoryStore()
    flow = Flow(
        id="traced",
        nodes=[
            FunctionNode(id="a", fn=lambda inputs: 1),
            FunctionNode(id="b", fn=flaky, depends=["a"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store),
    )
    with pytest.raises(NodeExecutionError):
        await flow.run(None, run_id="t1")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["flow.run"]
    assert run.attributes is not None and run.attributes["flowpoint.run_id"] == "t1"
    for name in ("node a", "node b"):
        parent = spans[name].parent
        assert parent is not None and run.context is not None
        assert parent.span_id == run.context.span_id
    assert spans["node b"].status.status_code is StatusCode.ERROR
    assert spans["node a"].status.status_code is not StatusCode.ERROR

    cp = await store.get("t1")
    assert cp is not None and cp.trace_context is not None
    assert cp.trace_context.split("-")[1] == format(run.context.trace_id, "032x")

    exporter.clear()
    await flow.resume("t1")
    resumed = {s.name: s for s in exporter.get_finished_spans()}["flow.resume"]
    assert [link.context.span_id for link in resumed.links] == [run.context.span_id]
