"""Breaker + spool + drainer in the real sidecar app, on real PostgreSQL.

Faults are injected on the network, not by mocking: the sidecar's PostgresStore talks to
the test database through a TCP proxy on 127.0.0.1 that can refuse connections ("down")
or swallow every byte ("hang", a database that stopped answering). The shared session
server itself is never stopped here (tests/chaos/ does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from checkpoint.errors import ConfigError, StoreUnavailableError
from checkpoint.models import FlowCheckpoint, checkpoint_to_bytes
from checkpoint.stores.postgres import PostgresStore
from sidecar.app import DURABILITY_KEY, create_app
from sidecar.config import Settings
from sidecar.durability import Durability
from sidecar.keys import METRICS_KEY, STORE_KEY
from sidecar.metrics import Metrics
from sidecar.spool import encode_frame
from tests.fixtures.sidecar import (
    SpanRecorder,
    make_checkpoint,
    metric,
    otlp_body,
    parse_metrics,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}
Mode = Literal["up", "down", "hang"]


class FaultyProxy:
    """A TCP proxy to PostgreSQL that can refuse ("down") or black-hole ("hang") traffic."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode: Mode = "up"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set(self, mode: Mode) -> None:
        """Switch mode; every open connection is cut (as a crashed server would)."""
        self.mode = mode
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.set("down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode == "hang":
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass  # swallowed: the "database" never answers
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.transport.abort()


def via_proxy(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@dataclass
class Durable:
    """A durable in-process sidecar whose database sits behind a FaultyProxy."""

    url: str
    proxy: FaultyProxy
    store: PostgresStore
    server: TestServer
    spool_dir: Path
    dsn: str

    @property
    def durability(self) -> Durability:
        return self.server.app[DURABILITY_KEY]

    @property
    def metrics(self) -> Metrics:
        return self.server.app[METRICS_KEY]


FAST = {
    "breaker_failure_threshold": 2,
    "breaker_cooldown_seconds": 0.2,
    "commit_timeout_seconds": 0.5,
}


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[FaultyProxy]:
    parts = urlsplit(pg_dsn)
    proxy = FaultyProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def launch(
    pg_dsn: str, proxy: FaultyProxy, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Durable]]]:
    """``await launch(**settings)``: a durable sidecar app; stopped at teardown."""
    started: list[Durable] = []

    async def start(spool_dir: Path | None = None, **settings: Any) -> Durable:
        spool = spool_dir or tmp_path / "spool"
        store = PostgresStore(via_proxy(pg_dsn, proxy.port), command_timeout=5)
        app = create_app(Settings(port=0, spool_dir=spool, **{**FAST, **settings}), store)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        durable = Durable(str(server.make_url("")).rstrip("/"), proxy, store, server, spool, pg_dsn)
        started.append(durable)
        return durable

    try:
        yield start
    finally:
        for durable in reversed(started):
            proxy.set("up")
            with contextlib.suppress(Exception):
                await durable.server.close()
            await durable.store.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def spans() -> SpanRecorder:
    return SpanRecorder()


async def send(
    client: aiohttp.ClientSession,
    sc: Durable,
    spans: SpanRecorder,
    *cps: FlowCheckpoint,
    epoch: int = 0,
) -> tuple[int, dict[str, str], bytes]:
    body = otlp_body([spans.checkpoint_span(cp, epoch=epoch) for cp in cps])
    async with client.post(sc.url + "/v1/traces", data=body, headers=PROTOBUF) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def rows(dsn: str) -> dict[tuple[str, int], int]:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch("SELECT run_id, seq, count(*) AS n FROM checkpoints GROUP BY 1, 2")
    finally:
        await conn.close()
    return {(r["run_id"], r["seq"]): r["n"] for r in found}


async def readyz(client: aiohttp.ClientSession, sc: Durable) -> tuple[int, dict[str, Any]]:
    async with client.get(sc.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def samples(client: aiohttp.ClientSession, sc: Durable) -> dict[Any, float]:
    async with client.get(sc.url + "/metrics") as resp:
        return parse_metrics(await resp.text())


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(0.05)


async def test_healthy_database_stores_directly_and_readyz_says_so(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    sc = await launch()
    status, headers, _ = await send(client, sc, spans, make_checkpoint("run-ok", 0))
    assert status == 200 and headers["Flowpoint-Outcome"] == "stored"
    assert await rows(sc.dsn) == {("run-ok", 0): 1}
    code, doc = await readyz(client, sc)
    assert code == 200 and doc["status"] == "ok"
    assert doc["breaker"]["state"] == "closed" and doc["database"]["reachable"] is True
    assert doc["spool"]["records"] == 0
    m = await samples(client, sc)
    assert metric(m, "flowpoint_breaker_state") == 0
    assert metric(m, "flowpoint_checkpoints_total", outcome="stored") == 1
    assert metric(m, "flowpoint_checkpoints_total", outcome="spooled") == 0


async def test_outage_spools_serves_reads_from_the_spool_and_drains_in_order(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    # A cooldown long enough that the breaker stays open while the checks below run.
    sc = await launch(breaker_cooldown_seconds=3)
    assert (await send(client, sc, spans, make_checkpoint("run-a", 0)))[0] == 200
    sc.proxy.set("down")

    acked = []
    for seq in range(1, 6):
        cp = make_checkpoint("run-a", seq, pending=["review"] if seq == 5 else ())
        status, headers, _ = await send(client, sc, spans, cp, make_checkpoint("run-b", seq))
        assert status == 200, status
        assert headers["Flowpoint-Outcome"] == "spooled"
        acked += [("run-a", seq), ("run-b", seq)]

    async def breaker_open() -> bool:
        # One failed write, then the drainer's failed replay: two failures open it. Later
        # saves of a run with spooled checkpoints go straight to the spool, so the second
        # failure comes from the drainer, on its own schedule.
        return sc.durability.breaker.state.label == "open"

    await eventually(breaker_open)
    assert sc.durability.spool.records == 10

    m = await samples(client, sc)
    assert metric(m, "flowpoint_checkpoints_total", outcome="spooled") == 10
    assert metric(m, "flowpoint_breaker_state") == 2
    assert metric(m, "flowpoint_spool_records") == 10
    assert metric(m, "flowpoint_spool_bytes") > 0
    code, doc = await readyz(client, sc)
    assert code == 200 and doc["status"] == "degraded"
    assert doc["breaker"]["state"] == "open" and doc["spool"]["records"] == 10

    # A resume sees the newest checkpoint although PostgreSQL does not have it.
    async with client.get(sc.url + "/v1/runs/run-a/checkpoints/latest") as resp:
        assert resp.status == 200, await resp.text()
        latest = await resp.json()
    assert latest["seq"] == 5 and latest["checkpoint"]["pending_inputs"][0]["path"] == "review"
    async with client.get(sc.url + "/v1/runs/run-b/checkpoints/3") as resp:
        assert resp.status == 200 and (await resp.json())["seq"] == 3
    async with client.get(sc.url + "/v1/runs/run-b") as resp:
        summary = await resp.json()
    assert resp.status == 200 and summary["latest_seq"] == 5 and summary["flow_id"] == "flow-s"
    # A run the spool does not hold is uncertain: 503, never a guess.
    async with client.get(sc.url + "/v1/runs/run-zzz/checkpoints/latest") as resp:
        assert resp.status == 503 and resp.headers["Retry-After"]
    # Claims and inputs need PostgreSQL.
    async with client.post(
        sc.url + "/v1/runs/run-a/claim", json={"worker_id": "w1", "lease_seconds": 30}
    ) as resp:
        assert resp.status == 503 and (await resp.json())["error"] == "store_unavailable"
    async with client.post(
        sc.url + "/v1/runs/run-a/inputs", json={"path": "review", "answer": {"ok": True}}
    ) as resp:
        assert resp.status == 503

    sc.proxy.set("up")

    async def drained() -> bool:
        d = sc.durability
        return await _empty(d) and d.breaker.state.label == "closed"

    await eventually(drained)
    stored = await rows(sc.dsn)
    assert set(acked) | {("run-a", 0)} == set(stored)
    assert all(n == 1 for n in stored.values())
    assert list(sc.spool_dir.glob("segment-*")) == []
    m = await samples(client, sc)
    assert metric(m, "flowpoint_spool_replayed_total", result="stored") == 10
    assert metric(m, "flowpoint_breaker_state") == 0
    assert metric(m, "flowpoint_spool_records") == 0
    assert metric(m, "flowpoint_spool_oldest_age_seconds") == 0
    code, doc = await readyz(client, sc)
    assert code == 200 and doc["status"] == "ok"
    # The run row in PostgreSQL is the newest one, and claims work again.
    async with client.post(
        sc.url + "/v1/runs/run-a/claim", json={"worker_id": "w1", "lease_seconds": 30}
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["checkpoint"]["seq"] == 5


async def test_a_hung_database_times_out_and_opens_the_breaker(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    sc = await launch(commit_timeout_seconds=0.3, breaker_cooldown_seconds=30)
    assert (await send(client, sc, spans, make_checkpoint("run-h", 0)))[0] == 200
    sc.proxy.set("hang")
    for seq in (1, 2, 3):
        status, headers, _ = await send(client, sc, spans, make_checkpoint("run-h", seq))
        assert status == 200 and headers["Flowpoint-Outcome"] == "spooled"
    doc = (await readyz(client, sc))[1]
    assert doc["breaker"]["state"] == "open"
    assert "0.3s" in doc["breaker"]["last_error"]
    assert sc.durability.breaker.opens == 1


async def test_runs_with_spooled_records_keep_their_order(
    launch: Callable[..., Awaitable[Durable]], spans: SpanRecorder
) -> None:
    sc = await launch(breaker_cooldown_seconds=60)
    d = sc.durability
    store = sc.server.app[STORE_KEY]
    sc.proxy.set("down")
    one = d.spool.records
    first = make_checkpoint("run-o", 0)
    rec0 = store.seal_raw(first, checkpoint_to_bytes(first))
    assert await d.write([(rec0, 0)]) == ["spooled"]
    assert d.spool.records == one + 1
    # A record already in the spool is a duplicate; another checksum is a conflict.
    assert await d.write([(rec0, 0)]) == ["duplicate"]
    other = make_checkpoint("run-o", 0, note="different")
    [conflict] = await d.write([(store.seal_raw(other, checkpoint_to_bytes(other)), 0)])
    assert type(conflict).__name__ == "SeqConflictError"
    sc.proxy.set("up")
    d.breaker.record_success()  # as a successful probe would
    nxt = make_checkpoint("run-o", 1)
    new_run = make_checkpoint("run-p", 0)
    results = await d.write(
        [
            (store.seal_raw(nxt, checkpoint_to_bytes(nxt)), 0),
            (store.seal_raw(new_run, checkpoint_to_bytes(new_run)), 0),
        ]
    )
    # run-o waits behind its spooled seq 0; run-p goes straight to PostgreSQL.
    assert results == ["spooled", "stored"]
    await eventually(lambda: _empty(d))
    assert await rows(sc.dsn) == {("run-o", 0): 1, ("run-o", 1): 1, ("run-p", 0): 1}


async def _empty(d: Durability) -> bool:
    return d.spool.records == 0 and not d.replaying


async def test_a_record_refused_on_replay_goes_to_the_dead_letter_file(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    sc = await launch()
    assert (await send(client, sc, spans, make_checkpoint("run-d", 0, note="first")))[0] == 200
    sc.proxy.set("down")
    # Another writer's seq 0 (another checksum) and a good seq 1, acknowledged from the spool.
    status, _, _ = await send(client, sc, spans, make_checkpoint("run-d", 0, note="second"))
    assert status == 200
    assert (await send(client, sc, spans, make_checkpoint("run-d", 1)))[0] == 200
    sc.proxy.set("up")
    await eventually(lambda: _empty(sc.durability))
    assert await rows(sc.dsn) == {("run-d", 0): 1, ("run-d", 1): 1}
    dead_dir = sc.spool_dir / "dead-letter"
    [line] = (dead_dir / "dead-letter.jsonl").read_text().splitlines()
    doc = json.loads(line)
    assert (doc["run_id"], doc["seq"], doc["reason"]) == ("run-d", 0, "conflict")
    assert (dead_dir / "dead-letter.spool").stat().st_size > 0
    m = await samples(client, sc)
    assert metric(m, "flowpoint_spool_replayed_total", result="dead_letter") == 1
    assert metric(m, "flowpoint_spool_replayed_total", result="stored") == 1
    assert (await readyz(client, sc))[1]["spool"]["dead_letters"] == 1


async def test_a_checkpoint_postgresql_cannot_hold_is_refused_alone_and_never_jams_the_spool(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    sc = await launch()
    # A NUL in an input path: valid JSON, a valid checkpoint, text PostgreSQL cannot hold.
    poison = make_checkpoint("run-q", 0, pending=["re\x00view"])
    status, _, body = await send(
        client, sc, spans, make_checkpoint("run-p", 0), poison, make_checkpoint("run-p", 1)
    )
    assert status == 400 and json.loads(body)["error"] == "rejected"
    assert "run-q#0" in json.loads(body)["message"]
    assert await rows(sc.dsn) == {("run-p", 0): 1, ("run-p", 1): 1}  # its batch is stored
    for _ in range(3):  # more than the breaker's threshold: a refusal is not an outage
        assert (await send(client, sc, spans, poison))[0] == 400
    code, doc = await readyz(client, sc)
    assert code == 200 and doc["breaker"]["state"] == "closed" and doc["spool"]["records"] == 0

    # Spooled during an outage (nobody can tell then), it is dead-lettered on replay and
    # the records behind it reach PostgreSQL.
    sc.proxy.set("down")
    status, headers, _ = await send(client, sc, spans, poison)
    assert status == 200 and headers["Flowpoint-Outcome"] == "spooled"
    assert (await send(client, sc, spans, make_checkpoint("run-p", 2)))[0] == 200
    sc.proxy.set("up")
    await eventually(lambda: _empty(sc.durability))
    assert await rows(sc.dsn) == {("run-p", 0): 1, ("run-p", 1): 1, ("run-p", 2): 1}
    [line] = (sc.spool_dir / "dead-letter" / "dead-letter.jsonl").read_text().splitlines()
    doc = json.loads(line)
    assert (doc["run_id"], doc["seq"], doc["reason"]) == ("run-q", 0, "rejected")
    m = await samples(client, sc)
    assert metric(m, "flowpoint_spool_replayed_total", result="dead_letter") == 1
    assert metric(m, "flowpoint_checkpoint_rejected_total", reason="refused_by_store") == 4
    assert metric(m, "flowpoint_breaker_state") == 0


async def test_a_full_spool_answers_503_and_readyz_unavailable(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    sc = await launch(spool_max_bytes=64 * 1024, breaker_cooldown_seconds=60)
    sc.proxy.set("down")
    statuses = []
    for seq in range(40):
        status, headers, body = await send(
            client, sc, spans, make_checkpoint("run-f", seq, payload_bytes=20_000, note=str(seq))
        )
        statuses.append(status)
        if status == 503:
            assert headers["Retry-After"]
            assert b"spool is full" in body
            break
    assert statuses[0] == 200 and statuses[-1] == 503
    assert sc.durability.spool.disk_bytes <= 64 * 1024
    code, doc = await readyz(client, sc)
    assert code == 503 and doc["status"] == "unavailable" and "full" in doc["message"]


async def test_restart_replays_the_predecessors_spool_before_serving(
    launch: Callable[..., Awaitable[Durable]],
    client: aiohttp.ClientSession,
    spans: SpanRecorder,
    tmp_path: Path,
) -> None:
    first = await launch(breaker_cooldown_seconds=60)
    first.proxy.set("down")
    for seq in range(4):
        assert (await send(client, first, spans, make_checkpoint("run-r", seq)))[0] == 200
    await first.server.close()  # the spool stays behind with 4 records
    await first.store.close()
    segment = sorted(first.spool_dir.glob("segment-*"))[-1]
    # A crash mid-append left half a record at the end.
    partial = encode_frame(
        first.durability.view.seal_raw(
            make_checkpoint("run-r", 9), checkpoint_to_bytes(make_checkpoint("run-r", 9))
        ),
        0,
        0.0,
    )
    await asyncio.to_thread(_append, segment, partial[:40])

    first.proxy.set("up")
    second = await launch(spool_dir=first.spool_dir)
    # Already replayed when the server started: nothing left, no request needed.
    assert second.durability.spool.records == 0
    assert await rows(second.dsn) == {("run-r", s): 1 for s in range(4)}
    code, doc = await readyz(client, second)
    assert code == 200 and doc["spool"]["torn_tails"] == 1
    m = await samples(client, second)
    assert metric(m, "flowpoint_spool_corrupt_records_total", kind="torn_tail") == 1
    assert list((first.spool_dir / "quarantine").iterdir())


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


async def test_restart_while_the_database_is_down_serves_reads_from_the_spool(
    launch: Callable[..., Awaitable[Durable]], client: aiohttp.ClientSession, spans: SpanRecorder
) -> None:
    first = await launch(breaker_cooldown_seconds=60)
    first.proxy.set("down")
    for seq in range(3):
        assert (await send(client, first, spans, make_checkpoint("run-k", seq)))[0] == 200
    await first.server.close()
    await first.store.close()

    second = await launch(spool_dir=first.spool_dir, breaker_cooldown_seconds=0.2)
    assert second.durability.spool.records == 3
    async with client.get(second.url + "/v1/runs/run-k/checkpoints/latest") as resp:
        assert resp.status == 200 and (await resp.json())["seq"] == 2
    code, doc = await readyz(client, second)
    assert code == 200 and doc["status"] == "degraded"
    second.proxy.set("up")
    await eventually(lambda: _empty(second.durability))
    assert await rows(second.dsn) == {("run-k", s): 1 for s in range(3)}


async def test_a_stale_read_is_refused_when_postgresql_holds_a_newer_seq(
    launch: Callable[..., Awaitable[Durable]], spans: SpanRecorder
) -> None:
    sc = await launch(breaker_cooldown_seconds=60)
    d = sc.durability
    view = sc.server.app[STORE_KEY]
    cps = [make_checkpoint("run-s", s) for s in range(3)]
    recs = [view.seal_raw(cp, checkpoint_to_bytes(cp)) for cp in cps]
    sc.proxy.set("down")
    assert await d.write([(recs[1], 0)]) == ["spooled"]
    d._note_db(recs[2])  # seq 2 reached PostgreSQL (e.g. a concurrent batch) before the outage
    with pytest.raises(StoreUnavailableError, match="stale"):
        await view.get_sealed("run-s", None)
    record = await view.get_sealed("run-s", 1)  # by seq is certain
    assert record is not None and record.seq == 1


async def test_which_apps_get_the_spool(pg_dsn: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_dsn)
    try:
        assert DURABILITY_KEY not in create_app(Settings(port=0), store)  # in-process default
        off = Settings(port=0, spool_dir=tmp_path / "s", spool=False)
        assert DURABILITY_KEY not in create_app(off, store)
        on = create_app(Settings(port=0, data_dir=tmp_path / "data"), store, durable=True)
        assert on[DURABILITY_KEY].spool.directory == tmp_path / "data" / "spool"
        assert on[DURABILITY_KEY].spool.database == urlsplit(pg_dsn).path.lstrip("/")
        assert on[STORE_KEY] is on[DURABILITY_KEY].view
    finally:
        await store.close()


async def test_a_second_sidecar_on_the_same_spool_is_refused(
    launch: Callable[..., Awaitable[Durable]],
) -> None:
    first = await launch()
    with pytest.raises(ConfigError, match="in use by another sidecar"):
        await launch(spool_dir=first.spool_dir)
