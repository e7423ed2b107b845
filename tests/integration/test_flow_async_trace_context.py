"""The async writer saves each checkpoint under the trace context of the node that produced it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from checkpoint import CheckpointConfig
from checkpoint.store import PutOutcome, SealedCheckpoint
from checkpoint.stores.memory import MemoryStore
from flows import Flow, FunctionNode
from instrumentation import use_tracer_provider


class SpanRecordingStore(MemoryStore):
    """Records, per saved checkpoint, the span that is current while it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.current: dict[int, tuple[int, Any]] = {}

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        span_context = trace.get_current_span().get_span_context()
        self.current[record.seq] = (span_context.span_id, record.summary)
        return await super().put_sealed(record, epoch=epoch)


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


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_after_node_checkpoints_are_written_under_the_node_span(
    exporter: InMemorySpanExporter, durability: str
) -> None:
    store = SpanRecordingStore()
    flow = Flow(
        id="ctx",
        nodes=[
            FunctionNode(id="a", fn=lambda inputs: 1),
            FunctionNode(id="b", fn=lambda inputs: 2, depends=["a"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store, durability=durability),
    )
    await flow.run(None, run_id=f"ctx-{durability}")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    node_span_ids = {spans[f"node {n}"].context.span_id: n for n in ("a", "b")}
    written_under = [node_span_ids.get(span_id) for span_id, _ in store.current.values()]
    # One checkpoint after each node, each written while that node's span was current.
    assert sorted(n for n in written_under if n is not None) == ["a", "b"]
