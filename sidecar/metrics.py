"""The sidecar's Prometheus metrics (prefix ``flowpoint_``), one registry per application.

Names, label sets and units are part of the public contract (dashboards and alert rules
depend on them): base units only, and no per-run, per-flow or per-tenant labels. Every
labelled series the dashboards query is created at zero up front, so ``rate()`` and alerts
see it before the first event.

``/metrics`` answers in the OpenMetrics format when the scraper asks for it (Prometheus
does), which is the only format that carries the save-latency exemplars (``trace_id``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

__all__ = [
    "BATCH_BUCKETS",
    "BYTES_BUCKETS",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "REJECT_REASONS",
    "STAGES",
    "Metrics",
    "metrics_handler",
]

# Fine from 0.5 ms to 250 ms, where the save-latency objective (p99 < 100 ms) lives.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BYTES_BUCKETS: Final = tuple(float(4**k * 256) for k in range(10))  # 256 B .. 64 MiB
BATCH_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
RATIO_BUCKETS: Final = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)

OUTCOMES: Final = ("stored", "spooled", "duplicate", "conflict", "rejected")
STAGES: Final = ("decode", "verify", "compress", "queue", "commit")
REJECT_REASONS: Final = (
    "malformed",
    "too_large",
    "invalid_attributes",
    "checksum",
    "invalid_payload",
    "payload_mismatch",
    "tenant_mismatch",
    "refused_by_store",
    "request_rejected",
)


# Reasons that refuse a whole request before any checkpoint in it could be read.
_REQUEST_REASONS: Final = frozenset({"malformed", "too_large"})


class Metrics:
    """Every metric of the sidecar, registered in its own :class:`CollectorRegistry`.

    Attribute names are what other modules look up (the resume API reads
    ``resume_seconds`` and ``claim_conflicts_total``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.checkpoint_save_seconds = Histogram(
            "flowpoint_checkpoint_save_seconds",
            "Checkpoint save latency: span start in the worker to durable commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoint_stage_seconds = Histogram(
            "flowpoint_checkpoint_stage_seconds",
            "Time each checkpoint spent in one stage of the sidecar's write path",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoint_payload_bytes = Histogram(
            "flowpoint_checkpoint_payload_bytes",
            "Size of stored checkpoints: raw canonical JSON and stored (zstd)",
            ["kind"],
            buckets=BYTES_BUCKETS,
            registry=r,
        )
        self.checkpoint_compression_ratio = Histogram(
            "flowpoint_checkpoint_compression_ratio",
            "Raw size divided by stored size of each stored checkpoint",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.checkpoints_total = Counter(
            "flowpoint_checkpoints_total",
            "Checkpoints received, by outcome",
            ["outcome"],
            registry=r,
        )
        self.checkpoint_rejected_total = Counter(
            "flowpoint_checkpoint_rejected_total",
            "Checkpoints refused as bad input, by reason (for 'malformed' and 'too_large': "
            "requests, whose checkpoints could not be read)",
            ["reason"],
            registry=r,
        )
        self.commit_batch_size = Histogram(
            "flowpoint_commit_batch_size",
            "Checkpoints per group-commit transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.seq_gaps_total = Counter(
            "flowpoint_seq_gaps_total",
            "Stored checkpoints whose seq skipped past the run's previous latest + 1",
            registry=r,
        )
        self.breaker_state = Gauge(
            "flowpoint_breaker_state",
            "Database circuit breaker: 0 closed, 1 half-open, 2 open",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "flowpoint_spool_bytes", "Bytes waiting in the durable spool", registry=r
        )
        self.spool_records = Gauge(
            "flowpoint_spool_records", "Checkpoints waiting in the durable spool", registry=r
        )
        self.spool_oldest_age_seconds = Gauge(
            "flowpoint_spool_oldest_age_seconds",
            "Age of the oldest checkpoint waiting in the spool (0 when empty)",
            registry=r,
        )
        self.resume_seconds = Histogram(
            "flowpoint_resume_seconds",
            "Time to serve a checkpoint for resume (load, verify, answer)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.claim_conflicts_total = Counter(
            "flowpoint_claim_conflicts_total",
            "Claims refused because another worker holds the run",
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "flowpoint_http_request_seconds",
            "HTTP request latency by route pattern and status code",
            ["route", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_errors_total = Counter(
            "flowpoint_commit_errors_total",
            "Group commits that failed (their checkpoints were answered 503 and are retried)",
            registry=r,
        )
        self.writer_pending = Gauge(
            "flowpoint_writer_pending",
            "Checkpoints waiting for, or inside, a group commit",
            registry=r,
        )
        self.other_spans_total = Counter(
            "flowpoint_other_spans_total",
            "Spans that are not checkpoints: forwarded, dropped (no target or queue full) "
            "or failed (the target refused or was unreachable)",
            ["result"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.checkpoints_total.labels(outcome=outcome)
        for stage in STAGES:
            self.checkpoint_stage_seconds.labels(stage=stage)
        for kind in ("raw", "stored"):
            self.checkpoint_payload_bytes.labels(kind=kind)
        for reason in REJECT_REASONS:
            self.checkpoint_rejected_total.labels(reason=reason)
        for result in ("forwarded", "dropped", "failed"):
            self.other_spans_total.labels(result=result)
        self.breaker_state.set(0)
        self.spool_bytes.set(0)
        self.spool_records.set(0)
        self.spool_oldest_age_seconds.set(0)

        # Label children looked up once: the write path touches these per checkpoint.
        self.stage = {s: self.checkpoint_stage_seconds.labels(stage=s) for s in STAGES}
        self.outcome = {o: self.checkpoints_total.labels(outcome=o) for o in OUTCOMES}
        self.raw_bytes = self.checkpoint_payload_bytes.labels(kind="raw")
        self.stored_bytes = self.checkpoint_payload_bytes.labels(kind="stored")

    def rejected(self, reason: str, count: int = 1) -> None:
        """Count ``count`` refused checkpoints (reason label) and their ``rejected`` outcome."""
        self.checkpoint_rejected_total.labels(reason=reason).inc(count)
        if reason not in _REQUEST_REASONS:
            self.outcome["rejected"].inc(count)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body and its content type, OpenMetrics when ``accept`` asks."""
        if "application/openmetrics-text" in accept:
            body: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
            return body, OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving ``metrics`` on ``GET /metrics``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        resp = web.Response(body=body)
        # Set raw: aiohttp's content_type setter drops the version/charset parameters.
        resp.headers["Content-Type"] = content_type
        return resp

    return handler
