"""Fuzzing fixtures: the real sidecar served from its own event-loop thread.

Schemathesis and Hypothesis drive synchronous clients (``requests``), so the server cannot
share the test's event loop: :class:`ThreadedSidecar` runs ``sidecar.app.create_app`` with a
real :class:`PostgresStore` on a fresh database of the session's PostgreSQL server, behind a
real ``aiohttp`` TCP site on 127.0.0.1, in a background thread. The fixture is module
scoped (one server for all examples of a file) and stops the server, the store, the loop
and the thread at teardown, pass or fail, then drops the database.

:meth:`ThreadedSidecar.snapshot` fingerprints everything the store holds (checkpoints,
runs, human inputs) with plain SQL on a separate connection, so a test can prove that a
refused request left the store exactly as it was.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest
import requests
from aiohttp import web

from checkpoint.models import FlowCheckpoint
from checkpoint.stores.postgres import PostgresStore
from tests.fixtures.postgres import PgServer, run_async
from tests.fixtures.sidecar import SpanRecorder, otlp_body

T = TypeVar("T")

# Small enough that a gzip bomb past it costs the test milliseconds, large enough for any
# checkpoint the fuzzers build.
FUZZ_MAX_BODY_BYTES = 256 * 1024
CALL_TIMEOUT_S = 30.0

_SNAPSHOT_SQL = """
SELECT
  (SELECT count(*) FROM checkpoints) AS checkpoints,
  (SELECT count(*) FROM runs) AS runs,
  (SELECT count(*) FROM human_inputs) AS inputs,
  (SELECT coalesce(md5(string_agg(run_id || '#' || seq || ':' || sha256 || ':' || status,
                                  ',' ORDER BY run_id, seq)), '')
     FROM checkpoints) AS checkpoints_digest,
  (SELECT coalesce(md5(string_agg(run_id || ':' || tenant_id || ':' || status || ':'
                                  || latest_seq || ':' || epoch || ':'
                                  || coalesce(claimed_by, '-'),
                                  ',' ORDER BY run_id)), '')
     FROM runs) AS runs_digest
"""


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store holds: row counts and digests of every checkpoint and run row."""

    checkpoints: int
    runs: int
    inputs: int
    checkpoints_digest: str
    runs_digest: str


class ThreadedSidecar:
    """The real sidecar app on a real PostgresStore, served from a background loop thread."""

    def __init__(self, dsn: str, **settings: Any) -> None:
        self.dsn = dsn
        self.settings = settings
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-sidecar", daemon=True
        )
        self._runner: web.AppRunner | None = None
        self.store: PostgresStore | None = None
        self.app: web.Application | None = None
        self._probe: asyncpg.Connection | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ThreadedSidecar:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        from sidecar.app import create_app
        from sidecar.config import Settings

        self.store = PostgresStore(self.dsn)
        await self.store.open()
        self.app = create_app(Settings(port=0, **self.settings), self.store)
        # A short shutdown: connections aiohttp keeps lingering must not hold up teardown.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._probe = await asyncpg.connect(self.dsn)

    async def _stop(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            try:
                if self._probe is not None:
                    await self._probe.close()
            finally:
                if self.store is not None:
                    await self.store.close()
        # Handlers of connections the runner gave up on: end them before the loop closes.
        current = asyncio.current_task()
        stragglers = [t for t in asyncio.all_tasks() if t is not current]
        for task in stragglers:
            task.cancel()
        await asyncio.gather(*stragglers, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self._stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()

    # -- helpers for tests ---------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(CALL_TIMEOUT_S)

    def snapshot(self) -> StoreSnapshot:
        """A fingerprint of everything the store holds."""

        async def read() -> StoreSnapshot:
            assert self._probe is not None
            row = await self._probe.fetchrow(_SNAPSHOT_SQL)
            assert row is not None
            return StoreSnapshot(**dict(row))

        return self.call(read())


def post_checkpoints(
    url: str, checkpoints: Sequence[FlowCheckpoint], session: requests.Session | None = None
) -> requests.Response:
    """Store ``checkpoints`` through the real OTLP path (one protobuf export)."""
    recorder = SpanRecorder()
    try:
        body = otlp_body([recorder.checkpoint_span(cp) for cp in checkpoints])
    finally:
        recorder.shutdown()
    http = session or requests
    return http.post(
        url + "/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=CALL_TIMEOUT_S,
    )


def _serve(pg_server: PgServer, **settings: Any) -> Iterator[ThreadedSidecar]:
    if pg_server.embedded is not None and not pg_server.embedded.running:
        pg_server.start()  # a chaos test may have left it stopped
    name = f"fpfuzz_{uuid.uuid4().hex[:16]}"
    dsn = run_async(lambda: pg_server.create_database(name))
    try:
        sidecar = ThreadedSidecar(dsn, **settings).start()
        try:
            yield sidecar
        finally:
            sidecar.stop()
    finally:
        run_async(lambda: pg_server.drop_database(name))


@pytest.fixture(scope="module")
def fuzz_sidecar(pg_server: PgServer) -> Iterator[ThreadedSidecar]:
    """The real sidecar (small body limit) on its own fresh database, for one test module."""
    yield from _serve(pg_server, max_body_bytes=FUZZ_MAX_BODY_BYTES)
