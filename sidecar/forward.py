"""Forwarding the spans that are not checkpoints to the pod's real OTLP collector.

The sidecar may be a pod's only OTLP endpoint: ordinary telemetry that arrives with the
checkpoints is passed on, as OTLP/HTTP protobuf, to ``--forward-otlp``. It never delays a
checkpoint's answer: requests wait in a bounded queue, a background task sends them with a
few retries, and whatever cannot be sent is counted (``flowpoint_other_spans_total``) and
dropped, as telemetry is. Checkpoint spans are never forwarded: their payloads stay here.

The sidecar's own stage spans are made by :mod:`sidecar.selftrace`; :class:`Stage` is the
timing record it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from sidecar.logs import log_event
from sidecar.metrics import Metrics

__all__ = ["OtlpForwarder", "Stage"]

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
