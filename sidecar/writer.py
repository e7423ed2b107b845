"""Group commit: records from concurrent requests share one database transaction.

Each request hands its verified records to :class:`GroupCommitWriter` and awaits one
future per record. A small set of flusher tasks take records off the queue in batches
(at most ``max_batch``) and make each batch durable with a :class:`Sink`.

Latency at low load is protected: a flusher that finds records waiting while no other
batch is being committed takes them at once, so a lone record never waits. Only while
another batch is in flight does a flusher linger (up to ``max_wait``) for the batch to
fill: those records would wait for the database anyway.

The "make durable" step sits behind :class:`Sink`, so a circuit breaker and a durable
spool can later wrap :class:`StoreSink` without touching the batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from checkpoint.errors import FlowpointError, StoreError, StoreUnavailableError
from checkpoint.store import BaseStore, PutOutcome, SealedCheckpoint

__all__ = [
    "BatchObserver",
    "GroupCommitWriter",
    "PendingWrite",
    "Sink",
    "StoreSink",
    "WriteResult",
]

log = logging.getLogger("flowpoint.sidecar.writer")

# "spooled": durable in the sidecar's local spool, not yet in the database (sidecar.durability).
WriteResult = PutOutcome | Literal["spooled"] | FlowpointError


class Sink(Protocol):
    """Makes a batch of sealed records durable, in one transaction where it can.

    Returns one result per item, in order: ``"stored"`` / ``"duplicate"``, or the
    :class:`FlowpointError` that refused that item (conflict, stale epoch, tenant). Raises
    (typically :class:`StoreUnavailableError`) when nothing of the batch is durable.
    """

    async def write(self, batch: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]: ...


class StoreSink:
    """A :class:`Sink` that writes to a checkpoint store.

    Uses the store's ``put_sealed_many`` (one transaction per batch) when it has one,
    else ``put_sealed`` per record.
    """

    def __init__(self, store: BaseStore) -> None:
        self.store = store
        self._many = getattr(store, "put_sealed_many", None)

    async def write(self, batch: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]:
        if self._many is not None:
            results: list[WriteResult] = list(await self._many(batch))
            if len(results) != len(batch):
                raise StoreError(
                    f"the store answered {len(results)} outcomes for a batch of {len(batch)}"
                )
            return results
        out: list[WriteResult] = []
        for record, epoch in batch:
            try:
                out.append(await self.store.put_sealed(record, epoch=epoch))
            except StoreError:
                raise
            except FlowpointError as exc:
                out.append(exc)
        return out


@dataclass(slots=True, eq=False)
class PendingWrite:
    """A record waiting for its batch. ``context`` is the submitter's own data."""

    record: SealedCheckpoint
    epoch: int
    future: asyncio.Future[WriteResult]
    context: Any = None
    enqueued: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[Sequence[PendingWrite], Sequence[WriteResult], float, float], None]
"""Called after each batch, before its futures resolve: (items, results, started, seconds).

Exceptions it raises are logged, never propagated to the writers.
"""


class GroupCommitWriter:
    """Batches records from concurrent submitters into few transactions.

    Call :meth:`start` inside the event loop, :meth:`submit` per request, and
    :meth:`close` on shutdown (it commits whatever is queued before returning).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_batch: int = 128,
        max_wait: float = 0.002,
        max_inflight: int = 2,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1 or max_wait < 0:
            raise ValueError("max_batch and max_inflight must be >= 1, max_wait >= 0")
        self.sink = sink
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_inflight = max_inflight
        self.observer = observer
        self._queue: deque[PendingWrite] = deque()
        # Idle flushers, each parked on its own future: a submit wakes one of them, not all
        # (an Event would wake every flusher per request, only for all but one to sleep again).
        self._idle: deque[asyncio.Future[None]] = deque()
        self._filled = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight = 0
        self._closing = False
        self.batches = 0
        self.records = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher tasks (idempotent)."""
        if self._tasks:
            return
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._flusher(), name=f"flowpoint-writer-{i}")
            for i in range(self.max_inflight)
        ]

    async def close(self) -> None:
        """Stop accepting records, commit everything queued, then stop the flushers."""
        self._closing = True
        while self._idle:
            self._wake_one()
        self._filled.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Only reachable if the flushers died: never leave a submitter waiting forever.
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_result(
                    StoreUnavailableError("the sidecar stopped before the checkpoint was stored")
                )

    @property
    def pending(self) -> int:
        """Records queued and not yet taken into a batch."""
        return len(self._queue)

    @property
    def inflight(self) -> int:
        """Batches being committed right now."""
        return self._inflight

    # -- submitting --------------------------------------------------------------------------

    def submit(
        self, items: Sequence[tuple[SealedCheckpoint, int, Any]]
    ) -> list[asyncio.Future[WriteResult]]:
        """Queue ``(record, epoch, context)`` items; await the returned futures for results.

        A future's result is the outcome or the :class:`FlowpointError` for that record.

        Raises :class:`StoreUnavailableError` once :meth:`close` has begun.
        """
        if self._closing or not self._tasks:
            raise StoreUnavailableError("the sidecar is shutting down: retry on another sidecar")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[WriteResult]] = []
        for record, epoch, context in items:
            fut: asyncio.Future[WriteResult] = loop.create_future()
            self._queue.append(PendingWrite(record, epoch, fut, context))
            futures.append(fut)
        self._wake_one()
        if len(self._queue) >= self.max_batch:
            self._filled.set()
        return futures

    # -- flushing ----------------------------------------------------------------------------

    def _wake_one(self) -> None:
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled flusher leaves a done future behind
                waiter.set_result(None)
                return

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
            if self._inflight > 0 and len(self._queue) < self.max_batch and self.max_wait > 0:
                # Another batch holds the database: let this one fill meanwhile.
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), self.max_wait)
                if not self._queue:
                    continue  # another flusher took them
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            if self._queue:
                self._wake_one()  # more than one batch waits: another flusher takes the rest
            self._inflight += 1
            try:
                await self._commit(batch)
            finally:
                self._inflight -= 1

    async def _commit(self, batch: list[PendingWrite]) -> None:
        started = time.perf_counter()
        results: Sequence[WriteResult]
        try:
            results = await self.sink.write([(p.record, p.epoch) for p in batch])
        except FlowpointError as exc:
            results = [exc] * len(batch)
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_result(
                        StoreUnavailableError("the write was cancelled by a shutdown")
                    )
            raise
        except Exception as exc:  # a driver bug must not strand the submitters
            log.exception("group commit of %d records failed", len(batch))
            results = [StoreUnavailableError(f"the database write failed: {exc}")] * len(batch)
        seconds = time.perf_counter() - started
        self.batches += 1
        self.records += len(batch)
        if self.observer is not None:
            try:
                self.observer(batch, results, started, seconds)
            except Exception:
                log.exception("the batch observer failed")
        # Errors are results too (never set_exception): a submitter that went away must not
        # leave "exception was never retrieved" noise behind.
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
