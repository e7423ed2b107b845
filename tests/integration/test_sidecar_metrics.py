"""``/metrics`` of a sidecar subprocess: exact changes for known traffic, contract names,
OpenMetrics exemplars, bounded route labels.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from checkpoint.models import checkpoint_to_bytes
from tests.fixtures.sidecar import (
    SidecarProcess,
    SpanRecorder,
    make_checkpoint,
    metric,
    otlp_body,
    scrape,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}

CONTRACT = {
    "flowpoint_checkpoint_save_seconds": "histogram",
    "flowpoint_checkpoint_stage_seconds": "histogram",
    "flowpoint_checkpoint_payload_bytes": "histogram",
    "flowpoint_checkpoints": "counter",
    "flowpoint_checkpoint_rejected": "counter",
    "flowpoint_commit_batch_size": "histogram",
    "flowpoint_seq_gaps": "counter",
    "flowpoint_breaker_state": "gauge",
    "flowpoint_spool_bytes": "gauge",
    "flowpoint_spool_records": "gauge",
    "flowpoint_spool_oldest_age_seconds": "gauge",
    "flowpoint_resume_seconds": "histogram",
    "flowpoint_claim_conflicts": "counter",
    "flowpoint_http_request_seconds": "histogram",
}


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with http.post(url + "/v1/traces", data=body, headers=PROTOBUF) as resp:
        await resp.read()
        return resp.status


async def test_known_traffic_moves_counters_exactly(sidecar_process: SidecarProcess) -> None:
    url = sidecar_process.url
    spans = SpanRecorder()
    new = [make_checkpoint("run-m1", seq) for seq in range(1, 6)]
    new_spans = [spans.checkpoint_span(cp) for cp in new]
    conflicting = spans.checkpoint_span(make_checkpoint("run-m1", 2, note="other"))
    bad = spans.checkpoint_span(make_checkpoint("run-m2", 1), sha256="f" * 64)
    raw_total = sum(len(checkpoint_to_bytes(cp)) for cp in new)

    before = await scrape(url)
    async with aiohttp.ClientSession() as http:
        # 5 new checkpoints: 3 alone, 2 in one request.
        for span in new_spans[:3]:
            assert await _post(http, url, otlp_body([span])) == 200
        assert await _post(http, url, otlp_body(new_spans[3:])) == 200
        # 2 replays, 1 conflict, 1 bad checksum.
        assert await _post(http, url, otlp_body([new_spans[0]])) == 200
        assert await _post(http, url, otlp_body([new_spans[4]])) == 200
        assert await _post(http, url, otlp_body([conflicting])) == 409
        assert await _post(http, url, otlp_body([bad])) == 400
    after = await scrape(url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    total = "flowpoint_checkpoints_total"
    assert delta(total, outcome="stored") == 5
    assert delta(total, outcome="duplicate") == 2
    assert delta(total, outcome="conflict") == 1
    assert delta(total, outcome="rejected") == 1
    assert delta(total, outcome="spooled") == 0
    assert delta("flowpoint_checkpoint_rejected_total", reason="checksum") == 1
    # Save latency: observed once per stored record, never for replays or refusals.
    assert delta("flowpoint_checkpoint_save_seconds_count") == 5
    assert delta("flowpoint_checkpoint_save_seconds_sum") > 0
    assert delta("flowpoint_checkpoint_payload_bytes_count", kind="raw") == 5
    assert delta("flowpoint_checkpoint_payload_bytes_sum", kind="raw") == raw_total
    stored_sum = delta("flowpoint_checkpoint_payload_bytes_sum", kind="stored")
    assert 0 < stored_sum < raw_total
    # Every record that reached the writer went through one commit (5 new + 2 + 1 conflict).
    assert delta("flowpoint_commit_batch_size_sum") == 8
    assert delta("flowpoint_checkpoint_stage_seconds_count", stage="commit") == 8
    # The bad checksum was verified but never compressed.
    assert delta("flowpoint_checkpoint_stage_seconds_count", stage="decode") == 9
    assert delta("flowpoint_checkpoint_stage_seconds_count", stage="compress") == 8
    assert delta("flowpoint_seq_gaps_total") == 0
    route = "/v1/traces"
    assert delta("flowpoint_http_request_seconds_count", route=route, code="200") == 6
    assert delta("flowpoint_http_request_seconds_count", route=route, code="409") == 1
    assert delta("flowpoint_http_request_seconds_count", route=route, code="400") == 1
    assert metric(after, "flowpoint_breaker_state") == 0
    assert metric(after, "flowpoint_spool_records") == 0


async def test_contract_metrics_exist_and_save_latency_has_trace_exemplars(
    sidecar_process: SidecarProcess,
) -> None:
    url = sidecar_process.url
    spans = SpanRecorder()
    span = spans.checkpoint_span(make_checkpoint("run-x", 1))
    async with aiohttp.ClientSession() as http:
        assert await _post(http, url, otlp_body([span])) == 200
        # Raw paths with ids must map to their route pattern.
        async with http.get(url + "/v1/runs/run-x") as resp:
            assert resp.status == 200
        async with http.get(url + "/no/such/route/abc123") as resp:
            assert resp.status == 404
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(url + "/metrics", headers=accept) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            text = await resp.text()

    families = {f.name: f for f in text_string_to_metric_families(text)}  # type: ignore[no-untyped-call]
    for name, kind in CONTRACT.items():
        assert name in families, name
        assert families[name].type == kind, name
    trace_id = format(span.context.trace_id, "032x")
    exemplars = [
        s.exemplar
        for s in families["flowpoint_checkpoint_save_seconds"].samples
        if s.exemplar is not None
    ]
    assert [e.labels for e in exemplars] == [{"trace_id": trace_id}]
    routes = {
        s.labels["route"]
        for s in families["flowpoint_http_request_seconds"].samples
        if "route" in s.labels
    }
    assert "/v1/runs/{run_id}" in routes and "unmatched" in routes
    assert not any("run-x" in r or "abc123" in r for r in routes)
    # No per-run or per-tenant label anywhere.
    for family in families.values():
        for sample in family.samples:
            assert not {"run_id", "tenant_id", "flow_id"} & set(sample.labels), family.name


async def test_plain_text_format_by_default(sidecar_process: SidecarProcess) -> None:
    samples = await scrape(sidecar_process.url)
    assert metric(samples, "flowpoint_checkpoints_total", outcome="stored") == 0
    assert ("flowpoint_breaker_state", frozenset()) in samples
