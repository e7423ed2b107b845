"""Chaos test helpers: an own database per test, and the session server always left running.

The session's PostgreSQL (``pg_server``) is shared by the whole suite. Every test here
that stops it restarts it in a ``finally`` block; the ``chaos_db`` fixture checks again
at teardown, so a failing test never leaves the server down for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.fixtures.postgres import PgServer, database_name, run_async
from tests.fixtures.sidecar import REPO_ROOT


def ensure_running(pg_server: PgServer) -> None:
    """Start the session server again if a test stopped it."""
    embedded = pg_server.embedded
    if embedded is not None and not embedded.running:
        pg_server.start()


@pytest.fixture
def chaos_db(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh migrated database on the session server (which this test may stop)."""
    if not pg_server.is_embedded:
        pytest.skip("chaos tests stop PostgreSQL: they need the embedded session server")
    ensure_running(pg_server)
    name = f"fpchaos_{uuid.uuid4().hex[:12]}"
    dsn = run_async(lambda: pg_server.create_database(name))
    try:
        yield dsn
    finally:
        ensure_running(pg_server)
        run_async(lambda: pg_server.drop_database(database_name(dsn)))


async def stored_counts(dsn: str) -> dict[tuple[str, int], int]:
    """How many rows each ``(run_id, seq)`` has in PostgreSQL."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT run_id, seq, count(*) AS n FROM checkpoints GROUP BY 1, 2")
    finally:
        await conn.close()
    return {(r["run_id"], r["seq"]): int(r["n"]) for r in rows}


async def readyz(url: str) -> dict[str, Any]:
    """The sidecar's ``/readyz`` document (whatever its status code)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(url + "/readyz") as resp,
    ):
        doc: dict[str, Any] = await resp.json()
        doc["http_status"] = resp.status
        return doc


async def wait_drained(url: str, limit: float = 45.0) -> dict[str, Any]:
    """Poll ``/readyz`` until the breaker is closed and the spool is empty."""
    deadline = time.monotonic() + limit
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            doc = await readyz(url)
            if (
                doc.get("status") == "ok"
                and doc["breaker"]["state"] == "closed"
                and doc["spool"]["records"] == 0
                and not doc["spool"]["replaying"]
            ):
                return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"the spool did not drain within {limit}s: {doc}")


@dataclass
class WorkerProcess:
    """An ``emit_worker`` subprocess and the lines it printed so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def acked(self) -> set[tuple[str, int]]:
        return self._keys("ACK")

    def unacked(self) -> set[tuple[str, int]]:
        return self._keys("UNACKED")

    def _keys(self, word: str) -> set[tuple[str, int]]:
        out = set()
        for line in self.lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == word:
                out.add((parts[1], int(parts[2])))
        return out

    def value(self, word: str) -> int:
        for line in self.lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == word:
                return int(parts[1])
        raise AssertionError(f"the worker printed no {word}: {self.lines[-20:]}")

    async def wait(self, limit: float = 60.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), limit)
        if self.reader is not None:
            await self.reader
        return code


async def start_worker(*args: str, log: Path) -> WorkerProcess:
    """Start ``python -m tests.chaos.emit_worker <args>``; stderr goes to ``log``."""
    err = await asyncio.to_thread(open, log, "ab")
    with err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.chaos.emit_worker",
            *args,
            cwd=str(REPO_ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            stdin=asyncio.subprocess.DEVNULL,
        )
    worker = WorkerProcess(proc)

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            worker.lines.append(line.decode().strip())

    worker.reader = asyncio.create_task(read())
    return worker


@pytest.fixture
async def workers() -> AsyncIterator[list[WorkerProcess]]:
    """Worker subprocesses a test starts (append them); killed at teardown if still alive."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()
            if worker.reader is not None:
                worker.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reader
