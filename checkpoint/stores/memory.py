"""An in-process store: for tests, demos and single-process runs that may lose state on exit."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint.errors import InputConflictError, RunNotFoundError
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
from checkpoint.stores import rules
from checkpoint.stores.rules import RunRow

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Input:
    answer: str  # canonical JSON, so the caller's object is never shared
    submitted_at: int
    consumed: bool = False


class MemoryStore(BaseStore):
    """Keeps everything in dicts guarded by one asyncio lock.

    Records are copied on the way in and out, so callers never share mutable
    state with the store.
    """

    def __init__(self) -> None:
        self._lock = rules.LoopLock()
        self._runs: dict[str, RunRow] = {}
        self._checkpoints: dict[str, dict[int, SealedCheckpoint]] = {}
        self._inputs: dict[str, dict[str, _Input]] = {}

    @staticmethod
    def _copy(record: SealedCheckpoint) -> SealedCheckpoint:
        return dataclasses.replace(record, summary=copy.deepcopy(record.summary))

    def _row(self, run_id: str) -> RunRow:
        row = self._runs.get(run_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
        return row

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        rules.validate_record(record)
        async with self._lock.get():
            row = self._runs.get(record.run_id)
            existing = self._checkpoints.get(record.run_id, {}).get(record.seq)
            outcome = rules.check_put(row, existing.sha256 if existing else None, record, epoch)
            if outcome is not None:
                return outcome
            self._checkpoints.setdefault(record.run_id, {})[record.seq] = self._copy(record)
            self._runs[record.run_id] = rules.apply_put(row, record, rules.now_micros())
            return "stored"

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        async with self._lock.get():
            history = self._checkpoints.get(run_id)
            if not history:
                return None
            record = history.get(max(history) if seq is None else seq)
            return self._copy(record) if record is not None else None

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        validate_id(run_id, "run_id")
        rules.validate_limit(limit)
        async with self._lock.get():
            history = self._checkpoints.get(run_id, {})
            seqs = sorted(
                (s for s in history if before_seq is None or s < before_seq), reverse=True
            )
            return [history[s].to_summary() for s in seqs[:limit]]

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        async with self._lock.get():
            row = self._runs.get(run_id)
            return row.to_info(rules.now_micros()) if row is not None else None

    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        rules.validate_limit(limit)
        async with self._lock.get():
            runs, next_cursor = rules.page_runs(
                list(self._runs.values()),
                flow_id=flow_id,
                status=status,
                tenant_id=tenant_id,
                limit=limit,
                cursor=cursor,
                now=rules.now_micros(),
            )
        return RunPage(runs=runs, next_cursor=next_cursor)

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        async with self._lock.get():
            return rules.apply_claim(self._row(run_id), worker_id, lease, rules.now_micros())

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        async with self._lock.get():
            row = self._row(run_id)
            return rules.apply_renew(row, worker_id, epoch, lease, rules.now_micros())

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        async with self._lock.get():
            rules.apply_release(self._row(run_id), worker_id, epoch)

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        rules.validate_input_path(path)
        encoded = rules.encode_answer(answer)
        async with self._lock.get():
            self._row(run_id)
            inputs = self._inputs.setdefault(run_id, {})
            if path in inputs:
                raise InputConflictError(f"input {path!r} of run {run_id} was already answered")
            entry = _Input(answer=encoded, submitted_at=rules.now_micros())
            inputs[path] = entry
            return self._record(run_id, path, entry)

    @staticmethod
    def _record(run_id: str, path: str, entry: _Input) -> InputRecord:
        return InputRecord(
            run_id=run_id,
            path=path,
            answer=rules.decode_answer(entry.answer),
            submitted_at=rules.from_micros(entry.submitted_at),
            consumed=entry.consumed,
        )

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        validate_id(run_id, "run_id")
        async with self._lock.get():
            inputs = self._inputs.get(run_id, {})
            ordered = sorted(inputs.items(), key=lambda kv: (kv[1].submitted_at, kv[0]))
            return [
                self._record(run_id, path, entry)
                for path, entry in ordered
                if include_consumed or not entry.consumed
            ]

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        validate_id(run_id, "run_id")
        wanted = [rules.validate_input_path(p) for p in paths]
        async with self._lock.get():
            inputs = self._inputs.get(run_id, {})
            consumed = []
            for path in dict.fromkeys(wanted):
                entry = inputs.get(path)
                if entry is not None and not entry.consumed:
                    entry.consumed = True
                    consumed.append(path)
            return consumed

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")
        async with self._lock.get():
            found = run_id in self._runs or run_id in self._checkpoints
            self._runs.pop(run_id, None)
            self._checkpoints.pop(run_id, None)
            self._inputs.pop(run_id, None)
            return found

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        keep = rules.validate_retention(max_checkpoints)
        async with self._lock.get():
            return self._trim(run_id, keep=keep, cutoff=None, now=rules.now_micros())

    async def expire(self, older_than: dt.datetime) -> int:
        cutoff = rules.to_micros(older_than)
        async with self._lock.get():
            now = rules.now_micros()
            return sum(
                self._trim(run_id, keep=None, cutoff=cutoff, now=now)
                for run_id in list(self._checkpoints)
            )

    def _trim(self, run_id: str, *, keep: int | None, cutoff: int | None, now: int) -> int:
        history = self._checkpoints.get(run_id, {})
        victims = rules.retention_victims(
            ((s, str(r.status), rules.to_micros(r.created_at)) for s, r in history.items()),
            keep=keep,
            cutoff=cutoff,
            row=self._runs.get(run_id),
            now=now,
        )
        for seq in victims:
            del history[seq]
        return len(victims)
