"""A store in Redis (redis.asyncio): shared by every worker that reaches the server.

Keys, under ``prefix`` (default ``flowpoint:``)::

    run:<run_id>            hash  the run row (tenant, flow, status, latest seq, epoch, claim)
    blobs:<run_id>          hash  seq -> zstd blob
    meta:<run_id>           hash  seq -> JSON index fields (sha256, sizes, status, created_at...)
    seqs:<run_id>           zset  seq scored by seq
    inputs:<run_id>         hash  input path -> JSON answer record
    consumed:<run_id>       set   consumed input paths
    runs                    zset  run_id scored by updated_at (microseconds)
    runs:tenant:<tenant>    zset  the same, per tenant
    created                 zset  "<run_id>/<seq>" scored by the checkpoint's created_at

Every operation that reads and then writes (put with idempotency and fencing,
claim, renew, release, submit, consume, delete, prune, expire) is one Lua
script, so it is atomic on the server. Leases use the server's clock (``TIME``
inside the scripts), so workers with skewed clocks agree on who holds a run.
The scripts touch keys of several runs' global indexes: use a single Redis
server (or a primary with replicas), not Redis Cluster.

Durability is Redis's: with the default snapshotting an acknowledged
checkpoint can be lost on a server crash; run Redis with ``appendonly yes`` and
``appendfsync everysec`` (or ``always``) when that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from checkpoint.errors import (
    ClaimConflictError,
    CorruptCheckpointError,
    InputConflictError,
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
from checkpoint.stores.rules import RunRow

__all__ = ["RedisStore"]

# Times inside scripts are microseconds: TIME's seconds and micros joined as text, so no
# float formatting ever touches them; Lua doubles hold them exactly (< 2^53).
_NOW = """
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
"""

_PUT = (
    """
-- KEYS: run, blobs, meta, seqs, runs, tenant_runs, created
-- ARGV: run_id, seq, sha256, epoch, blob, meta_json, tenant, flow, status, pending_json, created_us
local run_tenant = redis.call('HGET', KEYS[1], 'tenant_id')
if run_tenant and run_tenant ~= ARGV[7] then
  return redis.error_reply('FP_TENANT ' .. run_tenant)
end
local existing = redis.call('HGET', KEYS[3], ARGV[2])
local existing_sha = false
if existing then existing_sha = cjson.decode(existing)['sha256'] end
if existing_sha == ARGV[3] then return 'duplicate' end
local epoch = 0
if run_tenant then epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch')) end
if tonumber(ARGV[4]) ~= epoch then
  return redis.error_reply('FP_STALE ' .. string.format('%d', epoch))
end
if existing then return redis.error_reply('FP_SEQ_CONFLICT ' .. tostring(existing_sha)) end
"""
    + _NOW
    + """
if not run_tenant then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'tenant_id', ARGV[7], 'flow_id', ARGV[8],
    'created_at', now, 'updated_at', now, 'epoch', '0', 'latest_seq', '-1')
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[11], ARGV[1] .. '/' .. ARGV[2])
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'latest_seq')) then
  redis.call('HSET', KEYS[1], 'latest_seq', ARGV[2], 'status', ARGV[9],
    'pending_inputs', ARGV[10])
end
local previous = redis.call('HGET', KEYS[1], 'updated_at')
if tonumber(now) < tonumber(previous) then now = previous end
redis.call('HSET', KEYS[1], 'updated_at', now)
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZADD', KEYS[6], now, ARGV[1])
return 'stored'
"""
)

_CLAIM = (
    """
-- KEYS: run; ARGV: worker, lease_us
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('FP_NOT_FOUND') end
"""
    + _NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'epoch', 'claim_worker', 'claim_expires', 'latest_seq')
local epoch = tonumber(f[1])
if f[2] and tonumber(f[3]) > tonumber(now) then
  if f[2] ~= ARGV[1] then return redis.error_reply('FP_CLAIMED ' .. f[2] .. ' ' .. f[3]) end
else
  epoch = epoch + 1
end
local expires = string.format('%d', tonumber(now) + tonumber(ARGV[2]))
local e = string.format('%d', epoch)
redis.call('HSET', KEYS[1], 'epoch', e, 'claim_worker', ARGV[1], 'claim_expires', expires,
  'claim_seq', f[4])
return {e, expires, f[4]}
"""
)

_RENEW = (
    """
-- KEYS: run; ARGV: worker, epoch, lease_us
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('FP_NOT_FOUND') end
local f = redis.call('HMGET', KEYS[1], 'epoch', 'claim_worker', 'claim_seq')
if tonumber(f[1]) ~= tonumber(ARGV[2]) then return redis.error_reply('FP_STALE ' .. f[1]) end
if not f[2] then return redis.error_reply('FP_RELEASED') end
if f[2] ~= ARGV[1] then return redis.error_reply('FP_CLAIMED ' .. f[2]) end
"""
    + _NOW
    + """
local expires = string.format('%d', tonumber(now) + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'claim_expires', expires)
return {f[1], expires, f[3]}
"""
)

_RELEASE = """
-- KEYS: run; ARGV: worker, epoch
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('FP_NOT_FOUND') end
local f = redis.call('HMGET', KEYS[1], 'epoch', 'claim_worker')
if tonumber(f[1]) ~= tonumber(ARGV[2]) then return redis.error_reply('FP_STALE ' .. f[1]) end
if f[2] and f[2] ~= ARGV[1] then return redis.error_reply('FP_CLAIMED ' .. f[2]) end
redis.call('HDEL', KEYS[1], 'claim_worker', 'claim_expires', 'claim_seq')
return 'ok'
"""

_SUBMIT = """
-- KEYS: run, inputs; ARGV: path, record_json
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('FP_NOT_FOUND') end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return redis.error_reply('FP_INPUT_EXISTS')
end
return 'ok'
"""

_CONSUME = """
-- KEYS: inputs, consumed; ARGV: paths
local out = {}
for _, p in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], p) == 1 and redis.call('SADD', KEYS[2], p) == 1 then
    table.insert(out, p)
  end
end
return out
"""

_DELETE = """
-- KEYS: run, blobs, meta, seqs, inputs, consumed, runs, created; ARGV: run_id, tenant_prefix
local existed = redis.call('EXISTS', KEYS[1], KEYS[4])
local tenant = redis.call('HGET', KEYS[1], 'tenant_id')
for _, s in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  redis.call('ZREM', KEYS[8], ARGV[1] .. '/' .. s)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], ARGV[1])
if tenant then redis.call('ZREM', ARGV[2] .. tenant, ARGV[1]) end
return existed
"""

_TRIM = (
    """
-- KEYS: run, blobs, meta, seqs, created; ARGV: run_id, keep ('' = any), cutoff_us ('' = any)
-- Mirrors checkpoint.stores.rules.retention_victims.
"""
    + _NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'claim_worker', 'claim_expires', 'claim_seq')
local claimed = false
if f[1] and tonumber(f[2]) > tonumber(now) then claimed = f[3] end
local keep = tonumber(ARGV[2])
local cutoff = tonumber(ARGV[3])
local removed = 0
for i, s in ipairs(redis.call('ZREVRANGE', KEYS[4], 0, -1)) do
  local drop = i > 1 and s ~= claimed and (keep == nil or i > keep)
  if drop then
    local raw = redis.call('HGET', KEYS[3], s)
    if not raw then
      drop = false
    else
      local m = cjson.decode(raw)
      if m['status'] == 'pending_input' then drop = false end
      if cutoff ~= nil and tonumber(m['created_us']) >= cutoff then drop = false end
    end
  end
  if drop then
    redis.call('HDEL', KEYS[2], s)
    redis.call('HDEL', KEYS[3], s)
    redis.call('ZREM', KEYS[4], s)
    redis.call('ZREM', KEYS[5], ARGV[1] .. '/' .. s)
    removed = removed + 1
  end
end
return removed
"""
)

_SCRIPTS = {
    "put": _PUT,
    "claim": _CLAIM,
    "renew": _RENEW,
    "release": _RELEASE,
    "submit": _SUBMIT,
    "consume": _CONSUME,
    "delete": _DELETE,
    "trim": _TRIM,
}


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _row_of(run_id: str, fields: dict[bytes, bytes]) -> RunRow:
    f = {k.decode(): v.decode("utf-8") for k, v in fields.items()}
    return RunRow(
        run_id=run_id,
        tenant_id=f["tenant_id"],
        flow_id=f["flow_id"],
        status=CheckpointStatus(f["status"]),
        latest_seq=int(f["latest_seq"]),
        pending_inputs=json.loads(f.get("pending_inputs", "[]")),
        created_at=int(f["created_at"]),
        updated_at=int(f["updated_at"]),
        epoch=int(f.get("epoch", "0")),
        claim_worker=f.get("claim_worker"),
        claim_expires=int(f["claim_expires"]) if "claim_expires" in f else None,
        claim_seq=int(f["claim_seq"]) if "claim_seq" in f else None,
    )


def _server_micros(time_reply: Sequence[int]) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1_000_000 + int(micros)


class RedisStore(BaseStore):
    """Checkpoints in the Redis server at ``url``, under keys starting with ``prefix``.

    Connections belong to the event loop that opened them: a store used from
    several loops in turn (``asyncio.run`` per call) should be closed at the end
    of each; it reconnects on next use.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "flowpoint:",
        socket_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing ------------------------------------------------------------------------

    def key(self, kind: str, run_id: str | None = None) -> str:
        """The Redis key of ``kind`` (``run``, ``blobs``, ``meta``...) for ``run_id``."""
        return f"{self.prefix}{kind}" if run_id is None else f"{self.prefix}{kind}:{run_id}"

    def _tenant_key(self, tenant_id: str) -> str:
        return f"{self.prefix}runs:tenant:{tenant_id}"

    def _client(self) -> aioredis.Redis:
        # A client's connections belong to the loop that opened them; run_sync callers
        # may bring a new loop, which gets its own client.
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            self._redis = aioredis.Redis.from_url(
                self.url,
                decode_responses=False,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
            self._scripts = {n: self._redis.register_script(s) for n, s in _SCRIPTS.items()}
            self._loop = loop
        return self._redis

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailableError(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis at {self.url} failed: {exc}") from exc

    async def _run(self, name: str, keys: list[str], args: list[Any], run_id: str) -> Any:
        """Run one of the Lua scripts; its ``FP_*`` error replies become domain errors."""
        self._client()
        try:
            return await self._scripts[name](keys=keys, args=args)
        except ResponseError as exc:
            code, _, detail = str(exc).partition(" ")
            if code.startswith("FP_"):
                raise self._domain_error(code, detail, run_id) from None
            raise StoreError(f"Redis at {self.url} failed: {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailableError(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis at {self.url} failed: {exc}") from exc

    @staticmethod
    def _domain_error(code: str, detail: str, run_id: str) -> Exception:
        if code == "FP_NOT_FOUND":
            return RunNotFoundError(f"run {run_id} has no checkpoint in this store")
        if code == "FP_STALE":
            return StaleEpochError(
                f"run {run_id} is at epoch {detail}: another worker claimed the run since, "
                "stop working on it"
            )
        if code == "FP_RELEASED":
            return StaleEpochError(f"the claim on run {run_id} was released")
        if code == "FP_CLAIMED":
            worker, _, until = detail.partition(" ")
            when = f" until {rules.from_micros(int(until)).isoformat()}" if until else ""
            return ClaimConflictError(f"run {run_id} is claimed by worker {worker}{when}")
        if code == "FP_SEQ_CONFLICT":
            return SeqConflictError(
                f"a checkpoint of run {run_id} with this seq already exists with checksum "
                f"{detail}: two writers produce this run"
            )
        if code == "FP_TENANT":
            return TenantMismatchError(f"run {run_id} belongs to another tenant")
        if code == "FP_INPUT_EXISTS":
            return InputConflictError(f"this input of run {run_id} was already answered")
        return StoreError(f"unexpected Redis script error {code} {detail}")

    def _run_keys(self, run_id: str) -> dict[str, str]:
        return {
            k: self.key(k, run_id) for k in ("run", "blobs", "meta", "seqs", "inputs", "consumed")
        }

    async def close(self) -> None:
        """Close the connection pool; the store reconnects if used again."""
        client, self._redis = self._redis, None
        if client is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    # -- put / get -----------------------------------------------------------------------

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        rules.validate_record(record)
        created_us = rules.to_micros(record.created_at)
        meta = {
            "tenant_id": record.tenant_id,
            "flow_id": record.flow_id,
            "run_id": record.run_id,
            "seq": record.seq,
            "status": str(record.status),
            "schema_version": record.schema_version,
            "sha256": record.sha256,
            "raw_size": record.raw_size,
            "stored_size": len(record.blob),
            "created_at": record.created_at.isoformat(),
            "created_us": created_us,
            "summary": record.summary,
            "trace_id": record.trace_id,
        }
        k = self._run_keys(record.run_id)
        result = await self._run(
            "put",
            [
                k["run"],
                k["blobs"],
                k["meta"],
                k["seqs"],
                self.key("runs"),
                self._tenant_key(record.tenant_id),
                self.key("created"),
            ],
            [
                record.run_id,
                str(record.seq),
                record.sha256,
                str(int(epoch)),
                record.blob,
                json.dumps(meta, separators=(",", ":")),
                record.tenant_id,
                record.flow_id,
                str(record.status),
                json.dumps(rules.pending_paths(record)),
                str(created_us),
            ],
            record.run_id,
        )
        return "duplicate" if _text(result) == "duplicate" else "stored"

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        validate_id(run_id, "run_id")
        client = self._client()
        with self._errors():
            if seq is None:
                latest = cast(list[bytes], await client.zrevrange(self.key("seqs", run_id), 0, 0))
                if not latest:
                    return None
                member = _text(latest[0]) or ""
            else:
                member = str(seq)
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(self.key("blobs", run_id), member)
                pipe.hget(self.key("meta", run_id), member)
                blob, meta = await pipe.execute()
        if blob is None and meta is None:
            return None
        if blob is None or meta is None:
            raise CorruptCheckpointError(
                f"checkpoint {run_id}#{member} is incomplete in Redis "
                f"({'payload' if blob is None else 'index fields'} missing)"
            )
        m = json.loads(meta)
        return SealedCheckpoint(
            tenant_id=m["tenant_id"],
            flow_id=m["flow_id"],
            run_id=m["run_id"],
            seq=int(m["seq"]),
            status=CheckpointStatus(m["status"]),
            schema_version=int(m["schema_version"]),
            sha256=m["sha256"],
            raw_size=int(m["raw_size"]),
            blob=bytes(blob),
            created_at=dt.datetime.fromisoformat(m["created_at"]),
            summary=m.get("summary") or {},
            trace_id=m.get("trace_id"),
        )

    # -- listings ------------------------------------------------------------------------

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        validate_id(run_id, "run_id")
        rules.validate_limit(limit)
        client = self._client()
        high = "+inf" if before_seq is None else f"({int(before_seq)}"
        with self._errors():
            seqs = cast(
                list[bytes],
                await client.zrevrangebyscore(
                    self.key("seqs", run_id), high, "-inf", start=0, num=limit
                ),
            )
            if not seqs:
                return []
            metas = await client.hmget(self.key("meta", run_id), seqs)
        out = []
        for raw in metas:
            if raw is None:  # pruned between the two reads
                continue
            m = json.loads(raw)
            out.append(
                CheckpointSummary(
                    run_id=run_id,
                    seq=int(m["seq"]),
                    status=CheckpointStatus(m["status"]),
                    created_at=dt.datetime.fromisoformat(m["created_at"]),
                    sha256=m["sha256"],
                    raw_size=int(m["raw_size"]),
                    stored_size=int(m["stored_size"]),
                )
            )
        return out

    async def get_run(self, run_id: str) -> RunInfo | None:
        validate_id(run_id, "run_id")
        client = self._client()
        with self._errors():
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.key("run", run_id))
                pipe.time()
                fields, now = await pipe.execute()
        if not fields:
            return None
        return _row_of(run_id, fields).to_info(_server_micros(now))

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
        after = rules.decode_cursor(cursor) if cursor is not None else None
        index = self.key("runs") if tenant_id is None else self._tenant_key(tenant_id)
        high = "+inf" if after is None else str(after[0])
        batch = max(limit + 1, 100)
        client = self._client()
        found: list[RunRow] = []
        offset = 0
        with self._errors():
            now = _server_micros(await client.time())
            while len(found) <= limit:
                members = cast(
                    list[tuple[bytes, float]],
                    await client.zrevrangebyscore(
                        index, high, "-inf", start=offset, num=batch, withscores=True
                    ),
                )
                offset += len(members)
                candidates = []
                for member, score in members:
                    run_id = _text(member) or ""
                    if after is not None and (int(score), run_id) >= after:
                        continue
                    candidates.append(run_id)
                if candidates:
                    async with client.pipeline(transaction=False) as pipe:
                        for run_id in candidates:
                            pipe.hgetall(self.key("run", run_id))
                        rows = await pipe.execute()
                    for run_id, fields in zip(candidates, rows, strict=True):
                        if not fields:
                            continue  # deleted meanwhile
                        row = _row_of(run_id, fields)
                        if (
                            (flow_id is None or row.flow_id == flow_id)
                            and (status is None or row.status == status)
                            and (tenant_id is None or row.tenant_id == tenant_id)
                        ):
                            found.append(row)
                if len(members) < batch:
                    break
        # the index scores and the rows are read at different moments: order by the rows
        found.sort(key=lambda r: (r.updated_at, r.run_id), reverse=True)
        page = found[:limit]
        next_cursor = (
            rules.encode_cursor(page[-1].updated_at, page[-1].run_id)
            if len(found) > limit
            else None
        )
        return RunPage(runs=[r.to_info(now) for r in page], next_cursor=next_cursor)

    # -- claims --------------------------------------------------------------------------

    @staticmethod
    def _claim_info(run_id: str, worker_id: str, reply: Sequence[bytes]) -> ClaimInfo:
        epoch, expires, seq = (_text(v) for v in reply)
        return ClaimInfo(
            run_id=run_id,
            worker_id=worker_id,
            epoch=int(epoch or 0),
            lease_expires_at=rules.from_micros(int(expires or 0)),
            seq=int(seq) if seq is not None else None,
        )

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        reply = await self._run("claim", [self.key("run", run_id)], [worker_id, str(lease)], run_id)
        return self._claim_info(run_id, worker_id, reply)

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        lease = rules.lease_micros(lease_seconds)
        reply = await self._run(
            "renew", [self.key("run", run_id)], [worker_id, str(int(epoch)), str(lease)], run_id
        )
        return self._claim_info(run_id, worker_id, reply)

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        validate_id(run_id, "run_id")
        validate_id(worker_id, "worker_id")
        await self._run("release", [self.key("run", run_id)], [worker_id, str(int(epoch))], run_id)

    # -- human input ---------------------------------------------------------------------

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        validate_id(run_id, "run_id")
        rules.validate_input_path(path)
        submitted = rules.now_micros()
        doc = {"answer": rules.encode_answer(answer), "submitted_at": submitted}
        try:
            await self._run(
                "submit",
                [self.key("run", run_id), self.key("inputs", run_id)],
                [path, json.dumps(doc)],
                run_id,
            )
        except InputConflictError:
            raise InputConflictError(
                f"input {path!r} of run {run_id} was already answered"
            ) from None
        return InputRecord(
            run_id=run_id,
            path=path,
            answer=rules.decode_answer(doc["answer"]),  # type: ignore[arg-type]
            submitted_at=rules.from_micros(submitted),
        )

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        validate_id(run_id, "run_id")
        client = self._client()
        with self._errors():
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.key("inputs", run_id))
                pipe.smembers(self.key("consumed", run_id))
                entries, consumed_raw = await pipe.execute()
        consumed = {_text(p) for p in consumed_raw}
        records = []
        for raw_path, raw_doc in entries.items():
            path = _text(raw_path) or ""
            if path in consumed and not include_consumed:
                continue
            doc = json.loads(raw_doc)
            records.append(
                InputRecord(
                    run_id=run_id,
                    path=path,
                    answer=rules.decode_answer(doc["answer"]),
                    submitted_at=rules.from_micros(int(doc["submitted_at"])),
                    consumed=path in consumed,
                )
            )
        records.sort(key=lambda r: (r.submitted_at, r.path))
        return records

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        validate_id(run_id, "run_id")
        wanted = list(dict.fromkeys(rules.validate_input_path(p) for p in paths))
        if not wanted:
            return []
        reply = await self._run(
            "consume",
            [self.key("inputs", run_id), self.key("consumed", run_id)],
            wanted,
            run_id,
        )
        return [_text(p) or "" for p in reply]

    # -- deletion and retention ------------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        validate_id(run_id, "run_id")
        k = self._run_keys(run_id)
        existed = await self._run(
            "delete",
            [
                k["run"],
                k["blobs"],
                k["meta"],
                k["seqs"],
                k["inputs"],
                k["consumed"],
                self.key("runs"),
                self.key("created"),
            ],
            [run_id, f"{self.prefix}runs:tenant:"],
            run_id,
        )
        return int(existed) > 0

    async def _trim(self, run_id: str, keep: int | None, cutoff: int | None) -> int:
        k = self._run_keys(run_id)
        removed = await self._run(
            "trim",
            [k["run"], k["blobs"], k["meta"], k["seqs"], self.key("created")],
            [run_id, "" if keep is None else str(keep), "" if cutoff is None else str(cutoff)],
            run_id,
        )
        return int(removed)

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        validate_id(run_id, "run_id")
        keep = rules.validate_retention(max_checkpoints)
        return await self._trim(run_id, keep, None)

    async def expire(self, older_than: dt.datetime) -> int:
        cutoff = rules.to_micros(older_than)
        client = self._client()
        with self._errors():
            members = cast(
                list[bytes],
                await client.zrangebyscore(self.key("created"), "-inf", f"({cutoff}"),
            )
        run_ids = dict.fromkeys((_text(m) or "").rpartition("/")[0] for m in members)
        removed = 0
        for run_id in run_ids:
            if run_id:
                removed += await self._trim(run_id, None, cutoff)
        return removed
