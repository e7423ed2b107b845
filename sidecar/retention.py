"""The retention task: prunes each run to its ``max_checkpoints`` and expires idle runs.

Every ``interval`` seconds a sweep pages through the runs (``batch`` at a time, newest
first, yielding to the event loop between pages) and, per run:

* reads its policy from the latest checkpoint's listing summary (the flow writes
  ``max_checkpoints`` / ``retention_days`` into checkpoint metadata when they differ from
  the defaults, see :mod:`checkpoint.retention`); runs that name none get the sidecar's
  defaults (``--retention-max-checkpoints``, ``--retention-days``);
* when the run has been idle (its runs row not updated) for longer than its
  ``retention_days``, expires it: every checkpoint but the protected ones goes;
* otherwise prunes it to its newest ``max_checkpoints`` (None: no limit).

Both steps are the store's :meth:`~checkpoint.store.CheckpointStore.prune`, which never
removes a run's latest checkpoint, a ``pending_input`` checkpoint or the checkpoint a
live claim was given, whatever runs concurrently: a write racing a prune only makes it
keep more. An expiry re-reads the run right before pruning and skips it when a new
checkpoint arrived meanwhile (it is looked at again next sweep, no longer idle).

A run whose latest seq, epoch, claim and pending inputs are unchanged since it was last
handled is skipped without a query, so a sweep over many quiet runs costs one listing
query per ``batch`` runs. Deleted checkpoints are counted in
``flowpoint_retention_deleted_total{reason="max_checkpoints"|"expired"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from checkpoint.errors import FlowpointError
from checkpoint.models import utcnow
from checkpoint.retention import DEFAULT_MAX_CHECKPOINTS, RetentionPolicy, policy_from_summary
from checkpoint.store import BaseStore, RunInfo
from sidecar.config import Settings
from sidecar.keys import METRICS_KEY, STORE_KEY
from sidecar.logs import log_event

__all__ = [
    "REASONS",
    "RETENTION_KEY",
    "RetentionMetrics",
    "RetentionTask",
    "SweepReport",
    "setup_retention",
]

log = logging.getLogger("flowpoint.sidecar.retention")

REASONS: Final = ("max_checkpoints", "expired")
_MEMORY: Final = 100_000  # runs whose handled state is remembered (LRU)

_RunKey = tuple[int, int, bool, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Handled:
    """A run's state when the task last handled it, the policy it had, and whether expired."""

    key: _RunKey
    policy: RetentionPolicy
    expired: bool


class RetentionMetrics:
    """The retention task's Prometheus metrics, in the sidecar's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.deleted_total = Counter(
            "flowpoint_retention_deleted_total",
            "Checkpoints deleted by the retention task, by reason",
            ["reason"],
            registry=r,
        )
        self.sweeps_total = Counter(
            "flowpoint_retention_sweeps_total",
            "Retention sweeps, by result (ok, or error when the store failed mid-sweep)",
            ["result"],
            registry=r,
        )
        self.last_success = Gauge(
            "flowpoint_retention_last_success_timestamp_seconds",
            "Unix time the last complete retention sweep ended (0: none yet)",
            registry=r,
        )
        for reason in REASONS:
            self.deleted_total.labels(reason=reason)
        for result in ("ok", "error"):
            self.sweeps_total.labels(result=result)


@dataclass(slots=True)
class SweepReport:
    """What one sweep did."""

    runs: int = 0
    handled: int = 0
    pruned: int = 0
    expired: int = 0
    errors: int = 0

    @property
    def deleted(self) -> int:
        return self.pruned + self.expired


class RetentionTask:
    """Runs :meth:`sweep` every ``interval`` seconds between :meth:`start` and :meth:`close`."""

    def __init__(
        self,
        store: BaseStore,
        *,
        interval: float = 60.0,
        default_max_checkpoints: int | None = DEFAULT_MAX_CHECKPOINTS,
        default_retention_days: float | None = None,
        batch: int = 100,
        metrics: RetentionMetrics | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if interval < 0 or batch < 1:
            raise ValueError("interval must be >= 0 and batch >= 1")
        self.store = store
        self.interval = interval
        self.default_max_checkpoints = default_max_checkpoints
        self.default_retention_days = default_retention_days
        self.batch = batch
        self.metrics = metrics if metrics is not None else RetentionMetrics()
        self.clock = clock
        self.sweeps = 0
        self._handled: OrderedDict[str, _Handled] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """False when ``interval`` is 0 (the task never starts)."""
        return self.interval > 0

    def start(self) -> None:
        """Start sweeping in the background (no-op when disabled or already started)."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flowpoint retention")

    async def close(self) -> None:
        """Stop the background sweeps (a sweep in progress is cancelled; it is safe to)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next sweep retries; the task must not die
                log_event(log, logging.WARNING, "retention sweep failed", error=repr(exc))

    # -- one sweep -------------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Go over every run once; return what was done. Raises when listing runs fails."""
        async with self._lock:  # a manual sweep and the background one never overlap
            report = SweepReport()
            try:
                await self._sweep(report)
            except Exception:
                self.metrics.sweeps_total.labels(result="error").inc()
                raise
            self.sweeps += 1
            self.metrics.sweeps_total.labels(result="ok").inc()
            self.metrics.last_success.set(time.time())
            if report.deleted or report.errors:
                log_event(
                    log,
                    logging.INFO,
                    "retention sweep",
                    runs=report.runs,
                    pruned=report.pruned,
                    expired=report.expired,
                    errors=report.errors,
                )
            return report

    async def _sweep(self, report: SweepReport) -> None:
        cursor: str | None = None
        while True:
            page = await self.store.list_runs(limit=self.batch, cursor=cursor)
            for run in page.runs:
                report.runs += 1
                try:
                    await self._handle(run, report)
                except FlowpointError as exc:
                    # One run's failure (a corrupt latest row, a lost race) spares the rest.
                    report.errors += 1
                    log_event(
                        log,
                        logging.WARNING,
                        "retention skipped a run",
                        run_id=run.run_id,
                        error=repr(exc),
                    )
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
            await asyncio.sleep(0)  # small batches: let requests in between

    async def _handle(self, run: RunInfo, report: SweepReport) -> None:
        key: _RunKey = (run.latest_seq, run.epoch, run.claim is None, tuple(run.pending_inputs))
        seen = self._handled.get(run.run_id)
        if seen is not None and seen.key == key:
            # Pruned already at this state; only time can still make it due for expiry.
            if seen.expired or not self._is_idle(run, seen.policy):
                return
            policy = seen.policy
        else:
            policy = await self._policy(run)
        expired = False
        if self._is_idle(run, policy):
            removed = await self._expire(run)
            if removed is None:
                return  # written to meanwhile: the next sweep sees it active
            expired = True
            report.expired += removed
            self.metrics.deleted_total.labels(reason="expired").inc(removed)
        elif self._may_exceed(run, policy):
            assert policy.max_checkpoints is not None
            removed = await self.store.prune(run.run_id, policy.max_checkpoints)
            report.pruned += removed
            self.metrics.deleted_total.labels(reason="max_checkpoints").inc(removed)
        report.handled += 1
        self._remember(run.run_id, _Handled(key, policy, expired))

    async def _policy(self, run: RunInfo) -> RetentionPolicy:
        """The run's policy, from its latest checkpoint's summary (no payload decoding)."""
        record = await self.store.get_sealed(run.run_id)
        return policy_from_summary(
            record.summary if record is not None else None,
            default_max_checkpoints=self.default_max_checkpoints,
            default_retention_days=self.default_retention_days,
        )

    def _is_idle(self, run: RunInfo, policy: RetentionPolicy) -> bool:
        if policy.retention_days is None:
            return False
        cutoff = self.clock() - dt.timedelta(days=policy.retention_days)
        return run.updated_at < cutoff

    @staticmethod
    def _may_exceed(run: RunInfo, policy: RetentionPolicy) -> bool:
        # Seqs are unique and >= 0, so a run holds at most latest_seq + 1 checkpoints.
        return policy.max_checkpoints is not None and run.latest_seq + 1 > policy.max_checkpoints

    async def _expire(self, run: RunInfo) -> int | None:
        """Prune an idle run to its protected checkpoints; None when it was written to."""
        fresh = await self.store.get_run(run.run_id)
        if fresh is None:
            return 0
        if fresh.latest_seq != run.latest_seq or fresh.updated_at != run.updated_at:
            return None
        return await self.store.prune(run.run_id, 0)

    def _remember(self, run_id: str, handled: _Handled) -> None:
        self._handled[run_id] = handled
        self._handled.move_to_end(run_id)
        if len(self._handled) > _MEMORY:
            self._handled.popitem(last=False)


RETENTION_KEY: Final = web.AppKey("flowpoint.retention", RetentionTask)


def setup_retention(app: web.Application, settings: Settings) -> RetentionTask:
    """Attach a :class:`RetentionTask` on the app's store, started and stopped with the app.

    Its metrics join the app's registry. With ``retention_interval`` 0 it never runs (it
    is still attached, so an operator or a test can call ``sweep()`` by hand).
    """
    metrics = app.get(METRICS_KEY)
    registry = getattr(metrics, "registry", None)
    task = RetentionTask(
        app[STORE_KEY],
        interval=settings.retention_interval,
        default_max_checkpoints=settings.retention_max_checkpoints,
        default_retention_days=settings.retention_days,
        batch=settings.retention_batch,
        metrics=RetentionMetrics(registry),
    )
    app[RETENTION_KEY] = task

    async def start(app: web.Application) -> None:
        app[RETENTION_KEY].start()

    async def stop(app: web.Application) -> None:
        await app[RETENTION_KEY].close()

    app.on_startup.append(start)
    # First in cleanup: no sweep may run while the writer flushes and the store closes.
    app.on_cleanup.insert(0, stop)
    return task
