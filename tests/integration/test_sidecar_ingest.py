"""POST /v1/traces on the real sidecar app (in this test's loop) and a real PostgreSQL.

Bodies are built with the OpenTelemetry SDK's own OTLP encoder; every answer is checked
against what PostgreSQL holds afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from google.protobuf import json_format

from checkpoint.models import CheckpointStatus, checkpoint_to_bytes
from checkpoint.stores.postgres import PostgresStore
from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.ingest import DECODE_OFFLOAD_BYTES
from tests.fixtures.sidecar import (
    InprocSidecar,
    SpanRecorder,
    checkpoint_attributes,
    free_port,
    make_checkpoint,
    metric,
    otlp_body,
    parse_metrics,
    start_inproc_sidecar,
    stop_inproc_sidecar,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def spans() -> Iterator[SpanRecorder]:
    recorder = SpanRecorder()
    yield recorder
    recorder.shutdown()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    sidecar: InprocSidecar,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(sidecar.url + "/v1/traces", data=body, headers=headers or PROTOBUF) as r:
        return r.status, dict(r.headers), await r.read()


async def metrics_of(http: aiohttp.ClientSession, sidecar: InprocSidecar) -> Any:
    async with http.get(sidecar.url + "/metrics") as resp:
        return parse_metrics(await resp.text())


async def stored_rows(dsn: str) -> list[tuple[str, int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT run_id, seq, sha256 FROM checkpoints ORDER BY run_id, seq")
    finally:
        await conn.close()
    return [(r["run_id"], r["seq"], r["sha256"]) for r in rows]


def error_of(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert set(doc) == {"error", "message"}, doc
    assert doc["message"], doc
    return dict(doc)


async def test_protobuf_checkpoint_is_stored_exactly(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-pb", 1, payload_bytes=4000)
    status, headers, body = await post(http, sidecar_inproc, otlp_body([spans.checkpoint_span(cp)]))
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/x-protobuf")
    assert headers["Flowpoint-Outcome"] == "stored"
    assert body == b""  # an empty ExportTraceServiceResponse: full success
    assert await sidecar_inproc.store.get("run-pb", 1) == cp
    record = await sidecar_inproc.store.get_sealed("run-pb", 1)
    assert record is not None
    assert record.raw_size == len(checkpoint_to_bytes(cp))
    assert record.stored_size < record.raw_size  # zstd did its job
    run = await sidecar_inproc.store.get_run("run-pb")
    assert run is not None and run.latest_seq == 1 and run.status is CheckpointStatus.ACTIVE


async def test_otlp_json_body_is_accepted(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-json", 3)
    span = spans.checkpoint_span(cp)
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc = json_format.MessageToDict(encode_spans([span]))
    # OTLP JSON: ids in hex (protobuf's own mapping would write base64), ints as strings.
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                s["traceId"] = base64.b64decode(s["traceId"]).hex()
                s["spanId"] = base64.b64decode(s["spanId"]).hex()
                assert any(a["value"].get("intValue") == "3" for a in s["attributes"])
    status, headers, body = await post(
        http, sidecar_inproc, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {}
    assert await sidecar_inproc.store.get("run-json", 3) == cp
    record = await sidecar_inproc.store.get_sealed("run-json", 3)
    assert record is not None and record.trace_id == format(span.context.trace_id, "032x")


async def test_otlp_json_with_bad_hex_id_is_400(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession
) -> None:
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "name": "x"}]}]}]}
    status, _, body = await post(http, sidecar_inproc, json.dumps(doc).encode(), JSON)
    assert status == 400
    assert error_of(body)["error"] == "malformed_request"


async def test_gzip_body_is_accepted(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-gz", 0, payload_bytes=20_000)
    body = gzip.compress(otlp_body([spans.checkpoint_span(cp)]))
    status, _, answer = await post(
        http, sidecar_inproc, body, {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert status == 200, answer
    assert await sidecar_inproc.store.get("run-gz", 0) == cp


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", ""])
async def test_unsupported_content_type_is_415(
    sidecar_inproc: InprocSidecar,
    http: aiohttp.ClientSession,
    spans: SpanRecorder,
    content_type: str,
) -> None:
    body = otlp_body([spans.checkpoint_span(make_checkpoint("run-ct", 0))])
    status, _, answer = await post(http, sidecar_inproc, body, {"Content-Type": content_type})
    assert status == 415
    assert error_of(answer)["error"] == "unsupported_media_type"
    assert await stored_rows(_dsn(sidecar_inproc)) == []


@pytest.fixture
async def small_sidecar(pg_dsn: str) -> AsyncIterator[InprocSidecar]:
    """A sidecar whose body limit is 64 KiB."""
    sidecar = await start_inproc_sidecar(pg_dsn, max_body_bytes=64 * 1024)
    try:
        yield sidecar
    finally:
        await stop_inproc_sidecar(sidecar)


async def test_body_over_the_limit_is_413(
    small_sidecar: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-big", 0, payload_bytes=100_000)
    body = otlp_body([spans.checkpoint_span(cp)])
    assert len(body) > 64 * 1024
    status, _, answer = await post(http, small_sidecar, body)
    assert status == 413
    assert error_of(answer)["error"] == "payload_too_large"
    # Just under the limit is fine.
    ok = make_checkpoint("run-ok", 0, payload_bytes=40_000)
    status, _, answer = await post(http, small_sidecar, otlp_body([spans.checkpoint_span(ok)]))
    assert status == 200, answer
    assert [r[:2] for r in await stored_rows(_dsn(small_sidecar))] == [("run-ok", 0)]


async def test_gzip_bomb_is_413(small_sidecar: InprocSidecar, http: aiohttp.ClientSession) -> None:
    bomb = gzip.compress(b"\x00" * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024  # small on the wire, 8 MiB inflated
    status, _, answer = await post(
        http, small_sidecar, bomb, {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert status == 413
    assert error_of(answer)["error"] == "payload_too_large"


async def test_truncated_protobuf_is_400(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    body = otlp_body([spans.checkpoint_span(make_checkpoint("run-cut", 0, payload_bytes=3000))])
    before = await metrics_of(http, sidecar_inproc)
    status, _, answer = await post(http, sidecar_inproc, body[: len(body) // 2])
    assert status == 400
    assert error_of(answer)["error"] == "malformed_request"
    assert await stored_rows(_dsn(sidecar_inproc)) == []
    after = await metrics_of(http, sidecar_inproc)
    name = "flowpoint_checkpoint_rejected_total"
    assert metric(after, name, reason="malformed") - metric(before, name, reason="malformed") == 1


async def test_bad_checksum_is_400_and_nothing_of_the_request_is_stored(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    good = make_checkpoint("run-good", 0)
    bad = make_checkpoint("run-bad", 0)
    wrong_sha = "0" * 64
    body = otlp_body([spans.checkpoint_span(good), spans.checkpoint_span(bad, sha256=wrong_sha)])
    before = await metrics_of(http, sidecar_inproc)
    status, _, answer = await post(http, sidecar_inproc, body)
    assert status == 400
    err = error_of(answer)
    assert err["error"] == "checksum_mismatch"
    assert "run-bad#0" in err["message"]
    assert await stored_rows(_dsn(sidecar_inproc)) == []
    after = await metrics_of(http, sidecar_inproc)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("flowpoint_checkpoint_rejected_total", reason="checksum") == 1
    assert delta("flowpoint_checkpoint_rejected_total", reason="request_rejected") == 1
    assert delta("flowpoint_checkpoints_total", outcome="rejected") == 2
    assert delta("flowpoint_checkpoints_total", outcome="stored") == 0


async def test_same_checkpoint_twice_is_stored_once(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-dup", 1)
    body = otlp_body([spans.checkpoint_span(cp)])
    before = await metrics_of(http, sidecar_inproc)
    first = await post(http, sidecar_inproc, body)
    second = await post(http, sidecar_inproc, body)
    assert (first[0], first[1]["Flowpoint-Outcome"]) == (200, "stored")
    assert (second[0], second[1]["Flowpoint-Outcome"]) == (200, "duplicate")
    assert [r[:2] for r in await stored_rows(_dsn(sidecar_inproc))] == [("run-dup", 1)]
    after = await metrics_of(http, sidecar_inproc)
    outcome = "flowpoint_checkpoints_total"
    assert metric(after, outcome, outcome="stored") - metric(before, outcome, outcome="stored") == 1
    dup = metric(after, outcome, outcome="duplicate") - metric(before, outcome, outcome="duplicate")
    assert dup == 1


async def test_same_seq_other_checksum_is_409_and_counted(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    first = make_checkpoint("run-c", 2, note="first")
    second = make_checkpoint("run-c", 2, note="second")
    assert (await post(http, sidecar_inproc, otlp_body([spans.checkpoint_span(first)])))[0] == 200
    before = await metrics_of(http, sidecar_inproc)
    status, _, answer = await post(http, sidecar_inproc, otlp_body([spans.checkpoint_span(second)]))
    assert status == 409
    assert error_of(answer)["error"] == "seq_conflict"
    after = await metrics_of(http, sidecar_inproc)
    name = "flowpoint_checkpoints_total"
    assert metric(after, name, outcome="conflict") - metric(before, name, outcome="conflict") == 1
    assert await sidecar_inproc.store.get("run-c", 2) == first


async def test_stale_epoch_is_409(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp0 = make_checkpoint("run-e", 0)
    assert (await post(http, sidecar_inproc, otlp_body([spans.checkpoint_span(cp0)])))[0] == 200
    claim = await sidecar_inproc.store.claim("run-e", "worker-2", 60)
    assert claim.epoch == 1
    zombie = make_checkpoint("run-e", 1, note="zombie")
    status, _, answer = await post(
        http, sidecar_inproc, otlp_body([spans.checkpoint_span(zombie, epoch=0)])
    )
    assert status == 409
    assert error_of(answer)["error"] == "stale_epoch"
    owner = make_checkpoint("run-e", 1, note="owner")
    status, _, answer = await post(
        http, sidecar_inproc, otlp_body([spans.checkpoint_span(owner, epoch=1)])
    )
    assert status == 200, answer
    assert await sidecar_inproc.store.get("run-e") == owner


async def test_payload_not_matching_its_attributes_is_400(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-m", 4)
    attrs = checkpoint_attributes(cp)
    attrs["flowpoint.seq"] = 5
    status, _, answer = await post(
        http, sidecar_inproc, otlp_body([spans.span("checkpoint.save", attrs)])
    )
    assert status == 400
    err = error_of(answer)
    assert err["error"] == "payload_mismatch" and "seq" in err["message"]
    assert await stored_rows(_dsn(sidecar_inproc)) == []


async def test_payload_that_is_not_a_checkpoint_is_400(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("run-np", 0)
    junk = b'{"not": "a checkpoint"}'
    attrs = checkpoint_attributes(cp, junk)
    status, _, answer = await post(
        http, sidecar_inproc, otlp_body([spans.span("checkpoint.save", attrs)])
    )
    assert status == 400
    assert error_of(answer)["error"] == "invalid_payload"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"flowpoint.run_id": None}, "flowpoint.run_id"),
        ({"flowpoint.seq": "1"}, "flowpoint.seq must be an int"),
        ({"flowpoint.seq": -1}, "flowpoint.seq must be >= 0"),
        ({"flowpoint.status": "sleeping"}, "flowpoint.status"),
        ({"flowpoint.sha256": "abc"}, "64 hex digits"),
        ({"flowpoint.run_id": "../etc"}, "invalid flowpoint.run_id"),
        ({"flowpoint.payload": None}, "flowpoint.payload"),
        ({"flowpoint.epoch": None}, "flowpoint.epoch"),
    ],
)
async def test_missing_or_mistyped_attributes_are_400(
    sidecar_inproc: InprocSidecar,
    http: aiohttp.ClientSession,
    spans: SpanRecorder,
    change: dict[str, Any],
    needle: str,
) -> None:
    attrs = checkpoint_attributes(make_checkpoint("run-a", 1))
    for key, value in change.items():
        if value is None:
            del attrs[key]
        else:
            attrs[key] = value
    status, _, answer = await post(
        http, sidecar_inproc, otlp_body([spans.span("checkpoint.save", attrs)])
    )
    assert status == 400
    err = error_of(answer)
    assert err["error"] == "invalid_checkpoint"
    assert needle in err["message"]


async def test_only_other_spans_is_200_and_counted_as_dropped(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    body = otlp_body([spans.span("GET /things", {"http.method": "GET"}), spans.span("db", {})])
    before = await metrics_of(http, sidecar_inproc)
    status, headers, _ = await post(http, sidecar_inproc, body)
    assert status == 200
    assert "Flowpoint-Outcome" not in headers
    after = await metrics_of(http, sidecar_inproc)
    name = "flowpoint_other_spans_total"
    assert metric(after, name, result="dropped") - metric(before, name, result="dropped") == 2


async def test_empty_export_is_200(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post(http, sidecar_inproc, b"")
    assert status == 200


async def test_health_and_readiness(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(sidecar_inproc.url + "/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    async with http.get(sidecar_inproc.url + "/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_readyz_is_503_when_the_database_is_gone(
    pg_dsn: str, http: aiohttp.ClientSession
) -> None:
    # A store pointed at a port where nothing listens: the sidecar runs, but is not ready.
    dead = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    server = TestServer(create_app(Settings(port=0), dead), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 503
            doc = await resp.json()
            assert doc["status"] == "unavailable" and doc["message"]
        # A checkpoint cannot be made durable: 503 + Retry-After, never a 500.
        spans = SpanRecorder()
        body = otlp_body([spans.checkpoint_span(make_checkpoint("run-x", 0))])
        async with http.post(url + "/v1/traces", data=body, headers=PROTOBUF) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"] == "store_unavailable"
    finally:
        await server.close()
        await dead.close()


async def test_tokens_authenticate_and_fence_tenants(
    pg_dsn: str, http: aiohttp.ClientSession, spans: SpanRecorder, tmp_path: Any
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# token tenant\ns3cr3t-token-acme acme\n")
    sidecar = await start_inproc_sidecar(pg_dsn, tokens_file=tokens)
    try:
        cp = make_checkpoint("run-t", 0, tenant_id="acme")
        body = otlp_body([spans.checkpoint_span(cp)])
        status, _, _ = await post(http, sidecar, body)
        assert status == 401
        auth = {**PROTOBUF, "Authorization": "Bearer s3cr3t-token-acme"}
        status, _, answer = await post(http, sidecar, body, auth)
        assert status == 200, answer
        other = make_checkpoint("run-u", 0, tenant_id="globex")
        status, _, answer = await post(
            http, sidecar, otlp_body([spans.checkpoint_span(other)]), auth
        )
        assert status == 400
        assert error_of(answer)["error"] == "tenant_mismatch"
        assert [r[:2] for r in await stored_rows(_dsn(sidecar))] == [("run-t", 0)]
    finally:
        await stop_inproc_sidecar(sidecar)


async def test_events_are_published_after_commit(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    from sidecar.keys import EVENTS_KEY

    broker = sidecar_inproc.app[EVENTS_KEY]
    sub = broker.subscribe("run-ev")
    try:
        for cp in (
            make_checkpoint("run-ev", 0),
            make_checkpoint("run-ev", 1),
            make_checkpoint("run-ev", 2, pending=["review"]),
        ):
            status, _, answer = await post(
                http, sidecar_inproc, otlp_body([spans.checkpoint_span(cp)])
            )
            assert status == 200, answer
        got = []
        while sub.pending():
            event = await sub.get()
            assert event is not None
            got.append((event.event, {k: event.data.get(k) for k in ("seq", "status", "path")}))
    finally:
        broker.unsubscribe(sub)
    assert got == [
        ("checkpoint_created", {"seq": 0, "status": "active", "path": None}),
        ("status_changed", {"seq": 0, "status": "active", "path": None}),
        ("checkpoint_created", {"seq": 1, "status": "active", "path": None}),
        ("checkpoint_created", {"seq": 2, "status": "pending_input", "path": None}),
        ("status_changed", {"seq": 2, "status": "pending_input", "path": None}),
        ("input_requested", {"seq": 2, "status": None, "path": "review"}),
    ]


async def test_seq_gap_is_counted(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    before = await metrics_of(http, sidecar_inproc)
    for seq in (1, 2, 5, 6):
        cp = make_checkpoint("run-gap", seq)
        assert (await post(http, sidecar_inproc, otlp_body([spans.checkpoint_span(cp)])))[0] == 200
    after = await metrics_of(http, sidecar_inproc)
    name = "flowpoint_seq_gaps_total"
    assert metric(after, name) - metric(before, name) == 1


async def test_many_checkpoints_in_one_request(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cps = [make_checkpoint(f"run-many-{i % 7}", i // 7) for i in range(70)]
    # One large payload too: it is verified and compressed in a worker thread.
    cps.append(make_checkpoint("run-many-big", 0, payload_bytes=300_000))
    status, headers, answer = await post(
        http, sidecar_inproc, otlp_body([spans.checkpoint_span(cp) for cp in cps])
    )
    assert status == 200, answer
    assert headers["Flowpoint-Outcome"] == "stored"
    assert len(await stored_rows(_dsn(sidecar_inproc))) == 71
    assert await sidecar_inproc.store.get("run-many-big") == cps[-1]

    # A body past DECODE_OFFLOAD_BYTES is decoded in a worker thread: same answer.
    huge = [make_checkpoint(f"run-huge-{i}", 0, payload_bytes=3_500_000) for i in range(3)]
    body = otlp_body([spans.checkpoint_span(cp) for cp in huge])
    assert len(body) > DECODE_OFFLOAD_BYTES
    status, headers, answer = await post(http, sidecar_inproc, body)
    assert status == 200 and headers["Flowpoint-Outcome"] == "stored", answer
    assert await sidecar_inproc.store.get("run-huge-2") == huge[2]


def _dsn(sidecar: InprocSidecar) -> str:
    dsn = sidecar.store.dsn
    assert isinstance(dsn, str)
    return dsn


async def test_unreachable_collector_is_counted_and_never_delays_checkpoints(
    pg_dsn: str, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    collector = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sidecar = await start_inproc_sidecar(pg_dsn, forward_otlp=collector)
    try:
        cp = make_checkpoint("run-fwd", 0)
        body = otlp_body([spans.span("GET /x", {}), spans.checkpoint_span(cp)])
        status, _, answer = await post(http, sidecar, body)
        assert status == 200, answer
        assert await sidecar.store.get("run-fwd", 0) == cp
        for _ in range(200):  # the forwarder retries in the background, then gives up
            samples = await metrics_of(http, sidecar)
            if metric(samples, "flowpoint_other_spans_total", result="failed") == 1:
                break
            await asyncio.sleep(0.05)
        assert metric(samples, "flowpoint_other_spans_total", result="failed") == 1
        assert metric(samples, "flowpoint_other_spans_total", result="forwarded") == 0
    finally:
        await stop_inproc_sidecar(sidecar)


async def test_a_gzip_body_cut_short_is_refused_and_nothing_is_stored(
    sidecar_inproc: InprocSidecar, http: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    cp = make_checkpoint("gz-cut", 0, payload_bytes=20_000)
    packed = gzip.compress(otlp_body([spans.checkpoint_span(cp)]))
    for cut in (10, len(packed) // 2, len(packed) - 4):  # header, middle, inside the trailer
        status, _, answer = await post(
            http, sidecar_inproc, packed[:cut], {**PROTOBUF, "Content-Encoding": "gzip"}
        )
        assert status == 400, answer
        assert error_of(answer)["error"] == "bad_content_encoding"
    assert await sidecar_inproc.store.get("gz-cut", 0) is None
