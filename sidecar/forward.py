"""Forwarding the spans that are not checkpoints to the pod's real OTLP collector.

The sidecar may be a pod's only OTLP endpoint: ordinary telemetry that arrives with the
checkpoints is passed on, as OTLP/HTTP protobuf, to ``--forward-otlp``. It never delays a
checkpoint's answer: requests wait in a bounded queue, a background task sends them with a
few retries, and whatever cannot be sent is counted (``flowpoint_other_spans_total``) and
dropped, as telemetry is. Checkpoint spans are never forwarded: their payloads stay here.

The sidecar's own work goes the same way: :class:`StageTracer` turns each checkpoint's
trip through the sidecar into spans (``flowpoint.sidecar.save`` and one child per stage)
under the worker's ``checkpoint.save`` span, so one trace shows node -> checkpoint ->
commit. They are built directly as OTLP messages: no SDK, no extra thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from sidecar.logs import log_event
from sidecar.metrics import Metrics

__all__ = ["OtlpForwarder", "StageTracer"]

log = logging.getLogger("flowpoint.sidecar.forward")

_RETRYABLE: Final = frozenset({408, 429, 502, 503, 504})


class _Retryable(Exception):
    """A send that may succeed when tried again (5xx, 429, connection errors)."""


@dataclass(slots=True)
class _Item:
    request: ExportTraceServiceRequest
    spans: int


class OtlpForwarder:
    """Sends non-checkpoint spans to ``url`` (an OTLP/HTTP traces endpoint), or drops them.

    With ``url=None`` every span is counted as dropped.
    """

    def __init__(
        self,
        url: str | None,
        metrics: Metrics,
        *,
        queue_size: int = 256,
        timeout: float = 10.0,
        attempts: int = 3,
        max_retry_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.timeout = timeout
        self.attempts = attempts
        self.max_retry_seconds = max_retry_seconds
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._forwarded = metrics.other_spans_total.labels(result="forwarded")
        self._dropped = metrics.other_spans_total.labels(result="dropped")
        self._failed = metrics.other_spans_total.labels(result="failed")

    @property
    def enabled(self) -> bool:
        """True when spans are forwarded (a URL is configured)."""
        return self.url is not None

    async def start(self) -> None:
        """Start the sending task (no-op without a URL)."""
        if self.url is None or self._task is not None:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Content-Type": "application/x-protobuf"},
        )
        self._task = asyncio.create_task(self._run(), name="flowpoint-otlp-forwarder")

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``drain_timeout`` seconds), then stop."""
        if self._task is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._dropped.inc(item.spans)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def submit(self, request: ExportTraceServiceRequest, spans: int, *, own: bool = False) -> None:
        """Queue ``request`` (holding ``spans`` spans) for sending; never blocks.

        ``own`` marks the sidecar's own spans: they are not counted as other spans.
        """
        if spans <= 0:
            return
        if self._task is None:
            if not own:
                self._dropped.inc(spans)
            return
        try:
            self._queue.put_nowait(_Item(request, 0 if own else spans))
        except asyncio.QueueFull:
            if not own:
                self._dropped.inc(spans)
            log_event(log, logging.WARNING, "forward queue full: spans dropped", spans=spans)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._send(item)
                self._forwarded.inc(item.spans)
            except Exception as exc:
                self._failed.inc(item.spans)
                log_event(
                    log,
                    logging.WARNING,
                    "forwarding spans failed",
                    spans=item.spans,
                    target=self.url,
                    error=str(exc),
                )

    async def _send(self, item: _Item) -> None:
        assert self._session is not None and self.url is not None
        body = item.request.SerializeToString()
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            reraise=True,
        ):
            with attempt:
                try:
                    async with self._session.post(self.url, data=body) as resp:
                        await resp.read()
                        if resp.status in _RETRYABLE:
                            raise _Retryable(f"HTTP {resp.status}")
                        if resp.status >= 300:
                            raise RuntimeError(f"the collector refused the spans: {resp.status}")
                except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                    raise _Retryable(str(exc)) from exc


@dataclass(slots=True)
class Stage:
    """One stage of a checkpoint's trip, in wall-clock nanoseconds."""

    name: str
    start_ns: int
    end_ns: int


class StageTracer:
    """Collects the sidecar's spans for a batch of checkpoints and hands them to a forwarder.

    Only active when the forwarder has a target: spans nobody receives cost nothing.
    """

    SERVICE_NAME: Final = "flowpoint-sidecar"

    def __init__(self, forwarder: OtlpForwarder) -> None:
        self.forwarder = forwarder
        self._pending: list[Span] = []

    @property
    def enabled(self) -> bool:
        return self.forwarder.enabled

    def add(
        self,
        trace_id: str,
        parent_span_id: str,
        start_ns: int,
        end_ns: int,
        stages: Sequence[Stage],
        attributes: Mapping[str, str | int],
        *,
        error: str | None = None,
    ) -> None:
        """Record ``flowpoint.sidecar.save`` under ``parent_span_id``, one child per stage."""
        if not (self.enabled and trace_id and parent_span_id):
            return
        trace = bytes.fromhex(trace_id)
        root = self._span(trace, bytes.fromhex(parent_span_id), "flowpoint.sidecar.save")
        root.start_time_unix_nano = start_ns
        root.end_time_unix_nano = max(end_ns, start_ns)
        for key, value in attributes.items():
            kv = root.attributes.add()
            kv.key = key
            if isinstance(value, int):
                kv.value.int_value = value
            else:
                kv.value.string_value = value
        if error is not None:
            root.status.code = Status.STATUS_CODE_ERROR
            root.status.message = error
        self._pending.append(root)
        for stage in stages:
            child = self._span(trace, root.span_id, f"flowpoint.sidecar.{stage.name}")
            child.start_time_unix_nano = stage.start_ns
            child.end_time_unix_nano = max(stage.end_ns, stage.start_ns)
            self._pending.append(child)

    def flush(self) -> None:
        """Send what :meth:`add` collected as one OTLP request."""
        if not self._pending:
            return
        spans, self._pending = self._pending, []
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key = "service.name"
        kv.value.string_value = self.SERVICE_NAME
        scope: ScopeSpans = rs.scope_spans.add()
        scope.scope.name = "flowpoint.sidecar"
        scope.spans.extend(spans)
        self.forwarder.submit(request, len(spans), own=True)

    @staticmethod
    def _span(trace_id: bytes, parent: bytes, name: str) -> Span:
        span = Span()
        span.trace_id = trace_id
        span.parent_span_id = parent
        span.span_id = (random.getrandbits(64) or 1).to_bytes(8, "big")
        span.name = name
        span.kind = Span.SPAN_KIND_INTERNAL
        return span
