"""Running the sidecar as a service (what ``flowpoint serve`` calls).

Start-up: open the store (migrating it) on ``database_url``, or, with no URL, start an
embedded PostgreSQL in ``<data_dir>/postgres`` and use its ``flowpoint`` database; then
serve the application on ``host:port`` (127.0.0.1 by default). A database that does not
answer yet does not stop the start: ``/readyz`` reports it and checkpoints are answered
503 + Retry-After until it does.

Shutdown on SIGINT or SIGTERM is graceful: the listening socket closes first, requests in
flight are allowed to finish (their checkpoints are committed: the writer flushes every
queued batch before it stops), then the store closes and the embedded server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from checkpoint.errors import StoreUnavailableError
from checkpoint.store import BaseStore
from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.logs import configure_logging, log_event

__all__ = ["GC_THRESHOLD", "Service", "open_store", "run", "serve", "tune_gc"]

log = logging.getLogger("flowpoint.sidecar")

EMBEDDED_DATABASE = "flowpoint"

# Parsing a large checkpoint allocates tens of thousands of containers, none of them in a
# cycle: at CPython's default (700) the collector runs dozens of times per megabyte and
# moves the half-built document through every generation (a sixth of the sidecar's CPU at
# 1 MB). At this threshold a request's garbage is freed by reference counting first.
GC_THRESHOLD = 100_000


@dataclass
class Service:
    """A running sidecar: its runner, the bound port and the store."""

    runner: web.AppRunner
    port: int
    store: BaseStore


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[BaseStore]:
    """The PostgreSQL store the settings name (embedded when no URL), open and migrated."""
    from checkpoint.stores.postgres import PostgresStore

    embedded = None
    dsn = settings.database_url
    if dsn is None:
        from checkpoint.stores.postgres.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir / "postgres", fsync=True)
        await embedded.astart()
        log_event(
            log,
            logging.INFO,
            "embedded PostgreSQL started",
            data_dir=str(embedded.data_dir),
            port=embedded.port,
        )
    try:
        if embedded is not None:
            dsn = await embedded.ensure_database(EMBEDDED_DATABASE)
        store = PostgresStore(dsn, max_size=settings.pool_size)
        try:
            try:
                await store.open()
            except StoreUnavailableError as exc:
                # Serve anyway: /readyz says "not ready" and checkpoints get 503 (retried by
                # the workers) until the database answers; the store connects on first use.
                log_event(
                    log,
                    logging.ERROR,
                    "database unreachable at start-up: serving, not ready until it answers",
                    error=str(exc),
                )
            yield store
        finally:
            await store.close()
    finally:
        if embedded is not None:
            await embedded.astop("fast")
            log_event(log, logging.INFO, "embedded PostgreSQL stopped")


async def start(settings: Settings, store: BaseStore) -> Service:
    """Serve the application for ``store`` on the configured address."""
    # The service always runs the breaker and the spool, unless told not to (--no-spool).
    app = create_app(settings, store, durable=settings.spool)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    addresses = runner.addresses
    port = int(addresses[0][1]) if addresses else settings.port
    return Service(runner=runner, port=port, store=store)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set, or SIGINT / SIGTERM arrives; then shut down gracefully."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with open_store(settings) as store:
            service = await start(settings, store)
            log_event(
                log,
                logging.INFO,
                "sidecar listening",
                host=settings.host,
                port=service.port,
                url=f"http://{settings.host}:{service.port}",
                forward_otlp=settings.forward_otlp,
            )
            try:
                await stop.wait()
                log_event(log, logging.INFO, "shutting down: finishing requests in flight")
            finally:
                await service.runner.cleanup()
                log_event(log, logging.INFO, "sidecar stopped")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def tune_gc() -> None:
    """Set the sidecar process's garbage collector for its load (see GC_THRESHOLD).

    What is alive now (modules, schemas, the app's code) lives as long as the process:
    frozen, full collections stop walking it.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, middle, old)
    gc.freeze()


def run(settings: Settings) -> None:
    """Blocking entry point: configure logs, tune the collector, use uvloop, serve."""
    configure_logging(settings.log_level, settings.log_format)
    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
        return
    uvloop.run(serve(settings))
