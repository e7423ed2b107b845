"""The sidecar's aiohttp application: ingest, resume API, metrics and health routes.

:func:`create_app` wires one application around a store. It does not open or close the
store (the caller owns it: ``sidecar.server`` or a test fixture); it starts the group-commit
writer and the OTLP forwarder on startup and, on cleanup (after in-flight requests have
finished), commits whatever is still queued before stopping them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from checkpoint.store import BaseStore
from sidecar.api import setup_api
from sidecar.auth import auth_middleware
from sidecar.config import Settings, load_tokens
from sidecar.durability import Durability
from sidecar.encryption import keyring_of
from sidecar.events import EventBroker
from sidecar.forward import OtlpForwarder
from sidecar.ingest import IngestService
from sidecar.keys import EVENTS_KEY, METRICS_KEY, SETTINGS_KEY, STORE_KEY, TOKENS_KEY
from sidecar.metrics import Metrics, metrics_handler
from sidecar.retention import setup_retention
from sidecar.writer import GroupCommitWriter, Sink, StoreSink

__all__ = ["DURABILITY_KEY", "FORWARDER_KEY", "INGEST_KEY", "WRITER_KEY", "create_app"]

INGEST_KEY: Final = web.AppKey("flowpoint.ingest", IngestService)
WRITER_KEY: Final = web.AppKey("flowpoint.writer", GroupCommitWriter)
FORWARDER_KEY: Final = web.AppKey("flowpoint.forwarder", OtlpForwarder)
DURABILITY_KEY: Final = web.AppKey("flowpoint.durability", Durability)

READY_TIMEOUT: Final = 2.0
_UNMATCHED: Final = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: Settings,
    store: BaseStore,
    *,
    sink: Sink | None = None,
    metrics: Metrics | None = None,
    durable: bool | None = None,
) -> web.Application:
    """Build the sidecar application for ``store``.

    ``sink`` replaces the default "write to the store" durability step (e.g. a breaker
    with a spool); ``metrics`` lets a caller share or inspect the metrics object.
    ``durable`` puts the circuit breaker and the spool (``sidecar.durability``) in front
    of the store; by default only when the settings name a ``spool_dir``.
    """
    metrics = metrics if metrics is not None else Metrics()
    if durable is None:
        durable = settings.spool and settings.spool_dir is not None
    durability = Durability.from_settings(settings, store, metrics) if durable else None
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_http_metrics(metrics), auth_middleware],
        # /v1/traces inflates gzip itself, refusing truncated streams (see ingest._gunzip).
        handler_args={"auto_decompress": False},
    )
    # The resume API reads through the spool while it holds checkpoints.
    app[STORE_KEY] = durability.view if durability is not None else store
    # Encryption at rest: the ingest encrypts, reads decrypt through the store.
    keyring = keyring_of(settings) or store.keyring
    store.keyring = app[STORE_KEY].keyring = keyring
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    broker = EventBroker()
    app[EVENTS_KEY] = broker
    if settings.tokens_file is not None:
        app[TOKENS_KEY] = load_tokens(settings.tokens_file)

    forwarder = OtlpForwarder(settings.forward_otlp, metrics, queue_size=settings.forward_queue)
    ingest = IngestService(
        metrics=metrics,
        broker=broker,
        forwarder=forwarder,
        max_body_bytes=settings.max_body_bytes,
        compression_level=settings.compression_level,
        offload_bytes=settings.offload_bytes,
        offload_threads=settings.offload_threads,
        keyring=keyring,
    )
    writer = GroupCommitWriter(
        sink if sink is not None else (durability or StoreSink(store)),
        max_batch=settings.max_batch,
        max_wait=settings.max_batch_wait,
        max_inflight=settings.max_inflight_batches,
        observer=ingest.on_batch,
    )
    ingest.attach(writer)
    app[INGEST_KEY] = ingest
    app[WRITER_KEY] = writer
    app[FORWARDER_KEY] = forwarder

    app.router.add_post("/v1/traces", ingest.handle, name="traces")
    app.router.add_get("/metrics", metrics_handler(metrics), name="metrics")
    app.router.add_get("/healthz", _healthz, name="healthz")
    app.router.add_get(
        "/readyz", durability.readyz if durability is not None else _readyz, name="readyz"
    )
    setup_api(app)
    setup_retention(app, settings)

    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    if durability is not None:
        app[DURABILITY_KEY] = durability
        # Opened (and a predecessor's spool replayed) before serving; closed after the
        # writer has flushed its last batch into it.
        app.on_startup.insert(0, _start_durability)
        app.on_cleanup.append(_stop_durability)
    return app


async def _start_durability(app: web.Application) -> None:
    await app[DURABILITY_KEY].start()


async def _stop_durability(app: web.Application) -> None:
    await app[DURABILITY_KEY].close()


async def _start(app: web.Application) -> None:
    app[WRITER_KEY].start()
    await app[FORWARDER_KEY].start()


async def _stop(app: web.Application) -> None:
    # Cleanup runs after in-flight requests finished: flush the writer, then the forwarder.
    await app[WRITER_KEY].close()
    await app[FORWARDER_KEY].close()
    await app[INGEST_KEY].tracer.aclose()
    app[INGEST_KEY].close()


async def _healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: the database answers (``store.ping()``) and the writer runs."""
    store = request.app[STORE_KEY]
    ping: Callable[[], Awaitable[Any]] | None = getattr(store, "ping", None)
    try:
        if ping is not None:
            await asyncio.wait_for(ping(), READY_TIMEOUT)
    except Exception as exc:  # any failure to answer means "not ready"
        message = str(exc) or type(exc).__name__
        return web.json_response(
            {"status": "unavailable", "message": f"the database is not reachable: {message}"},
            status=503,
            headers={"Retry-After": "1"},
        )
    return web.json_response({"status": "ok"})


def _http_metrics(metrics: Metrics) -> Any:
    histogram = metrics.http_request_seconds
    children: dict[tuple[str, int], Any] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # The route pattern, never the raw path: ids must not become label values.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else _UNMATCHED
            key = (route, status)
            child = children.get(key)
            if child is None:
                child = children[key] = histogram.labels(route=route, code=str(status))
            child.observe(time.perf_counter() - started)

    return middleware
