"""``flowpoint serve`` as a real subprocess: the stock OpenTelemetry exporter, forwarding,
environment options, the embedded PostgreSQL and structured logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from checkpoint.codec import canonical_json, sha256_hex
from checkpoint.models import checkpoint_from_bytes, checkpoint_to_bytes
from checkpoint.stores.postgres import PostgresStore
from tests.fixtures.sidecar import (
    REPO_ROOT,
    SidecarProcess,
    SpanRecorder,
    checkpoint_attributes,
    free_port,
    make_checkpoint,
    metric,
    otlp_body,
    scrape,
    spawn_sidecar,
)

Launch = Callable[..., Awaitable[SidecarProcess]]
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _export_with_sdk(endpoint: str, attributes: dict[str, Any], gzip: bool) -> None:
    """A plain OpenTelemetry SDK pipeline, as any application would configure it."""
    exporter = OTLPSpanExporter(
        endpoint=endpoint, compression=Compression.Gzip if gzip else Compression.NoCompression
    )
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=Resource.create({"service.name": "sdk-worker"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with provider.get_tracer("plain-sdk").start_as_current_span(
            "checkpoint.save", attributes=attributes
        ):
            pass
    finally:
        provider.shutdown()


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_stock_otel_exporter_checkpoint_is_stored_and_served_byte_identical(
    sidecar_process: SidecarProcess, pg_dsn: str, gzip: bool
) -> None:
    cp = make_checkpoint("run-sdk", 7, payload_bytes=50_000)
    payload = checkpoint_to_bytes(cp)
    await asyncio.to_thread(
        _export_with_sdk, sidecar_process.url + "/v1/traces", checkpoint_attributes(cp), gzip
    )

    store = PostgresStore(pg_dsn, migrate=False)
    try:
        assert await store.get("run-sdk", 7) == cp
        record = await store.get_sealed("run-sdk", 7)
        assert record is not None and record.sha256 == sha256_hex(payload)
    finally:
        await store.close()

    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar_process.url + "/v1/runs/run-sdk/checkpoints/latest") as resp,
    ):
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    assert doc["seq"] == 7 and doc["sha256"] == sha256_hex(payload)
    # The served checkpoint re-encodes to exactly the bytes the worker hashed.
    assert canonical_json(doc["checkpoint"]) == payload
    assert checkpoint_from_bytes(canonical_json(doc["checkpoint"])) == cp


class Receiver:
    """A small OTLP/HTTP receiver: records every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        msg = ExportTraceServiceRequest.FromString(await request.read())
        for rs in msg.resource_spans:
            service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}.get(
                "service.name"
            )
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "service": service,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "keys": [kv.key for kv in span.attributes],
                            "attrs": {
                                kv.key: kv.value.string_value or kv.value.int_value
                                for kv in span.attributes
                            },
                        }
                    )
        self.changed.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def wait_for(self, count: int) -> None:
        while len(self.spans) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 20)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield rec, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


STAGES = ["commit", "compress", "decode", "queue", "verify"]


async def test_other_spans_and_the_sidecars_own_spans_go_to_the_collector(
    pg_dsn: str, launch_sidecar: Launch, receiver: tuple[Receiver, str]
) -> None:
    rec, collector = receiver
    sidecar = await launch_sidecar(pg_dsn, "--forward-otlp", collector)
    spans = SpanRecorder()
    cp = make_checkpoint("run-fw", 0)
    checkpoint_span = spans.checkpoint_span(cp)
    body = otlp_body(
        [
            spans.span("GET /orders", {"http.method": "GET"}),
            checkpoint_span,
            spans.span("SELECT orders", {"db.system": "postgresql"}),
        ]
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/traces", data=body, headers=PROTOBUF) as resp,
    ):
        assert resp.status == 200, await resp.text()
    await rec.wait_for(2 + 1 + len(STAGES))
    worker = [s for s in rec.spans if s["service"] == "flowpoint-test-worker"]
    others = [s for s in worker if s["name"] != "checkpoint.save"]
    assert sorted(s["name"] for s in others) == ["GET /orders", "SELECT orders"]
    assert not any(k.startswith("flowpoint.") for s in others for k in s["keys"])
    # The checkpoint span goes on (sidecar/selftrace.py) without its payload: it never
    # leaves the sidecar, and the trace is whole.
    trace_id = format(checkpoint_span.context.trace_id, "032x")
    [copy] = [s for s in worker if s["name"] == "checkpoint.save"]
    assert copy["trace_id"] == trace_id
    assert copy["span_id"] == format(checkpoint_span.context.span_id, "016x")
    assert "flowpoint.payload" not in copy["keys"]
    assert copy["attrs"]["flowpoint.run_id"] == "run-fw"

    own = [s for s in rec.spans if s["service"] == "flowpoint-sidecar"]
    assert sorted(s["name"] for s in own) == [f"sidecar.{stage}" for stage in STAGES]
    for child in own:
        assert child["trace_id"] == trace_id
        assert child["parent"] == copy["span_id"]
        assert copy["start"] <= child["start"] <= child["end"]
    [commit] = [s for s in own if s["name"] == "sidecar.commit"]
    assert commit["attrs"]["flowpoint.outcome"] == "stored"
    assert commit["attrs"]["flowpoint.run_id"] == "run-fw"

    samples = await scrape(sidecar.url)
    assert metric(samples, "flowpoint_other_spans_total", result="forwarded") == 2
    assert metric(samples, "flowpoint_checkpoints_total", outcome="stored") == 1


async def test_options_are_read_from_the_environment(pg_dsn: str, launch_sidecar: Launch) -> None:
    sidecar = await launch_sidecar(
        pg_dsn, env={"FLOWPOINT_MAX_BODY_BYTES": "65536", "FLOWPOINT_LOG_FORMAT": "json"}
    )
    spans = SpanRecorder()
    big = otlp_body([spans.checkpoint_span(make_checkpoint("run-env", 0, payload_bytes=90_000))])
    small = otlp_body([spans.checkpoint_span(make_checkpoint("run-env", 0))])
    async with aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/traces", data=big, headers=PROTOBUF) as resp:
            assert resp.status == 413
        async with http.post(sidecar.url + "/v1/traces", data=small, headers=PROTOBUF) as resp:
            assert resp.status == 200


async def test_structured_json_logs(pg_dsn: str, launch_sidecar: Launch) -> None:
    sidecar = await launch_sidecar(pg_dsn, "--log-level", "DEBUG")
    spans = SpanRecorder()
    cp = make_checkpoint("run-log", 3)
    span = spans.checkpoint_span(cp)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # stored, then duplicate
            body = otlp_body([span])
            async with http.post(sidecar.url + "/v1/traces", data=body, headers=PROTOBUF) as r:
                assert r.status == 200
    sidecar.terminate()
    lines = [json.loads(line) for line in sidecar.log().splitlines() if line.startswith("{")]
    assert lines, sidecar.log()
    assert all({"ts", "level", "logger", "event"} <= set(doc) for doc in lines)
    events = {doc["event"]: doc for doc in lines}
    assert events["sidecar listening"]["port"] == sidecar.port
    trace_id = format(span.context.trace_id, "032x")
    for event, outcome in (
        ("checkpoint stored", "stored"),
        ("checkpoint already stored", "duplicate"),
    ):
        doc = events[event]
        assert (doc["run_id"], doc["seq"], doc["outcome"], doc["trace_id"]) == (
            "run-log",
            3,
            outcome,
            trace_id,
        )
    assert "sidecar stopped" in events


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp folder the embedded server (run as nobody when we are root) can reach."""
    base = Path(tempfile.mkdtemp(prefix="flowpoint-serve-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_serve_without_database_url_runs_an_embedded_postgres(
    open_tmp: Path, launch_sidecar: Launch
) -> None:
    # open_tmp first: its cleanup must run after the sidecar (and its PostgreSQL) stopped.
    base = open_tmp
    sidecar = await launch_sidecar(None, "--data-dir", str(base / "data"))
    spans = SpanRecorder()
    cp = make_checkpoint("run-emb", 0)
    async with aiohttp.ClientSession() as http:
        body = otlp_body([spans.checkpoint_span(cp)])
        async with http.post(sidecar.url + "/v1/traces", data=body, headers=PROTOBUF) as r:
            assert r.status == 200, await r.text()
        async with http.get(sidecar.url + "/v1/runs/run-emb/checkpoints/latest") as r:
            assert r.status == 200
            assert canonical_json((await r.json())["checkpoint"]) == checkpoint_to_bytes(cp)
    assert (base / "data" / "postgres" / "PG_VERSION").exists()
    assert await asyncio.to_thread(sidecar.terminate) == 0
    # The embedded server was stopped with the sidecar.
    assert not (base / "data" / "postgres" / "postmaster.pid").exists()


async def test_bad_option_fails_with_a_clear_message() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowpoint_cli",
        "serve",
        "--database-url",
        "mysql://nope",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"database_url" in err and b"postgresql://" in err


async def test_database_down_at_start_serves_not_ready_and_503(sidecar_logs: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/flowpoint"
    # Without a spool (with one, an outage is answered from it: tests/chaos/).
    sidecar = spawn_sidecar(dead, "--no-spool", log_dir=sidecar_logs)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                assert sidecar.proc.poll() is None, sidecar.log()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(sidecar.url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            async with http.get(sidecar.url + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "unavailable"
            spans = SpanRecorder()
            body = otlp_body([spans.checkpoint_span(make_checkpoint("run-down", 0))])
            async with http.post(sidecar.url + "/v1/traces", data=body, headers=PROTOBUF) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                assert (await r.json())["error"] == "store_unavailable"
    finally:
        code = await asyncio.to_thread(sidecar.terminate)
    assert code == 0
    assert "database unreachable at start-up" in sidecar.log()
