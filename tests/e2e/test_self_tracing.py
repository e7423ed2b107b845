"""One trace shows node -> checkpoint.save -> the sidecar's stages, across three processes.

A worker subprocess runs a flow with SidecarStore against a sidecar subprocess started
with ``--forward-otlp``; the worker exports its own run and node spans (a real SDK
TracerProvider, OTLP/HTTP) to the same receiver: a real aiohttp server in this test that
decodes every ``ExportTraceServiceRequest``. The sidecar sends there a payload-free copy of
each ``checkpoint.save`` span it answered and its own stage spans (sidecar/selftrace.py).
Everything must share the run's trace id, with the right parent for every span.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.selftrace import SERVICE_NAME, SelfTracer
from tests.fixtures.sidecar import SidecarProcess, SpanRecorder, make_checkpoint, otlp_body

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["sidecar.commit", "sidecar.compress", "sidecar.decode", "sidecar.queue", "sidecar.verify"]
NODES = [f"n{i:02d}" for i in range(1, 6)]  # the worker's "linear5" flow


@dataclass(frozen=True)
class Got:
    """One received span."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    start: int
    end: int
    attrs: dict[str, Any]
    error: bool


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


class Receiver:
    """An OTLP/HTTP traces endpoint that decodes and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Got] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        message = ExportTraceServiceRequest.FromString(await request.read())
        for rs in message.resource_spans:
            resource = {kv.key: _plain(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(
                        Got(
                            service=str(resource.get("service.name")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent=span.parent_span_id.hex(),
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attrs={kv.key: _plain(kv.value) for kv in span.attributes},
                            error=span.status.code == 2,
                        )
                    )
        self.arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_until(self, done: Callable[[list[Got]], bool], limit_s: float = 30) -> None:
        async with asyncio.timeout(limit_s):
            while not done(self.spans):
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield rec, f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    finally:
        await runner.cleanup()


async def run_worker(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.worker_scripts.chaos_worker",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-4000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


Launch = Callable[..., Awaitable[SidecarProcess]]


async def test_node_checkpoint_and_sidecar_stages_form_one_trace(
    pg_dsn: str, launch_sidecar: Launch, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    rec, url = receiver
    sidecar = await launch_sidecar(pg_dsn, "--forward-otlp", url)
    result = await run_worker(
        "--sidecar",
        sidecar.url,
        "--run-id",
        "traced-1",
        "--log",
        str(tmp_path / "exec.log"),
        "--mode",
        "run",
        "--flow",
        "linear5",
        "--durability",
        "sync",
        "--otlp-endpoint",
        url,
    )
    assert result["status"] == "completed"
    saves = result["seq"]  # start + one per node + completed
    assert saves == len(NODES) + 2

    def complete(spans: list[Got]) -> bool:
        return (
            sum(s.name == "checkpoint.save" for s in spans) == saves
            and sum(s.service == SERVICE_NAME for s in spans) == saves * len(STAGES)
            and any(s.name == "flow.run" for s in spans)
        )

    await rec.wait_until(complete)
    await asyncio.sleep(0.6)  # one more export interval: nothing else may arrive
    spans = rec.spans

    [run] = [s for s in spans if s.name == "flow.run"]
    assert run.service == "chaos-worker" and run.parent == ""
    assert {s.trace_id for s in spans} == {run.trace_id}, "every span is in the run's trace"

    nodes = {s.name.removeprefix("node "): s for s in spans if s.name.startswith("node ")}
    assert sorted(nodes) == NODES
    assert all(n.parent == run.span_id for n in nodes.values())

    # The checkpoint spans: the start and the completion under the run, each node's under it.
    checkpoints = {s.attrs["flowpoint.seq"]: s for s in spans if s.name == "checkpoint.save"}
    assert sorted(checkpoints) == list(range(1, saves + 1))
    assert checkpoints[1].parent == run.span_id
    assert checkpoints[saves].parent == run.span_id
    assert checkpoints[saves].attrs["flowpoint.status"] == "completed"
    for index, node_id in enumerate(NODES, start=2):
        assert checkpoints[index].parent == nodes[node_id].span_id, node_id
    for cp in checkpoints.values():
        assert cp.service == "flowpoint-worker"  # the emitter's resource travels with it
        assert cp.attrs["flowpoint.run_id"] == "traced-1"
        assert "flowpoint.payload" not in cp.attrs  # the payload never leaves the sidecar
        assert len(cp.attrs["flowpoint.sha256"]) == 64

    # The sidecar's stages: children of each checkpoint span, one set per checkpoint.
    own = [s for s in spans if s.service == SERVICE_NAME]
    by_parent: dict[str, list[Got]] = {}
    for s in own:
        by_parent.setdefault(s.parent, []).append(s)
    assert sorted(by_parent) == sorted(cp.span_id for cp in checkpoints.values())
    for seq, cp in checkpoints.items():
        stages = by_parent[cp.span_id]
        assert sorted(s.name for s in stages) == STAGES
        assert all(s.attrs["flowpoint.seq"] == seq for s in stages)
        assert all(s.start <= s.end and not s.error for s in stages)
        [commit] = [s for s in stages if s.name == "sidecar.commit"]
        assert commit.attrs["flowpoint.outcome"] == "stored"
        assert commit.attrs["flowpoint.batch_size"] >= 1
        assert commit.attrs["flowpoint.raw_bytes"] > commit.attrs["flowpoint.stored_bytes"] > 0


async def test_a_refused_checkpoint_is_traced_and_a_duplicate_gets_its_own_commit(
    pg_dsn: str, launch_sidecar: Launch, receiver: tuple[Receiver, str]
) -> None:
    import aiohttp

    rec, url = receiver
    sidecar = await launch_sidecar(pg_dsn, "--forward-otlp", url)
    recorder = SpanRecorder()
    good = recorder.checkpoint_span(make_checkpoint("run-t", 0))
    bad = recorder.checkpoint_span(make_checkpoint("run-t", 1), sha256="0" * 64)
    headers = {"Content-Type": "application/x-protobuf"}
    async with aiohttp.ClientSession() as http:
        for span, status in ((good, 200), (good, 200), (bad, 400)):
            async with http.post(
                sidecar.url + "/v1/traces", data=otlp_body([span]), headers=headers
            ) as resp:
                assert resp.status == status, await resp.text()

    def ids(span: ReadableSpan) -> str:
        assert span.context is not None
        return format(span.context.span_id, "016x")

    def arrived(spans: list[Got]) -> bool:
        return sum(s.name == "checkpoint.save" for s in spans) == 3 and (
            sum(s.name == "sidecar.commit" for s in spans) == 2
        )

    await rec.wait_until(arrived)
    copies = [s for s in rec.spans if s.name == "checkpoint.save"]
    assert sorted(s.span_id for s in copies) == sorted([ids(good), ids(good), ids(bad)])
    commits = [s for s in rec.spans if s.name == "sidecar.commit"]
    assert {s.parent for s in commits} == {ids(good)}
    assert sorted(s.attrs["flowpoint.outcome"] for s in commits) == ["duplicate", "stored"]
    # The refused one stopped at verification: its trace holds the span, but no commit.
    assert not [s for s in rec.spans if s.parent == ids(bad)]
    recorder.shutdown()


def test_disabled_without_a_target() -> None:
    tracer = SelfTracer(None)
    assert not tracer.enabled
    recorder = SpanRecorder()
    request = ExportTraceServiceRequest.FromString(
        otlp_body([recorder.checkpoint_span(make_checkpoint("run-off", 0))])
    )
    tracer.checkpoint_spans(request)  # no provider, no thread: nothing to do
    assert tracer.flush()
    recorder.shutdown()


async def test_copies_keep_ids_attributes_and_resource_but_not_the_payload() -> None:
    exporter = InMemorySpanExporter()
    tracer = SelfTracer(None, exporter=exporter, schedule_delay_ms=50)
    recorder = SpanRecorder(service_name="svc-under-test")
    with recorder.tracer.start_as_current_span("node fetch") as node:
        original = recorder.checkpoint_span(make_checkpoint("run-copy", 4))
    other = recorder.span("GET /x", {"tags": ["a", "b"], "ratio": 0.5, "ok": True})
    request = ExportTraceServiceRequest.FromString(otlp_body([original, other]))
    try:
        tracer.checkpoint_spans(request)
        assert tracer.flush()
        [copy] = exporter.get_finished_spans()  # other spans are not the tracer's business
        assert copy.name == "checkpoint.save"
        assert copy.context is not None and original.context is not None
        assert copy.context.trace_id == original.context.trace_id
        assert copy.context.span_id == original.context.span_id
        assert copy.parent is not None and copy.parent.span_id == node.get_span_context().span_id
        assert (copy.start_time, copy.end_time) == (original.start_time, original.end_time)
        assert copy.resource.attributes["service.name"] == "svc-under-test"
        assert original.attributes is not None and copy.attributes is not None
        expected = {k: v for k, v in original.attributes.items() if k != "flowpoint.payload"}
        assert dict(copy.attributes) == expected
        assert "flowpoint.payload" in original.attributes
    finally:
        await tracer.aclose()
        recorder.shutdown()
    assert not tracer.enabled
