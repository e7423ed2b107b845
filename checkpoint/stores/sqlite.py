"""A store in one SQLite file (aiosqlite): durable, single-host, no server to run.

Durability: the database runs in WAL mode with ``synchronous=NORMAL`` by
default. A committed checkpoint survives a crash of the process; after a power
loss or OS crash the last few commits may be rolled back (the database stays
consistent). Pass ``synchronous="FULL"`` to fsync the WAL on every commit and
keep those too, at the cost of one fsync per write.

One connection serves the store and every operation is serialized on it
(aiosqlite runs it on its own thread). Writes run in ``BEGIN IMMEDIATE``
transactions, which take SQLite's write lock up front, so put, claim and
consume are atomic even against other processes using the same file
(``busy_timeout`` makes them wait for each other). Times are stored as integer
microseconds since the epoch and come back as aware UTC datetimes.

Puts are the hot path, so a put (or a batch of them, ``put_sealed_many``) runs
its whole transaction as one synchronous call on the connection's thread: one
thread hop instead of one per statement.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from checkpoint.errors import FlowpointError, InputConflictError, RunNotFoundError, StoreError
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

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    flow_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    latest_seq      INTEGER NOT NULL,
    pending_inputs  TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    epoch           INTEGER NOT NULL DEFAULT 0,
    claim_worker    TEXT,
    claim_expires   INTEGER,
    claim_seq       INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs (updated_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant_id, updated_at DESC, run_id DESC);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    tenant_id       TEXT NOT NULL,
    flow_id         TEXT NOT NULL,
    status          TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    raw_size        INTEGER NOT NULL,
    stored_size     INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    summary         TEXT NOT NULL,
    trace_id        TEXT,
    blob            BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS checkpoints_by_age ON checkpoints (created_at);
CREATE TABLE IF NOT EXISTS inputs (
    run_id          TEXT NOT NULL,
    path            TEXT NOT NULL,
    answer          TEXT NOT NULL,
    submitted_at    INTEGER NOT NULL,
    consumed        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, path)
);
"""

_RUN_COLUMNS = (
    "run_id, tenant_id, flow_id, status, latest_seq, pending_inputs, created_at, updated_at, "
    "epoch, claim_worker, claim_expires, claim_seq"
)
_SUMMARY_COLUMNS = "run_id, seq, status, created_at, sha256, raw_size, stored_size"


def _row_of(r: Sequence[Any]) -> RunRow:
    return RunRow(
        run_id=r[0],
        tenant_id=r[1],
        flow_id=r[2],
        status=CheckpointStatus(r[3]),
        latest_seq=r[4],
        pending_inputs=json.loads(r[5]),
        created_at=r[6],
        updated_at=r[7],
        epoch=r[8],
        claim_worker=r[9],
        claim_expires=r[10],
        claim_seq=r[11],
    )


def _row_values(row: RunRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.tenant_id,
        row.flow_id,
        row.status.value,
        row.latest_seq,
        json.dumps(row.pending_inputs),
        row.created_at,
        row.updated_at,
        row.epoch,
        row.claim_worker,
        row.claim_expires,
        row.claim_seq,
    )


def _summary_of(r: Sequence[Any]) -> CheckpointSummary:
    return CheckpointSummary(
        run_id=r[0],
        seq=r[1],
        status=CheckpointStatus(r[2]),
        created_at=rules.from_micros(r[3]),
        sha256=r[4],
        raw_size=r[5],
        stored_size=r[6],
    )


def _input_of(r: Sequence[Any]) -> InputRecord:
    return InputRecord(
        run_id=r[0],
        path=r[1],
        answer=rules.decode_answer(r[2]),
        submitted_at=rules.from_micros(r[3]),
        consumed=bool(r[4]),
    )


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """Call ``fn(sqlite3_connection)`` on the aiosqlite connection's own thread.

    aiosqlite has no public API for this; ``_execute`` (queue a callable on the
    connection thread) and ``_conn`` (the sqlite3 connection) are stable since
    0.17. The sqlite3 connection must only be touched on that thread.
    """
    raw = conn._conn
    result: _T = await conn._execute(fn, raw)  # type: ignore[no-untyped-call]
    return result


def _transaction(body: Callable[[sqlite3.Connection], _T], raw: sqlite3.Connection) -> _T:
    raw.execute("BEGIN IMMEDIATE")
    try:
        result = body(raw)
        raw.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (e.g. on SQLITE_FULL); a second
        # ROLLBACK would raise and hide the real error.
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return result


def _put_batch(
    items: Sequence[tuple[SealedCheckpoint, int]], raw: sqlite3.Connection
) -> list[PutOutcome | FlowpointError]:
    """Decide and write ``items`` in order inside the caller's transaction.

    Run rows are read once per run and written once at the end; checksums of
    keys stored earlier in the batch are kept so in-batch repeats see them.
    """
    rows: dict[str, RunRow | None] = {}
    changed: dict[str, RunRow] = {}
    stored: dict[tuple[str, int], str] = {}
    inserts: list[tuple[Any, ...]] = []
    results: list[PutOutcome | FlowpointError] = []
    for record, epoch in items:
        run_id = record.run_id
        if run_id not in rows:
            r = raw.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
            found = r.fetchone()
            rows[run_id] = _row_of(found) if found is not None else None
        row = rows[run_id]
        key = (run_id, record.seq)
        existing = stored.get(key)
        if existing is None:
            hit = raw.execute(
                "SELECT sha256 FROM checkpoints WHERE run_id = ? AND seq = ?", key
            ).fetchone()
            existing = hit[0] if hit is not None else None
        try:
            outcome = rules.check_put(row, existing, record, epoch)
        except FlowpointError as exc:
            results.append(exc)
            continue
        if outcome is not None:
            results.append(outcome)
            continue
        inserts.append(
            (
                run_id,
                record.seq,
                record.tenant_id,
                record.flow_id,
                str(record.status),
                record.schema_version,
                record.sha256,
                record.raw_size,
                len(record.blob),
                rules.to_micros(record.created_at),
                json.dumps(record.summary),
                record.trace_id,
                record.blob,
            )
        )
        stored[key] = record.sha256
        row = rules.apply_put(row, record, rules.now_micros())
        rows[run_id] = changed[run_id] = row
        results.append("stored")
    if inserts:
        raw.executemany(
            "INSERT INTO checkpoints (run_id, seq, tenant_id, flow_id, status, schema_version, "
            "sha256, raw_size, stored_size, created_at, summary, trace_id, blob) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            inserts,
        )
        raw.executemany(
            f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [_row_values(row) for row in changed.values()],
        )
    return results


class SQLiteStore(BaseStore):
    """Checkpoints in the SQLite database at ``path`` (created on first use)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._lock = rules.LoopLock()
        self._conn: aiosqlite.Connection | None = None

    # -- connection and transactions -------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        if self._conn is not None:
            return self._conn
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        pending = aiosqlite.connect(self.path, isolation_level=None)
        # aiosqlite's worker thread is non-daemon: a `run_sync` script that never closes the
        # store would hang at exit. Every write is awaited, so a daemon thread loses nothing.
        pending._thread.daemon = True
        conn = await pending
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            await conn.executescript(_SCHEMA)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock.get():
            try:
                yield await self._connect()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock.get():
            try:
                conn = await self._connect()
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc

    async def _transact(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` in a ``BEGIN IMMEDIATE`` transaction in ONE hop to the connection thread.

        Every awaited aiosqlite statement is a round trip to its thread; a put took
        about ten of them. Here the whole transaction is one synchronous call.
        """
        async with self._lock.get():
            try:
                conn = await self._connect()
                return await _in_thread(conn, functools.partial(_transaction, body))
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path} failed: {exc}") from exc

    async def close(self) -> None:
        """Close the connection; the store reconnects if used again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    async def _fetch_row(conn: aiosqlite.Connection, run_id: str) -> RunRow | None:
        async with conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        ) as cur:
            r = await cur.fetchone()
        return _row_of(r) if r is not None else None

    async def _need_row(self, conn: aiosqlite.Connection, run_id: str) -> RunRow:
        row = await self._fetch_row(conn, run_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
        return row

    @staticmethod
    async def _save_row(conn: aiosqlite.Connection, row: RunRow) -> None:
        await conn.execute(
            f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            _row_values(row),
        )

    # -- put / get -----------------------------------------------------------------------

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        rules.validate_record(record)
        [result] = await self._put_valid([(record, epoch)])
        if isinstance(result, FlowpointError):
            raise result
        return result

    async def put_sealed_many(
        self, items: Sequence[tuple[SealedCheckpoint, int]]
    ) -> list[PutOutcome | FlowpointError]:
        """Write many records (each with its claim epoch) in one transaction.

        Returns, per item and in order, ``"stored"``, ``"duplicate"`` or the
        error refusing it (:class:`SeqConflictError`, :class:`StaleEpochError`,
        :class:`TenantMismatchError`, :class:`InvalidIdError`); a refused item
        does not fail the others. Each item is decided exactly as
        :meth:`put_sealed` would decide it after the items before it, so several
        items with the same ``(run_id, seq)`` are fine: the first is stored, the
        rest are duplicates or conflicts. Raises :class:`StoreError` when the
        batch could not be committed (nothing of it was).
        """
        results: list[PutOutcome | FlowpointError | None] = [None] * len(items)
        valid: list[tuple[SealedCheckpoint, int]] = []
        positions: list[int] = []
        for index, (record, epoch) in enumerate(items):
            try:
                rules.validate_record(record)
            except FlowpointError as exc:
                results[index] = exc
                continue
            valid.append((record, epoch))
            positions.append(index)
        if valid:
            for index, outcome in zip(positions, await self._put_valid(valid), strict=True):
                results[index] = outcome
        return [r for r in results if r is not None]

    async def _put_valid(
        self, items: list[tuple[SealedCheckpoint, int]]
    ) -> list[PutOutcome | FlowpointError]:
        return await self._transact(functools.partial(_put_batch, items))

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        query = (
            "SELECT tenant_id, flow_id, run_id, seq, status, schema_version, sha256, raw_size, "
            "blob, created_at, summary, trace_id FROM checkpoints WHERE run_id = ? "
        )
        if seq is None:
            args: tuple[Any, ...] = (run_id,)
            query += "ORDER BY seq DESC LIMIT 1"
        else:
            args = (run_id, seq)
            query += "AND seq = ?"
        async with self._read() as conn, conn.execute(query, args) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        return SealedCheckpoint(
            tenant_id=r[0],
            flow_id=r[1],
            run_id=r[2],
            seq=r[3],
            status=CheckpointStatus(r[4]),
            schema_version=r[5],
            sha256=r[6],
            raw_size=r[7],
            blob=bytes(r[8]),
            created_at=rules.from_micros(r[9]),
            summary=json.loads(r[10]),
            trace_id=r[11],
        )

    # -- listings ------------------------------------------------------------------------

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        validate_id(run_id, "run_id")
        rules.validate_limit(limit)
        query = f"SELECT {_SUMMARY_COLUMNS} FROM checkpoints WHERE run_id = ?"
        args: list[Any] = [run_id]
        if before_seq is not None:
            query += " AND seq < ?"
            args.append(before_seq)
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        async with self._read() as conn, conn.execute(query, args) as cur:
            return [_summary_of(r) for r in await cur.fetchall()]

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        async with self._read() as conn:
            row = await self._fetch_row(conn, run_id)
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
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("flow_id", flow_id), ("status", status), ("tenant_id", tenant_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        if cursor is not None:
            updated, run_id = rules.decode_cursor(cursor)
            where.append("(updated_at < ? OR (updated_at = ? AND run_id < ?))")
            args += [updated, updated, run_id]
        query = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY updated_at DESC, run_id DESC LIMIT ?"
        args.append(limit + 1)
        async with self._read() as conn, conn.execute(query, args) as cur:
            rows = [_row_of(r) for r in await cur.fetchall()]
        now = rules.now_micros()
        page = rows[:limit]
        next_cursor = (
            rules.encode_cursor(page[-1].updated_at, page[-1].run_id) if len(rows) > limit else None
        )
        return RunPage(runs=[r.to_info(now) for r in page], next_cursor=next_cursor)

    # -- claims --------------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        async with self._write() as conn:
            row = await self._need_row(conn, run_id)
            info = rules.apply_claim(row, worker_id, lease, rules.now_micros())
            await self._save_row(conn, row)
            return info

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        async with self._write() as conn:
            row = await self._need_row(conn, run_id)
            info = rules.apply_renew(row, worker_id, epoch, lease, rules.now_micros())
            await self._save_row(conn, row)
            return info

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        async with self._write() as conn:
            row = await self._need_row(conn, run_id)
            rules.apply_release(row, worker_id, epoch)
            await self._save_row(conn, row)

    # -- human input ---------------------------------------------------------------------

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        rules.validate_input_path(path)
        encoded = rules.encode_answer(answer)
        async with self._write() as conn:
            await self._need_row(conn, run_id)
            values = (run_id, path, encoded, rules.now_micros(), 0)
            cur = await conn.execute(
                "INSERT OR IGNORE INTO inputs (run_id, path, answer, submitted_at, consumed) "
                "VALUES (?,?,?,?,?)",
                values,
            )
            if cur.rowcount != 1:
                raise InputConflictError(f"input {path!r} of run {run_id} was already answered")
        return _input_of(values)

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        validate_id(run_id, "run_id")
        query = "SELECT run_id, path, answer, submitted_at, consumed FROM inputs WHERE run_id = ?"
        if not include_consumed:
            query += " AND consumed = 0"
        query += " ORDER BY submitted_at, path"
        async with self._read() as conn, conn.execute(query, (run_id,)) as cur:
            return [_input_of(r) for r in await cur.fetchall()]

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        validate_id(run_id, "run_id")
        wanted = [rules.validate_input_path(p) for p in paths]
        consumed = []
        async with self._write() as conn:
            for path in dict.fromkeys(wanted):
                cur = await conn.execute(
                    "UPDATE inputs SET consumed = 1 WHERE run_id = ? AND path = ? AND consumed = 0",
                    (run_id, path),
                )
                if cur.rowcount == 1:
                    consumed.append(path)
        return consumed

    # -- deletion and retention ------------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")
        async with self._write() as conn:
            found = (await conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))).rowcount
            gone = await conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
            await conn.execute("DELETE FROM inputs WHERE run_id = ?", (run_id,))
            return bool(found or gone.rowcount)

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        keep = rules.validate_retention(max_checkpoints)
        async with self._write() as conn:
            return await self._trim(conn, run_id, keep=keep, cutoff=None)

    async def expire(self, older_than: dt.datetime) -> int:
        cutoff = rules.to_micros(older_than)
        async with self._write() as conn:
            async with conn.execute(
                "SELECT DISTINCT run_id FROM checkpoints WHERE created_at < ?", (cutoff,)
            ) as cur:
                run_ids = [r[0] for r in await cur.fetchall()]
            removed = 0
            for run_id in run_ids:
                removed += await self._trim(conn, run_id, keep=None, cutoff=cutoff)
            return removed

    async def _trim(
        self, conn: aiosqlite.Connection, run_id: str, *, keep: int | None, cutoff: int | None
    ) -> int:
        async with conn.execute(
            "SELECT seq, status, created_at FROM checkpoints WHERE run_id = ?", (run_id,)
        ) as cur:
            entries = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
        victims = rules.retention_victims(
            entries,
            keep=keep,
            cutoff=cutoff,
            row=await self._fetch_row(conn, run_id),
            now=rules.now_micros(),
        )
        if victims:
            await conn.executemany(
                "DELETE FROM checkpoints WHERE run_id = ? AND seq = ?",
                [(run_id, seq) for seq in victims],
            )
        return len(victims)
