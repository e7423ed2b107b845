"""Nothing acknowledged is lost: the breaker, the spool and the drainer, wired together.

:class:`Durability` is the sidecar's :class:`~sidecar.writer.Sink` when the spool is on:

* a batch goes to PostgreSQL through the :class:`~sidecar.breaker.CircuitBreaker` (with a
  commit timeout, so a hung database counts as a failure). When the breaker refuses, or
  the write fails or times out, the batch is appended to the :class:`~sidecar.spool.Spool`
  and fsynced instead, and answered ``"spooled"`` (200 for the client);
* a run that has records in the spool keeps going to the spool until they are replayed,
  so a run's checkpoints reach PostgreSQL in the order they were acknowledged;
* the drainer task replays the spool in order once the breaker lets it (its first replay
  is the half-open probe); a record PostgreSQL refuses on replay (a seq conflict, a stale
  epoch, another tenant) is moved to the dead-letter file and counted, never dropped
  silently; segments are deleted only after their records are committed;
* on start it replays what a killed predecessor left in the spool before the sidecar
  serves, and until the spool is empty :class:`SpoolAwareStore` answers reads from it.

:class:`SpoolAwareStore` is the store the resume API sees: reads check the spool first
(latest, by seq, the run summary), so a resume gets the newest checkpoint even before it
reached PostgreSQL; where the newest state is uncertain it answers 503, never a stale
checkpoint; claims, inputs, deletion and pruning need PostgreSQL and answer 503 while the
breaker is open (and, for the run concerned, while it has records in the spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import Counter

from checkpoint.errors import (
    CorruptCheckpointError,
    FlowpointError,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
    TenantMismatchError,
)
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus
from checkpoint.store import (
    BaseStore,
    CheckpointSummary,
    ClaimInfo,
    InputRecord,
    PutOutcome,
    RunInfo,
    RunPage,
    SealedCheckpoint,
)
from sidecar.breaker import BreakerOpenError, BreakerState, CircuitBreaker
from sidecar.config import Settings
from sidecar.logs import log_event
from sidecar.metrics import Metrics
from sidecar.spool import DeadLetter, Spool, SpoolEntry, SpoolFullError, decode_frame, sealed_of
from sidecar.writer import StoreSink, WriteResult

__all__ = ["Durability", "SpoolAwareStore", "database_of"]

log = logging.getLogger("flowpoint.sidecar.durability")

T = TypeVar("T")

READY_TIMEOUT: Final = 2.0
DRAIN_BATCH: Final = 128
DRAIN_BYTES: Final = 8 * 1024 * 1024
IDLE_PROBE_SECONDS: Final = 1.0
_FULL_MEMORY_SECONDS: Final = 5.0
_DB_LATEST_CAPACITY: Final = 65_536
MiB: Final = 1024 * 1024


def database_of(store: BaseStore) -> str | None:
    """The database name a store writes to (what the spool's META records), if known."""
    dsn = getattr(store, "dsn", None)
    if not isinstance(dsn, str) or not dsn:
        return None
    name = urlsplit(dsn).path.lstrip("/")
    return name or None


def _segment_bytes(max_bytes: int) -> int:
    # Several segments fit in the cap, so drained space comes back while the spool is busy.
    return int(min(64 * MiB, max(64 * 1024, max_bytes // 8)))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Durability:
    """The durable write path (a :class:`~sidecar.writer.Sink`) and its drainer.

    Build with :meth:`from_settings` (or the constructor), :meth:`start` it inside the
    loop before serving, :meth:`close` it after the writer has flushed.
    """

    def __init__(
        self,
        store: BaseStore,
        spool: Spool,
        breaker: CircuitBreaker,
        metrics: Metrics,
        *,
        commit_timeout: float = 2.0,
        drain_batch: int = DRAIN_BATCH,
        drain_bytes: int = DRAIN_BYTES,
    ) -> None:
        self.store = store
        self.spool = spool
        self.breaker = breaker
        self.metrics = metrics
        self.commit_timeout = float(commit_timeout)
        self.read_timeout = max(10.0, 5 * self.commit_timeout)
        self.drain_batch = drain_batch
        self.drain_bytes = drain_bytes
        self._sink = StoreSink(store)
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._db_latest: OrderedDict[str, int] = OrderedDict()
        self._full_at = 0.0
        self._started = False
        #: True while a batch is being replayed (its metrics are not counted yet).
        self.replaying = False
        self.view = SpoolAwareStore(store, self)
        r = metrics.registry
        self.replayed_total = Counter(
            "flowpoint_spool_replayed_total",
            "Spooled checkpoints replayed into PostgreSQL, by result "
            "(stored, duplicate, dead_letter, quarantined)",
            ["result"],
            registry=r,
        )
        self.corrupt_total = Counter(
            "flowpoint_spool_corrupt_records_total",
            "Damaged spool records found (torn tails truncated, damaged records quarantined)",
            ["kind"],
            registry=r,
        )
        for result in ("stored", "duplicate", "dead_letter", "quarantined"):
            self.replayed_total.labels(result=result)
        for kind in ("torn_tail", "corrupt"):
            self.corrupt_total.labels(kind=kind)
        metrics.breaker_state.set_function(lambda: float(self.breaker.state))
        metrics.spool_bytes.set_function(lambda: float(self.spool.pending_bytes))
        metrics.spool_records.set_function(lambda: float(self.spool.records))
        metrics.spool_oldest_age_seconds.set_function(self.spool.oldest_age)

    @classmethod
    def from_settings(cls, settings: Settings, store: BaseStore, metrics: Metrics) -> Durability:
        """The durability layer the settings describe (spool in ``effective_spool_dir``)."""
        spool = Spool(
            settings.effective_spool_dir,
            max_bytes=settings.spool_max_bytes,
            segment_bytes=_segment_bytes(settings.spool_max_bytes),
            database=database_of(store),
        )
        breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            cooldown=settings.breaker_cooldown_seconds,
            call_timeout=settings.commit_timeout_seconds,
            name="PostgreSQL",
        )
        return cls(store, spool, breaker, metrics, commit_timeout=settings.commit_timeout_seconds)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (repairing it), replay what a predecessor left, start the drainer."""
        report = await self.spool.aopen()
        self.corrupt_total.labels(kind="torn_tail").inc(report.torn_tails)
        self.corrupt_total.labels(kind="corrupt").inc(report.corrupt_records)
        log_event(
            log,
            logging.WARNING if report.records or report.problems else logging.INFO,
            "spool opened",
            directory=str(self.spool.directory),
            records=report.records,
            segments=report.segments,
            torn_tails=report.torn_tails,
            corrupt_records=report.corrupt_records,
            quarantined_bytes=report.quarantined_bytes,
        )
        if self.spool.records:
            await self._replay_at_start()
        self._started = True
        self._drainer = asyncio.create_task(self._drain_loop(), name="flowpoint-spool-drainer")

    async def _replay_at_start(self) -> None:
        before = self.spool.records
        while self.spool.records:
            try:
                await self.drain_once()
            except (StoreError, OSError) as exc:
                log_event(
                    log,
                    logging.WARNING,
                    "cannot replay the spool yet: serving, reads check the spool first",
                    records=self.spool.records,
                    error=_describe(exc),
                )
                return
        log_event(log, logging.INFO, "spool left by a previous run replayed", records=before)

    async def close(self) -> None:
        """Stop the drainer and close the spool (records left stay for the next start)."""
        task, self._drainer = self._drainer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.spool.close()
        self._started = False

    # -- the sink --------------------------------------------------------------------------

    async def write(self, batch: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]:
        """Make ``batch`` durable in PostgreSQL, or else in the spool (``"spooled"``)."""
        results: list[WriteResult | None] = [None] * len(batch)
        to_spool = [i for i, (r, _) in enumerate(batch) if self.spool.has_run(r.run_id)]
        queued = set(to_spool)
        direct = [i for i in range(len(batch)) if i not in queued]
        if direct:
            items = [batch[i] for i in direct]
            try:
                out = await self.breaker.call(
                    lambda: self._sink.write(items), within=self.commit_timeout
                )
            except (StoreError, OSError) as exc:
                if not isinstance(exc, BreakerOpenError):
                    log_event(
                        log,
                        logging.WARNING,
                        "database write failed: spooling the batch",
                        records=len(items),
                        error=_describe(exc),
                    )
                to_spool = sorted(to_spool + direct)
            else:
                failed = [i for i, r in zip(direct, out, strict=True) if isinstance(r, StoreError)]
                for i, r in zip(direct, out, strict=True):
                    if not isinstance(r, StoreError):
                        results[i] = r
                        if r in ("stored", "duplicate"):
                            self._note_db(batch[i][0])
                to_spool = sorted(to_spool + failed)
        if to_spool:
            spooled = await self._spool([batch[i] for i in to_spool])
            for i, r in zip(to_spool, spooled, strict=True):
                results[i] = r
        return [r if r is not None else StoreError("no outcome") for r in results]

    async def _spool(self, items: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(items)
        fresh: list[int] = []
        seen: dict[tuple[str, int], str] = {}
        for pos, (record, _) in enumerate(items):
            key = (record.run_id, record.seq)
            entry = self.spool.get(*key)
            known = entry.sha256 if entry is not None else seen.get(key)
            if known is None:
                seen[key] = record.sha256
                fresh.append(pos)
            elif known == record.sha256:
                results[pos] = "duplicate"
            else:
                results[pos] = SeqConflictError(
                    f"checkpoint {record.run_id}#{record.seq} is already spooled with another "
                    f"checksum than {record.sha256}: two writers produce this run"
                )
        if fresh:
            try:
                await self.spool.append([items[p] for p in fresh])
            except SpoolFullError as exc:
                self._full_at = time.monotonic()
                log_event(
                    log,
                    logging.ERROR,
                    "spool full: answering 503 (the workers' outboxes keep the checkpoints)",
                    records=len(fresh),
                    disk_bytes=self.spool.disk_bytes,
                    max_bytes=self.spool.max_bytes,
                )
                for p in fresh:
                    results[p] = exc
            except StoreError as exc:
                log_event(log, logging.ERROR, "spool write failed", error=_describe(exc))
                for p in fresh:
                    results[p] = exc
            else:
                self._full_at = 0.0
                for p in fresh:
                    results[p] = "spooled"
                self._wake.set()
        return [r if r is not None else StoreError("no outcome") for r in results]

    # -- draining --------------------------------------------------------------------------

    async def drain_once(self) -> int:
        """Replay one batch from the head of the spool; the number of records it retired.

        Raises :class:`BreakerOpenError` when the breaker refuses, and the store's error
        when the batch could not be committed (nothing is retired then).
        """
        entries = self.spool.head(self.drain_batch, self.drain_bytes)
        if not entries:
            return 0
        self.replaying = True
        try:
            return await self._replay(entries)
        finally:
            self.replaying = False

    async def _replay(self, entries: list[SpoolEntry]) -> int:
        loaded: list[tuple[SpoolEntry, bytes, SealedCheckpoint]] = []
        quarantined: list[tuple[SpoolEntry, bytes]] = []
        frames = await self.spool.read_frames(entries)
        for entry, frame in zip(entries, frames, strict=True):
            try:
                if frame is None:
                    raise CorruptCheckpointError("its segment file is missing")
                _, blob = decode_frame(frame)
            except CorruptCheckpointError as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "damaged spool record quarantined, not replayed",
                    run_id=entry.run_id,
                    seq=entry.seq,
                    error=_describe(exc),
                )
                quarantined.append((entry, frame or b""))
                continue
            loaded.append((entry, frame, sealed_of(entry, blob)))
        results: list[WriteResult] = []
        if loaded:
            batch = [(record, entry.epoch) for entry, _, record in loaded]
            results = await self.breaker.call(
                lambda: self._sink.write(batch), within=self.commit_timeout
            )
            failed = next((r for r in results if isinstance(r, StoreError)), None)
            if failed is not None:
                raise failed
        dead: list[DeadLetter] = []
        counts = {"stored": 0, "duplicate": 0}
        for (entry, frame, record), result in zip(loaded, results, strict=True):
            if isinstance(result, FlowpointError):
                reason = (
                    "stale_epoch"
                    if isinstance(result, StaleEpochError)
                    else "conflict"
                    if isinstance(result, SeqConflictError)
                    else "tenant_mismatch"
                    if isinstance(result, TenantMismatchError)
                    else "rejected"
                )
                dead.append(DeadLetter(entry, frame, reason, str(result)))
                log_event(
                    log,
                    logging.ERROR,
                    "spooled checkpoint refused by PostgreSQL: moved to the dead-letter file",
                    run_id=entry.run_id,
                    seq=entry.seq,
                    reason=reason,
                    detail=str(result),
                )
            else:
                counts[result] = counts.get(result, 0) + 1
                self._note_db(record)
        await self.spool.commit(entries, dead, quarantined)
        for outcome, count in counts.items():
            if count:
                self.replayed_total.labels(result=outcome).inc(count)
        if dead:
            self.replayed_total.labels(result="dead_letter").inc(len(dead))
        if quarantined:
            self.replayed_total.labels(result="quarantined").inc(len(quarantined))
            self.corrupt_total.labels(kind="corrupt").inc(len(quarantined))
        log_event(
            log,
            logging.INFO,
            "spool replayed into PostgreSQL",
            records=len(entries),
            stored=counts["stored"],
            duplicate=counts["duplicate"],
            dead_letter=len(dead),
            quarantined=len(quarantined),
            left=self.spool.records,
        )
        return len(entries)

    async def _drain_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                if not self.spool.records:
                    self._wake.clear()
                    timeout: float | None = None
                    if self.breaker.state is not BreakerState.CLOSED:
                        await self._probe()
                        timeout = max(0.05, self.breaker.retry_after() or IDLE_PROBE_SECONDS)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                await self.drain_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except BreakerOpenError as exc:
                # Appends wake nothing here: the breaker decides when to try again.
                await asyncio.sleep(max(0.05, exc.retry_after))
            except (StoreError, OSError) as exc:
                log_event(
                    log,
                    logging.WARNING,
                    "spool replay failed: retrying",
                    records=self.spool.records,
                    error=_describe(exc),
                    retry_in=round(backoff, 3),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.breaker.cooldown)
            except Exception:
                log.exception("the spool drainer failed; retrying in 1s")
                await asyncio.sleep(1.0)

    async def _probe(self) -> None:
        """With nothing to replay, ping the database when the breaker allows a probe."""
        if self.breaker.retry_after() > 0:
            return
        ping: Callable[[], Awaitable[Any]] | None = getattr(self.store, "ping", None)

        async def check() -> None:
            if ping is not None:
                await ping()
            else:
                await self.store.list_runs(limit=1)

        with contextlib.suppress(StoreError, OSError):
            await self.breaker.call(check)

    # -- what the read path needs -----------------------------------------------------------

    def _note_db(self, record: SealedCheckpoint) -> None:
        seen = self._db_latest.get(record.run_id)
        if seen is None or record.seq > seen:
            self._db_latest[record.run_id] = record.seq
        self._db_latest.move_to_end(record.run_id)
        if len(self._db_latest) > _DB_LATEST_CAPACITY:
            self._db_latest.popitem(last=False)

    def db_latest(self, run_id: str) -> int | None:
        """The highest seq of ``run_id`` this process saw committed to PostgreSQL."""
        return self._db_latest.get(run_id)

    @property
    def spool_full(self) -> bool:
        recently = self._full_at and time.monotonic() - self._full_at < _FULL_MEMORY_SECONDS
        return bool(recently) or self.spool.room() < 4096

    async def readyz(self, request: web.Request) -> web.Response:
        """``GET /readyz``: 200 when checkpoints can be made durable (database or spool)."""
        database: dict[str, Any] = {"reachable": None, "error": None}
        if not self.breaker.is_open:
            ping: Callable[[], Awaitable[Any]] | None = getattr(self.store, "ping", None)
            try:
                if ping is not None:
                    await asyncio.wait_for(ping(), READY_TIMEOUT)
                database["reachable"] = True
            except Exception as exc:  # any failure to answer means "not reachable"
                database["reachable"] = False
                database["error"] = _describe(exc)
        else:
            database["error"] = "not tried: the circuit breaker is open"
        body: dict[str, Any] = {
            "status": "ok",
            "database": database,
            "breaker": self.breaker.snapshot().as_dict(),
            "spool": {**self.spool.stats(), "replaying": self.replaying},
        }
        if database["reachable"] and not self.spool_full:
            return web.json_response(body)
        if self._started and not self.spool_full:
            body["status"] = "degraded"
            body["message"] = (
                "PostgreSQL is unavailable: checkpoints are acknowledged from the durable "
                "spool and replayed once it is back"
                if not database["reachable"]
                else "PostgreSQL answers; the spool is being replayed"
            )
            return web.json_response(body)
        body["status"] = "unavailable"
        body["message"] = (
            "the spool is full: checkpoints are answered 503 until it drains"
            if self.spool_full
            else f"the database is not reachable: {database['error']}"
        )
        return web.json_response(body, status=503, headers={"Retry-After": "1"})


class SpoolAwareStore(BaseStore):
    """The store the resume API reads: the spool first, then PostgreSQL (see the module doc).

    Anything this class does not define is the wrapped store's (``ping``, ``dsn``...).
    """

    def __init__(self, inner: BaseStore, durability: Durability) -> None:
        self.inner = inner
        self._d = durability
        self.compression_level = inner.compression_level
        self.max_payload_bytes = inner.max_payload_bytes
        self.offload_bytes = inner.offload_bytes

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"SpoolAwareStore({self.inner!r}, spool={self._d.spool.directory})"

    # -- helpers -------------------------------------------------------------------------

    async def _db(self, fn: Callable[[], Awaitable[T]]) -> T:
        """A read of PostgreSQL: refused at once while the breaker is open, time-bounded."""
        breaker = self._d.breaker
        if breaker.is_open:
            raise BreakerOpenError(
                "PostgreSQL is unavailable (the circuit breaker is open); retry shortly",
                breaker.retry_after(),
            )
        try:
            return await asyncio.wait_for(fn(), self._d.read_timeout)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"PostgreSQL did not answer within {self._d.read_timeout:g}s"
            ) from exc

    def _need_db(self, what: str, run_id: str | None = None) -> None:
        breaker = self._d.breaker
        if breaker.is_open:
            raise BreakerOpenError(
                f"{what} needs PostgreSQL, which is unavailable (the circuit breaker is "
                "open): retry once it is back",
                breaker.retry_after(),
            )
        if run_id is not None and self._d.spool.has_run(run_id):
            waiting = len(self._d.spool.run_entries(run_id))
            raise StoreUnavailableError(
                f"{what} must wait: run {run_id} has {waiting} checkpoint(s) in the spool "
                "that are not in PostgreSQL yet; retry shortly"
            )

    def _uncertain(self, run_id: str, spooled: SpoolEntry, exc: BaseException) -> None:
        known = self._d.db_latest(run_id)
        if known is not None and known > spooled.seq:
            raise StoreUnavailableError(
                f"the newest checkpoint of run {run_id} is in PostgreSQL, which is "
                f"unavailable ({_describe(exc)}): retry rather than resume from a stale one"
            ) from exc

    async def _load(self, entry: SpoolEntry) -> SealedCheckpoint | None:
        return await self._d.spool.load(entry)

    # -- writes (the API writes through the writer; this is for completeness) ------------

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        [result] = await self._d.write([(record, epoch)])
        if isinstance(result, FlowpointError):
            raise result
        return "duplicate" if result == "duplicate" else "stored"

    # -- reads ---------------------------------------------------------------------------

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        spool = self._d.spool
        if seq is not None:
            entry = spool.get(run_id, seq)
            if entry is not None:
                record = await self._load(entry)
                if record is not None:
                    return record
            return await self._db(lambda: self.inner.get_sealed(run_id, seq))
        latest = spool.latest(run_id)
        if latest is None:
            return await self._db(lambda: self.inner.get_sealed(run_id, None))
        try:
            stored = await self._db(lambda: self.inner.get_sealed(run_id, None))
        except StoreError as exc:
            self._uncertain(run_id, latest, exc)
            stored = None
        if stored is not None and stored.seq >= latest.seq:
            return stored
        record = await self._load(latest)
        if record is None:  # replayed meanwhile
            return await self._db(lambda: self.inner.get_sealed(run_id, None))
        return record

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        spool = self._d.spool
        latest = spool.latest(run_id)
        if latest is None:
            return await self._db(lambda: self.inner.get_run(run_id))
        try:
            run = await self._db(lambda: self.inner.get_run(run_id))
        except StoreError as exc:
            self._uncertain(run_id, latest, exc)
            run = None
        if run is not None and run.latest_seq >= latest.seq:
            return run
        pending = [str(p) for p in latest.summary.get("pending_inputs") or []]
        spooled_at = dt.datetime.fromtimestamp(latest.spooled_at, dt.UTC)
        status = CheckpointStatus(latest.status)
        if run is not None:
            return run.model_copy(
                update={
                    "latest_seq": latest.seq,
                    "status": status,
                    "pending_inputs": pending,
                    "updated_at": max(run.updated_at, spooled_at),
                }
            )
        entries = spool.run_entries(run_id)
        return RunInfo(
            run_id=run_id,
            tenant_id=latest.tenant_id,
            flow_id=latest.flow_id,
            status=status,
            latest_seq=latest.seq,
            created_at=min(e.created_at for e in entries),
            updated_at=spooled_at,
            pending_inputs=pending,
            epoch=max(e.epoch for e in entries),
            claim=None,
        )

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        rows = await self._db(
            lambda: self.inner.list_checkpoints(run_id, limit=limit, before_seq=before_seq)
        )
        spooled = self._d.spool.run_entries(run_id)
        if not spooled:
            return rows
        merged = {r.seq: r for r in rows}
        for entry in spooled:
            if (before_seq is None or entry.seq < before_seq) and entry.seq not in merged:
                merged[entry.seq] = entry.to_summary()
        return sorted(merged.values(), key=lambda r: r.seq, reverse=True)[:limit]

    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        page = await self._db(
            lambda: self.inner.list_runs(
                flow_id=flow_id, status=status, tenant_id=tenant_id, limit=limit, cursor=cursor
            )
        )
        spool = self._d.spool
        runs = []
        for run in page.runs:
            latest = spool.latest(run.run_id)
            if latest is not None and latest.seq > run.latest_seq:
                run = run.model_copy(
                    update={"latest_seq": latest.seq, "status": CheckpointStatus(latest.status)}
                )
            runs.append(run)
        return RunPage(runs=runs, next_cursor=page.next_cursor)

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        return await self._db(
            lambda: self.inner.list_inputs(run_id, include_consumed=include_consumed)
        )

    # -- operations that need PostgreSQL -------------------------------------------------

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        self._need_db("claiming a run", run_id)
        return await self._db(lambda: self.inner.claim(run_id, worker_id, lease_seconds))

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        self._need_db("renewing a claim")
        return await self._db(lambda: self.inner.renew(run_id, worker_id, epoch, lease_seconds))

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        self._need_db("releasing a claim")
        await self._db(lambda: self.inner.release(run_id, worker_id, epoch))

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        self._need_db("submitting an input", run_id)
        return await self._db(lambda: self.inner.submit_input(run_id, path, answer))

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        self._need_db("consuming inputs")
        return await self._db(lambda: self.inner.consume_inputs(run_id, paths))

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")
        self._need_db("deleting a run", run_id)
        return await self._db(lambda: self.inner.delete_run(run_id))

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        self._need_db("pruning a run", run_id)
        return await self._db(lambda: self.inner.prune(run_id, max_checkpoints))

    async def expire(self, older_than: dt.datetime) -> int:
        self._need_db("expiring checkpoints")
        return await self._db(lambda: self.inner.expire(older_than))

    async def close(self) -> None:
        """The wrapped store belongs to the caller: nothing to close here."""
