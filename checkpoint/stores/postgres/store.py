"""PostgresStore: the production store, on asyncpg.

Every operation is one SQL statement (one round trip), except ``delete_run``
and the migrations. Writes of checkpoints go through the
``flowpoint_put_batch`` function (migration 0001): it locks the runs rows in
``run_id`` order, decides every item (stored, duplicate, conflict, stale epoch,
tenant mismatch), inserts the checkpoints and updates the runs rows in one
transaction, so a batch of any size costs one round trip and one commit. A batch
of one record takes ``flowpoint_put_one`` (migration 0002) instead: the same
outcomes from plain index probes, at a fraction of the server CPU.

Leases use the database clock (``now()``), never the client's. Timestamps are
``timestamptz`` and come back as aware UTC datetimes.

The pool skips asyncpg's per-release reset query (``RESET ALL``, ``UNLISTEN *``...):
this store never changes session state, and the reset costs a round trip on
every operation. Open transactions are still rolled back on release.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random,
)

from checkpoint.errors import (
    CheckpointRefusedError,
    ClaimConflictError,
    ConfigError,
    FlowpointError,
    InputConflictError,
    InputValidationError,
    InvalidIdError,
    RunNotFoundError,
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
from checkpoint.stores import rules
from checkpoint.stores.postgres.migrate import apply_migrations

__all__ = ["PostgresStore"]

_log = logging.getLogger("flowpoint.postgres")
T = TypeVar("T")

_EXPIRE_BATCH = 1000
_MAX_BATCH_BYTES = 256 * 1024 * 1024

_PUT_BATCH = """
SELECT ord, outcome, current_epoch
FROM flowpoint_put_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::integer[], $7::text[], $8::integer[], $9::bytea[], $10::jsonb[],
                         $11::text[], $12::timestamptz[], $13::bigint[])
"""

# A batch of one (every save at low load) takes the plain-probe function of migration 0002:
# same outcomes, a fraction of the server CPU of the set-based batch function.
_PUT_ONE = """
SELECT outcome, current_epoch
FROM flowpoint_put_one($1::text, $2::bigint, $3::text, $4::text, $5::text, $6::integer,
                       $7::text, $8::integer, $9::bytea, $10::jsonb, $11::text,
                       $12::timestamptz, $13::bigint)
"""

_CHECKPOINT_COLUMNS = """run_id, seq, tenant_id, flow_id, status, schema_version, sha256,
raw_size, payload, summary, trace_id, created_at"""

_GET_LATEST = f"""
SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE run_id = $1 ORDER BY seq DESC LIMIT 1
"""

_GET_SEQ = f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE run_id = $1 AND seq = $2"

_LIST_CHECKPOINTS = """
SELECT run_id, seq, status, created_at, sha256, raw_size, stored_size
FROM checkpoints
WHERE run_id = $1 AND ($2::bigint IS NULL OR seq < $2)
ORDER BY seq DESC
LIMIT $3
"""

_RUN_COLUMNS = """run_id, tenant_id, flow_id, status, latest_seq, created_at, updated_at,
pending_inputs, epoch, claimed_by, lease_expires_at, claimed_seq,
(claimed_by IS NOT NULL AND lease_expires_at > now()) AS live_claim"""

_GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = $1"

# A live claim by another worker blocks; the same worker keeps its epoch and gets a
# longer lease; anything else (no claim, lapsed lease) bumps the epoch.
_CLAIM = """
UPDATE runs r
SET epoch = CASE WHEN r.claimed_by = $2 AND r.lease_expires_at > now()
                 THEN r.epoch ELSE r.epoch + 1 END,
    claimed_by = $2,
    lease_expires_at = now() + $3::interval,
    claimed_seq = r.latest_seq
WHERE r.run_id = $1
  AND (r.claimed_by IS NULL OR r.lease_expires_at <= now() OR r.claimed_by = $2)
RETURNING r.epoch, r.lease_expires_at, r.claimed_seq
"""

# A lapsed lease nobody took over can still be renewed: the epoch is what fences.
_RENEW = """
UPDATE runs SET lease_expires_at = now() + $4::interval
WHERE run_id = $1 AND claimed_by = $2 AND epoch = $3
RETURNING epoch, lease_expires_at, claimed_seq
"""

_RELEASE = """
UPDATE runs SET claimed_by = NULL, lease_expires_at = NULL, claimed_seq = NULL
WHERE run_id = $1 AND epoch = $3 AND (claimed_by IS NULL OR claimed_by = $2)
RETURNING 1
"""

_CLAIM_STATE = "SELECT epoch, claimed_by, lease_expires_at FROM runs WHERE run_id = $1"

_SUBMIT_INPUT = """
INSERT INTO human_inputs (run_id, path, answer)
SELECT $1::text, $2::text, $3::json
WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = $1)
ON CONFLICT (run_id, path) DO NOTHING
RETURNING submitted_at
"""

_LIST_INPUTS = """
SELECT path, answer, submitted_at, consumed_at IS NOT NULL AS consumed
FROM human_inputs
WHERE run_id = $1 AND ($2 OR consumed_at IS NULL)
ORDER BY submitted_at, path
"""

_CONSUME_INPUTS = """
UPDATE human_inputs SET consumed_at = now()
WHERE run_id = $1 AND path = ANY ($2::text[]) AND consumed_at IS NULL
RETURNING path
"""

_DELETE_RUN = """
WITH c AS (DELETE FROM checkpoints WHERE run_id = $1 RETURNING 1),
     h AS (DELETE FROM human_inputs WHERE run_id = $1 RETURNING 1),
     r AS (DELETE FROM runs WHERE run_id = $1 RETURNING 1)
SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM c) > 0
"""

# Latest, pending-input and live-claimed checkpoints are never removed.
_PRUNE = """
WITH r AS (
    SELECT latest_seq,
           CASE WHEN claimed_by IS NOT NULL AND lease_expires_at > now()
                THEN claimed_seq END AS live_seq
    FROM runs WHERE run_id = $1 FOR UPDATE
),
keep AS (SELECT seq FROM checkpoints WHERE run_id = $1 ORDER BY seq DESC LIMIT $2),
gone AS (
    DELETE FROM checkpoints c USING r
    WHERE c.run_id = $1
      AND c.seq NOT IN (SELECT seq FROM keep)
      AND c.seq <> r.latest_seq
      AND c.status <> 'pending_input'
      AND c.seq IS DISTINCT FROM r.live_seq
    RETURNING 1
)
SELECT count(*) FROM gone
"""

_EXPIRE = """
WITH victims AS (
    SELECT c.run_id, c.seq
    FROM checkpoints c
    JOIN runs r ON r.run_id = c.run_id
    WHERE c.created_at < $1
      AND c.seq <> r.latest_seq
      AND c.status <> 'pending_input'
      AND c.seq IS DISTINCT FROM (CASE WHEN r.claimed_by IS NOT NULL
                                            AND r.lease_expires_at > now()
                                       THEN r.claimed_seq END)
    LIMIT $2
),
gone AS (
    DELETE FROM checkpoints c USING victims v
    WHERE c.run_id = v.run_id AND c.seq = v.seq
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# Errors that mean "the server or the connection is gone": retry later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
)
# The server (or the driver) refuses a value of the record itself: a NUL character or a lone
# surrogate in the summary's text, a value out of range, a row over a size limit. Sending
# the same record again would fail the same way, so it is refused alone (see _put_chunk).
_REFUSALS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.exceptions._base.DataError,  # the driver's own: a value it cannot encode
)
# Raced with another transaction: running the same statement again is correct.
_RACES: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset`` hook that does nothing (see the module docstring)."""


class PostgresStore(BaseStore):
    """A :class:`~checkpoint.store.BaseStore` on PostgreSQL.

    ``dsn`` (``postgresql://user:pw@host:port/db``) or an existing asyncpg
    ``pool`` (not closed by :meth:`close`). The store connects on
    :meth:`open` or lazily on first use, and applies the schema migrations then
    unless ``migrate=False``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        command_timeout: float | None = 60.0,
    ) -> None:
        if dsn is None and pool is None:
            raise ConfigError("PostgresStore needs a dsn (postgresql://...) or a pool")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigError(f"need 0 <= min_size <= max_size, max_size >= 1: {min_size=}")
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.migrate = migrate
        self.command_timeout = command_timeout
        self._pool = pool
        self._owns_pool = pool is None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._migrated = False
        self._open_lock = rules.LoopLock()

    def __repr__(self) -> str:
        return f"PostgresStore(pool_size={self.min_size}..{self.max_size})"

    # -- connection management ------------------------------------------------------------

    async def open(self) -> PostgresStore:
        """Create the pool and apply migrations (if enabled). Idempotent."""
        await self._get_pool()
        return self

    async def _get_pool(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is not None and (not self._owns_pool or self._pool_loop is loop):
            if not self._migrated and self.migrate:
                await self._migrate(pool)
            return pool
        async with self._open_lock.get():
            if self._pool is not None and self._owns_pool and self._pool_loop is not loop:
                # A pool belongs to the loop that made it (run_sync callers use a new loop
                # per call): drop the old one without awaiting on a dead loop.
                with contextlib.suppress(Exception):
                    self._pool.terminate()
                self._pool = None
            if self._pool is None:
                self._pool = await self._create_pool()
                self._pool_loop = loop
            if not self._migrated and self.migrate:
                await self._migrate(self._pool)
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                reset=_keep_session,
                command_timeout=self.command_timeout,
                server_settings={"application_name": "flowpoint"},
            )
        except (ValueError, asyncpg.ClientConfigurationError) as exc:
            raise ConfigError(f"invalid PostgreSQL DSN: {exc}") from exc
        except (*_UNAVAILABLE, asyncpg.InvalidPasswordError) as exc:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreUnavailableError(f"PostgreSQL refused the connection: {exc}") from exc
        assert pool is not None
        return pool

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with self._guard("migrate"), pool.acquire() as conn:
            await apply_migrations(conn)
        self._migrated = True

    async def close(self) -> None:
        """Close the pool (when this store created it). Safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is None or not self._owns_pool:
            return
        if self._pool_loop is not asyncio.get_running_loop():
            # Its loop is gone or elsewhere: nothing to await on; drop the connections.
            with contextlib.suppress(Exception):
                pool.terminate()
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except _UNAVAILABLE:
            pool.terminate()

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the database answers ``SELECT 1``."""
        await self._run("ping", lambda c: c.fetchval("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except FlowpointError:
            raise
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"PostgreSQL is unavailable ({what}): {type(exc).__name__}: {exc}"
            ) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL failed ({what}): {type(exc).__name__}: {exc}") from exc

    async def _run(
        self,
        what: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        """Run ``fn`` on a pooled connection, mapping errors to Flowpoint's.

        With ``retry``, a lost connection or a lost race is retried (the operation
        must be safe to repeat); without it only races are, which roll back entirely.
        """

        def transient(exc: BaseException) -> bool:
            # _guard has already mapped the driver's error: judge by what it wrapped.
            cause = exc.__cause__ if isinstance(exc, StoreError) else exc
            return isinstance(cause, _RACES) or (retry and isinstance(cause, _UNAVAILABLE))

        pool = await self._get_pool()
        # The first try runs without tenacity (its machinery costs ~30 us a call, a fifth
        # of a small write); only a transient failure enters the retry loop.
        try:
            async with self._guard(what), pool.acquire() as conn:
                return await fn(conn)
        except BaseException as exc:
            if not transient(exc):  # what the retry loop below would decide
                raise
            failed: BaseException | None = exc
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wait_random(0.01, 0.05),
            retry=retry_if_exception(transient),
            reraise=True,
        ):
            with attempt:
                if failed is not None:  # the first try above is the loop's attempt 1
                    first, failed = failed, None
                    raise first
                async with self._guard(what), pool.acquire() as conn:
                    return await fn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes ---------------------------------------------------------------------------

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        [result] = await self.put_sealed_many([(record, epoch)])
        if isinstance(result, FlowpointError):
            raise result
        return result

    async def put_sealed_many(
        self, items: Sequence[tuple[SealedCheckpoint, int]]
    ) -> list[PutOutcome | FlowpointError]:
        """Write many records (each with its claim epoch) in one transaction.

        Returns, per item and in order, ``"stored"``, ``"duplicate"`` or the
        error refusing it (:class:`SeqConflictError`, :class:`StaleEpochError`,
        :class:`TenantMismatchError`, :class:`InvalidIdError`,
        :class:`CheckpointRefusedError` for a value PostgreSQL cannot hold); a
        refused item does not fail the others. Several items with the same ``(run_id, seq)``
        are fine: the first is stored, the rest are duplicates or conflicts.
        Raises :class:`StoreUnavailableError` / :class:`StoreError` when the
        batch could not be committed (nothing of it was).

        One round trip and one commit per call. Only a batch whose payloads add
        up to more than 256 MiB is split into several transactions (PostgreSQL
        caps one parameter at 1 GiB); each item's outcome is the same either way.
        A batch PostgreSQL refuses for a value of one record is halved until that
        record stands alone (a few more round trips, only then). A batch is
        retried once on a lost connection, so an item stored by the
        lost attempt may be reported ``"duplicate"``.
        """
        results: list[PutOutcome | FlowpointError | None] = [None] * len(items)
        chunk: list[int] = []
        chunk_bytes = 0
        for index, (record, epoch) in enumerate(items):
            try:
                _validate_put(record, epoch)
            except FlowpointError as exc:
                results[index] = exc
                continue
            if chunk and chunk_bytes + len(record.blob) > _MAX_BATCH_BYTES:
                await self._put_chunk(items, chunk, results)
                chunk, chunk_bytes = [], 0
            chunk.append(index)
            chunk_bytes += len(record.blob)
        if chunk:
            await self._put_chunk(items, chunk, results)
        if any(r is None for r in results):  # pragma: no cover - the function answers all
            raise StoreError("flowpoint_put_batch returned fewer outcomes than items")
        return [r for r in results if r is not None]

    async def _put_chunk(
        self,
        items: Sequence[tuple[SealedCheckpoint, int]],
        positions: list[int],
        results: list[PutOutcome | FlowpointError | None],
    ) -> None:
        try:
            if len(positions) == 1:
                await self._put_one(items, positions[0], results)
            else:
                await self._put_many(items, positions, results)
        except StoreError as exc:
            if not isinstance(exc.__cause__, _REFUSALS):
                raise
            if len(positions) == 1:
                record = items[positions[0]][0]
                results[positions[0]] = CheckpointRefusedError(
                    f"PostgreSQL cannot store checkpoint {record.run_id}#{record.seq}: "
                    f"{_first_line(exc.__cause__)} (look for a NUL character or a lone "
                    "surrogate in a node id or an input path); the rest of its batch is stored"
                )
                return
            # One record must not fail the others: halve the batch until it stands alone.
            # The halves commit in order, so a run's checkpoints still land in seq order.
            half = len(positions) // 2
            await self._put_chunk(items, positions[:half], results)
            await self._put_chunk(items, positions[half:], results)

    async def _put_many(
        self,
        items: Sequence[tuple[SealedCheckpoint, int]],
        positions: list[int],
        results: list[PutOutcome | FlowpointError | None],
    ) -> None:
        batch = [items[i] for i in positions]
        columns: list[list[Any]] = [
            [r.run_id for r, _ in batch],
            [r.seq for r, _ in batch],
            [r.tenant_id for r, _ in batch],
            [r.flow_id for r, _ in batch],
            [_check_status(r.status) for r, _ in batch],
            [r.schema_version for r, _ in batch],
            [r.sha256 for r, _ in batch],
            [r.raw_size for r, _ in batch],
            [r.blob for r, _ in batch],
            [json.dumps(r.summary, separators=(",", ":")) for r, _ in batch],
            [r.trace_id for r, _ in batch],
            [r.created_at for r, _ in batch],
            [e for _, e in batch],
        ]
        rows = await self._run("put", lambda c: c.fetch(_PUT_BATCH, *columns))
        for row in rows:
            index = positions[row["ord"] - 1]
            record, epoch = items[index]
            results[index] = _outcome(row["outcome"], record, epoch, row["current_epoch"])

    async def _put_one(
        self,
        items: Sequence[tuple[SealedCheckpoint, int]],
        index: int,
        results: list[PutOutcome | FlowpointError | None],
    ) -> None:
        record, epoch = items[index]
        args = (
            record.run_id,
            record.seq,
            record.tenant_id,
            record.flow_id,
            _check_status(record.status),
            record.schema_version,
            record.sha256,
            record.raw_size,
            record.blob,
            json.dumps(record.summary, separators=(",", ":")),
            record.trace_id,
            record.created_at,
            epoch,
        )
        row = await self._run("put", lambda c: c.fetchrow(_PUT_ONE, *args))
        if row is None:  # pragma: no cover - the function always answers one row
            raise StoreError("flowpoint_put_one returned no outcome")
        results[index] = _outcome(row["outcome"], record, epoch, row["current_epoch"])

    # -- reads ----------------------------------------------------------------------------

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        if seq is None:
            row = await self._run("get", lambda c: c.fetchrow(_GET_LATEST, run_id))
        else:
            seq = _check_seq(seq)
            row = await self._run("get", lambda c: c.fetchrow(_GET_SEQ, run_id, seq))
        if row is None:
            return None
        return SealedCheckpoint(
            tenant_id=row["tenant_id"],
            flow_id=row["flow_id"],
            run_id=row["run_id"],
            seq=row["seq"],
            status=CheckpointStatus(row["status"]),
            schema_version=row["schema_version"],
            sha256=row["sha256"],
            raw_size=row["raw_size"],
            blob=bytes(row["payload"]),
            created_at=row["created_at"],
            summary=json.loads(row["summary"]),
            trace_id=row["trace_id"],
        )

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        validate_id(run_id, "run_id")
        rules.validate_limit(limit)
        before = None if before_seq is None else _check_seq(before_seq)
        rows = await self._run(
            "list_checkpoints", lambda c: c.fetch(_LIST_CHECKPOINTS, run_id, before, limit)
        )
        return [
            CheckpointSummary(
                run_id=r["run_id"],
                seq=r["seq"],
                status=CheckpointStatus(r["status"]),
                created_at=r["created_at"],
                sha256=r["sha256"],
                raw_size=r["raw_size"],
                stored_size=r["stored_size"],
            )
            for r in rows
        ]

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        row = await self._run("get_run", lambda c: c.fetchrow(_GET_RUN, run_id))
        return None if row is None else _run_info(row)

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
        # One statement per filter combination, so each gets a plan that uses its index.
        where: list[str] = []
        args: list[Any] = []

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if tenant_id is not None:
            where.append(f"tenant_id = {param(validate_id(tenant_id, 'tenant_id'))}")
        if flow_id is not None:
            where.append(f"flow_id = {param(validate_id(flow_id, 'flow_id'))}")
        if status is not None:
            where.append(f"status = {param(_check_status(status))}")
        if cursor is not None:
            micros, after_run = rules.decode_cursor(cursor)
            where.append(
                f"(updated_at, run_id) < ({param(rules.from_micros(micros))}, {param(after_run)})"
            )
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY updated_at DESC, run_id DESC LIMIT {param(limit + 1)}"
        )
        rows = await self._run("list_runs", lambda c: c.fetch(sql, *args))
        runs = [_run_info(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = runs[-1]
            next_cursor = rules.encode_cursor(rules.to_micros(last.updated_at), last.run_id)
        return RunPage(runs=runs, next_cursor=next_cursor)

    # -- claims ---------------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = dt.timedelta(microseconds=rules.lease_micros(lease_seconds))

        async def do(conn: asyncpg.Connection) -> ClaimInfo:
            row = await conn.fetchrow(_CLAIM, run_id, worker_id, lease)
            if row is not None:
                return _claim_info(run_id, worker_id, row)
            state = await conn.fetchrow(_CLAIM_STATE, run_id)
            if state is None:
                raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
            until = state["lease_expires_at"]
            raise ClaimConflictError(
                f"run {run_id} is claimed by worker {state['claimed_by']}"
                + (f" until {until.isoformat()}" if until is not None else "")
            )

        # Safe to repeat: the same worker re-claiming keeps its epoch.
        return await self._run("claim", do)

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        epoch = _check_epoch(epoch)
        lease = dt.timedelta(microseconds=rules.lease_micros(lease_seconds))

        async def do(conn: asyncpg.Connection) -> ClaimInfo:
            row = await conn.fetchrow(_RENEW, run_id, worker_id, epoch, lease)
            if row is not None:
                return _claim_info(run_id, worker_id, row)
            await _raise_claim_refusal(conn, run_id, worker_id, epoch, renewing=True)
            raise AssertionError("unreachable")  # pragma: no cover

        return await self._run("renew", do)

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        epoch = _check_epoch(epoch)

        async def do(conn: asyncpg.Connection) -> None:
            if await conn.fetchval(_RELEASE, run_id, worker_id, epoch) is None:
                await _raise_claim_refusal(conn, run_id, worker_id, epoch, renewing=False)

        # Safe to repeat: releasing twice is a no-op.
        await self._run("release", do)

    # -- human input ----------------------------------------------------------------------

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        rules.validate_input_path(path)
        encoded = rules.encode_answer(answer)

        async def do(conn: asyncpg.Connection) -> InputRecord:
            try:
                submitted = await conn.fetchval(_SUBMIT_INPUT, run_id, path, encoded)
            except asyncpg.DataError as exc:
                raise InputValidationError(
                    f"the answer to {path!r} cannot be stored: {exc}"
                ) from exc
            if submitted is not None:
                # The answer as a later read returns it, never the caller's own object.
                return InputRecord(
                    run_id=run_id,
                    path=path,
                    answer=rules.decode_answer(encoded),
                    submitted_at=submitted,
                )
            if await conn.fetchval("SELECT 1 FROM runs WHERE run_id = $1", run_id) is None:
                raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
            raise InputConflictError(f"input {path!r} of run {run_id} was already answered")

        # Not repeated on a lost connection: a retry could report its own success as a conflict.
        return await self._run("submit_input", do, retry=False)

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        validate_id(run_id, "run_id")
        rows = await self._run(
            "list_inputs", lambda c: c.fetch(_LIST_INPUTS, run_id, bool(include_consumed))
        )
        return [
            InputRecord(
                run_id=run_id,
                path=r["path"],
                answer=rules.decode_answer(r["answer"]),
                submitted_at=r["submitted_at"],
                consumed=r["consumed"],
            )
            for r in rows
        ]

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        validate_id(run_id, "run_id")
        if isinstance(paths, str):
            raise InvalidIdError("consume_inputs takes a list of paths, not one string")
        wanted = list(dict.fromkeys(rules.validate_input_path(p) for p in paths))
        if not wanted:
            return []
        # Not repeated on a lost connection: the retry would find them consumed and say [].
        rows = await self._run(
            "consume_inputs", lambda c: c.fetch(_CONSUME_INPUTS, run_id, wanted), retry=False
        )
        got = {r["path"] for r in rows}
        return [p for p in wanted if p in got]

    # -- deletion and retention -----------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")

        async def do(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                # Lock the run first, so a concurrent put (which locks it too) cannot
                # leave a checkpoint behind that this snapshot would not see.
                await conn.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
                return bool(await conn.fetchval(_DELETE_RUN, run_id))

        return await self._run("delete_run", do)

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        keep = rules.validate_retention(max_checkpoints)
        count = await self._run("prune", lambda c: c.fetchval(_PRUNE, run_id, keep))
        return int(count)

    async def expire(self, older_than: dt.datetime) -> int:
        rules.to_micros(older_than)  # refuses naive datetimes like every store
        total = 0
        while True:
            # Small batches keep each transaction short on a big table.
            count = int(
                await self._run("expire", lambda c: c.fetchval(_EXPIRE, older_than, _EXPIRE_BATCH))
            )
            total += count
            if count < _EXPIRE_BATCH:
                return total


# -- helpers -------------------------------------------------------------------------------


def _check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidIdError(f"invalid seq {seq!r}: use an integer >= 0")
    return seq


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise StaleEpochError(f"invalid epoch {epoch!r}: use the integer a claim returned")
    return epoch


def _check_status(status: object) -> str:
    try:
        return CheckpointStatus(str(status)).value
    except ValueError as exc:
        allowed = ", ".join(s.value for s in CheckpointStatus)
        raise ConfigError(f"unknown status {status!r}: use one of {allowed}") from exc


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _validate_put(record: SealedCheckpoint, epoch: int) -> None:
    rules.validate_record(record)
    _check_epoch(epoch)
    _check_status(record.status)
    if record.created_at.tzinfo is None:
        raise ConfigError("checkpoint created_at must be timezone-aware")


def _outcome(
    outcome: str, record: SealedCheckpoint, epoch: int, current_epoch: int
) -> PutOutcome | FlowpointError:
    if outcome == "stored":
        return "stored"
    if outcome == "duplicate":
        return "duplicate"
    if outcome == "stale_epoch":
        return StaleEpochError(
            f"run {record.run_id} is at epoch {current_epoch}, this write carries epoch "
            f"{epoch}: another worker claimed the run, stop working on it"
        )
    if outcome == "tenant_mismatch":
        return TenantMismatchError(
            f"run {record.run_id} belongs to another tenant; a checkpoint of tenant "
            f"{record.tenant_id} cannot be written to it"
        )
    if outcome == "conflict":
        return SeqConflictError(
            f"checkpoint {record.run_id}#{record.seq} already exists with another checksum "
            f"than {record.sha256}: two writers produce this run"
        )
    return StoreError(f"unexpected put outcome {outcome!r} from the database")


def _claim_info(run_id: str, worker_id: str, row: asyncpg.Record) -> ClaimInfo:
    return ClaimInfo(
        run_id=run_id,
        worker_id=worker_id,
        epoch=row["epoch"],
        lease_expires_at=row["lease_expires_at"],
        seq=row["claimed_seq"],
    )


async def _raise_claim_refusal(
    conn: asyncpg.Connection, run_id: str, worker_id: str, epoch: int, *, renewing: bool
) -> None:
    """Explain why a renew/release matched nothing (read after the fact, so race-free)."""
    state = await conn.fetchrow(_CLAIM_STATE, run_id)
    if state is None:
        raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
    if state["epoch"] != epoch:
        raise StaleEpochError(
            f"run {run_id} is at epoch {state['epoch']}, not {epoch}: "
            "another worker claimed the run since"
        )
    holder = state["claimed_by"]
    if holder is None:
        if renewing:
            raise StaleEpochError(f"the claim on run {run_id} at epoch {epoch} was released")
        return  # released meanwhile: releasing is idempotent
    if holder != worker_id:
        raise ClaimConflictError(f"run {run_id} at epoch {epoch} is claimed by worker {holder}")
    if not renewing:
        return  # ours again: a concurrent release of ours won, nothing left to do
    raise StoreError(f"could not renew the claim on run {run_id}; retry")


def _run_info(row: asyncpg.Record) -> RunInfo:
    claim = None
    if row["live_claim"]:
        claim = ClaimInfo(
            run_id=row["run_id"],
            worker_id=row["claimed_by"],
            epoch=row["epoch"],
            lease_expires_at=row["lease_expires_at"],
            seq=row["claimed_seq"],
        )
    return RunInfo(
        run_id=row["run_id"],
        tenant_id=row["tenant_id"],
        flow_id=row["flow_id"],
        status=CheckpointStatus(row["status"]),
        latest_seq=row["latest_seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        pending_inputs=list(row["pending_inputs"]),
        epoch=row["epoch"],
        claim=claim,
    )
