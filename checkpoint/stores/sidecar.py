"""SidecarStore: checkpoints written as OTLP spans to the sidecar, read over its HTTP API.

Writes go through :class:`instrumentation.emitter.CheckpointEmitter` (one acknowledged
``checkpoint.save`` span per checkpoint, with an optional outbox that survives a crash of
this process); everything else uses the sidecar's resume API under ``/v1/runs``. The store
holds no state of its own: it passes the conformance suite because the sidecar's store
does, and it maps every HTTP answer back to the exceptions of :mod:`checkpoint.errors`.

Reads are verified end to end: the sidecar sends the canonical bytes it stored, and this
store checks their SHA-256 again before parsing them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from checkpoint import codec
from checkpoint.errors import (
    ERROR_TYPES,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CodecError,
    ConfigError,
    CorruptCheckpointError,
    FlowpointError,
    InvalidIdError,
    PayloadTooLargeError,
    RunNotFoundError,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
    TenantMismatchError,
)
from checkpoint.ids import validate_id
from checkpoint.models import (
    CheckpointStatus,
    FlowCheckpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
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
from checkpoint.stores.rules import validate_input_path, validate_limit, validate_retention

__all__ = ["OUTCOME_HEADER", "SidecarStore"]

OUTCOME_HEADER: Final = "Flowpoint-Outcome"
_PAGE_MAX: Final = 1000
_RETRIES: Final = 3


class _Retryable(Exception):
    """A read that may succeed when repeated (connection error, 502/503/504)."""

    def __init__(self, error: FlowpointError) -> None:
        super().__init__(str(error))
        self.error = error


def _error_from(status: int, body: Any, what: str) -> FlowpointError:
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or body or f"HTTP {status}")
    cls = ERROR_TYPES.get(str(code)) if code is not None else None
    if cls is not None:
        return cls(text)
    if status in (502, 503, 504):
        return StoreUnavailableError(f"sidecar unavailable during {what}: {text}")
    if status in (401, 403):
        return StoreError(f"the sidecar refused the token during {what}: {text}")
    if status == 404:
        return RunNotFoundError(text)
    return StoreError(f"sidecar answered {status} to {what}: {text}")


def _aware(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise StoreError(f"the sidecar sent a naive timestamp {value!r}")
    return parsed.astimezone(dt.UTC)


def _claim(run_id: str, doc: Mapping[str, Any]) -> ClaimInfo:
    return ClaimInfo(
        run_id=str(doc.get("run_id", run_id)),
        worker_id=str(doc["worker_id"]),
        epoch=int(doc["epoch"]),
        lease_expires_at=_aware(str(doc["lease_expires_at"])),
        seq=None if doc.get("seq") is None else int(doc["seq"]),
    )


def _run_info(doc: Mapping[str, Any], pending_paths: list[str]) -> RunInfo:
    run_id = str(doc["run_id"])
    claim = doc.get("claim")
    return RunInfo(
        run_id=run_id,
        tenant_id=str(doc["tenant_id"]),
        flow_id=str(doc["flow_id"]),
        status=CheckpointStatus(doc["status"]),
        latest_seq=int(doc["latest_seq"]),
        created_at=_aware(str(doc["created_at"])),
        updated_at=_aware(str(doc["updated_at"])),
        pending_inputs=pending_paths,
        epoch=int(doc.get("epoch", 0)),
        claim=_claim(run_id, claim) if claim else None,
    )


def _matching(cp: FlowCheckpoint, run_id: str, seq: int | None) -> FlowCheckpoint:
    if cp.run_id != run_id or (seq is not None and cp.seq != seq):
        asked = f"{run_id}#{'latest' if seq is None else seq}"
        raise CorruptCheckpointError(
            f"the sidecar answered {asked} with a checkpoint that holds {cp.run_id}#{cp.seq}"
        )
    return cp


def _check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidIdError(f"invalid seq {seq!r}: use an integer >= 0")
    return seq


class SidecarStore(BaseStore):
    """A store served by a Flowpoint sidecar (``flowpoint serve``) on local HTTP.

    ``url`` is the sidecar's base URL; ``token`` its bearer token when it has tokens
    configured; ``outbox_dir`` keeps unacknowledged checkpoints on disk so a crash of this
    process loses none (replayed by ``replay_outbox()``); ``timeout`` bounds each request;
    ``max_retry_seconds`` bounds how long a write retries while the sidecar answers
    "not durable yet" (503) or cannot be reached.

    >>> store = SidecarStore("http://127.0.0.1:4318")
    >>> store.url
    'http://127.0.0.1:4318'
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:4318",
        token: str | None = None,
        outbox_dir: str | Path | None = None,
        timeout: float = 10.0,
        *,
        max_retry_seconds: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"sidecar url must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.outbox_dir = Path(outbox_dir) if outbox_dir is not None else None
        self.timeout = timeout
        self.max_retry_seconds = max_retry_seconds
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._emitter: Any = None
        self._emitter_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"SidecarStore({self.url!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _client(self) -> aiohttp.ClientSession:
        # A session belongs to one event loop; run_sync callers may bring a new loop per call.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self._headers(),
                raise_for_status=False,
            )
            self._session_loop = loop
        return self._session

    def _get_emitter(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._emitter is None or self._emitter_loop is not loop:
            from instrumentation.emitter import CheckpointEmitter

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._emitter = CheckpointEmitter(
                endpoint=f"{self.url}/v1/traces",
                headers=headers,
                timeout=self.timeout,
                outbox_dir=self.outbox_dir,
                max_retry_seconds=self.max_retry_seconds,
            )
            self._emitter_loop = loop
        return self._emitter

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        raw_body: bool = False,
    ) -> tuple[int, Any]:
        """Send one request; return ``(status, parsed JSON or None)`` for ``ok`` statuses.

        With ``raw_body`` the body of an ``ok`` answer is returned as bytes, unparsed.

        Idempotent requests (GET, DELETE) are retried on connection errors and 502/503/504.
        Any other answer is raised as the matching :mod:`checkpoint.errors` exception.
        """
        idempotent = method in ("GET", "DELETE")
        attempts = _RETRIES if idempotent else 1
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    return await self._send(
                        method, path, what, params, body, ok, idempotent, raw_body
                    )
        except _Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        what: str,
        params: Mapping[str, str | int] | None,
        body: Any,
        ok: tuple[int, ...],
        idempotent: bool,
        raw_body: bool = False,
    ) -> tuple[int, Any]:
        data = codec.canonical_json(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._client().request(
                method,
                f"{self.url}{path}",
                params={k: str(v) for k, v in (params or {}).items()},
                data=data,
                headers=headers,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = StoreUnavailableError(
                f"cannot reach the sidecar at {self.url} during {what}: {type(exc).__name__}: {exc}"
            )
            if idempotent:
                raise _Retryable(error) from exc
            raise error from exc
        if raw_body and status in ok:
            return status, raw
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")[:500]
        if status in ok:
            return status, parsed
        refusal = _error_from(status, parsed, what)
        if idempotent and status in (502, 503, 504):
            raise _Retryable(refusal)
        raise refusal

    @staticmethod
    def _run_path(run_id: str, *rest: str) -> str:
        return "/v1/runs/" + quote(validate_id(run_id, "run_id"), safe="") + "".join(rest)

    # -- writes -----------------------------------------------------------------------------

    async def put(self, cp: FlowCheckpoint, *, epoch: int = 0) -> PutOutcome:
        """Send ``cp`` as a checkpoint span; ``"stored"`` or ``"duplicate"`` once durable."""
        for name in ("tenant_id", "flow_id", "run_id"):
            validate_id(getattr(cp, name), name)
        _check_seq(cp.seq)
        if cp.created_at.tzinfo is None:
            raise CodecError("created_at must be timezone-aware")
        raw = checkpoint_to_bytes(cp)
        return await self._emit(
            tenant_id=cp.tenant_id,
            flow_id=cp.flow_id,
            run_id=cp.run_id,
            seq=cp.seq,
            status=str(cp.status),
            schema_version=cp.schema_version,
            raw=raw,
            sha256=codec.sha256_hex(raw),
            epoch=epoch,
        )

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome:
        """Send an already sealed record (decompressed and verified first)."""
        for name in ("tenant_id", "flow_id", "run_id"):
            validate_id(getattr(record, name), name)
        _check_seq(record.seq)
        raw = self.open_raw(record)
        return await self._emit(
            tenant_id=record.tenant_id,
            flow_id=record.flow_id,
            run_id=record.run_id,
            seq=record.seq,
            status=str(record.status),
            schema_version=record.schema_version,
            raw=raw,
            sha256=record.sha256,
            epoch=epoch,
        )

    async def _emit(
        self,
        *,
        tenant_id: str,
        flow_id: str,
        run_id: str,
        seq: int,
        status: str,
        schema_version: int,
        raw: bytes,
        sha256: str,
        epoch: int,
    ) -> PutOutcome:
        from instrumentation.errors import (
            EmitConflict,
            EmitError,
            EmitRejected,
            EmitUnauthorized,
            EmitUnavailable,
        )

        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        if len(raw) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"checkpoint {run_id}#{seq} is {len(raw)} bytes, over {self.max_payload_bytes}"
            )
        attributes: dict[str, str | int | bool] = {
            "flowpoint.tenant_id": tenant_id,
            "flowpoint.flow_id": flow_id,
            "flowpoint.run_id": run_id,
            "flowpoint.seq": seq,
            "flowpoint.status": status,
            "flowpoint.schema_version": schema_version,
            "flowpoint.epoch": epoch,
        }
        emitter = self._get_emitter()
        try:
            ack = await emitter.emit(attributes, raw, payload_sha256=sha256, key=f"{run_id}:{seq}")
        except EmitConflict as exc:
            raise self._mapped(exc, default=SeqConflictError) from exc
        except EmitUnauthorized as exc:
            raise StoreError(f"the sidecar refused the token: {exc}") from exc
        except EmitUnavailable as exc:
            raise StoreUnavailableError(f"sidecar unavailable for {run_id}#{seq}: {exc}") from exc
        except EmitRejected as exc:
            raise self._mapped(exc, default=CorruptCheckpointError) from exc
        except EmitError as exc:
            raise StoreError(f"sidecar refused {run_id}#{seq}: {exc}") from exc
        return _outcome_of(ack)

    @staticmethod
    def _mapped(exc: Exception, *, default: type[FlowpointError]) -> FlowpointError:
        """Pick the exception by the sidecar's ``error`` code, else by the message."""
        code = getattr(exc, "error", None) or getattr(exc, "code", None)
        message = str(getattr(exc, "message", None) or exc)
        body = getattr(exc, "body", None)
        if code is None and isinstance(body, (bytes, str)):
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                code = doc.get("error")
                message = str(doc.get("message") or message)
        if code is not None and str(code) in ERROR_TYPES:
            return ERROR_TYPES[str(code)](message)
        lowered = message.lower()
        for needle, cls in (
            ("epoch", StaleEpochError),
            ("tenant", TenantMismatchError),
            ("checksum", ChecksumMismatchError),
            ("invalid run_id", InvalidIdError),
            ("invalid tenant_id", InvalidIdError),
            ("invalid flow_id", InvalidIdError),
        ):
            if needle in lowered:
                return cls(message)
        return default(message)

    async def replay_outbox(self) -> int:
        """Re-send what an earlier process left unacknowledged in ``outbox_dir``."""
        result: int = await self._get_emitter().replay_outbox()
        return result

    # -- reads ------------------------------------------------------------------------------

    async def _fetch(self, run_id: str, seq: int | None) -> tuple[bytes, str] | None:
        """The verified canonical bytes and SHA-256 of a checkpoint, or None when absent."""
        suffix = "latest" if seq is None else str(_check_seq(seq))
        try:
            _, body = await self._request(
                "GET",
                self._run_path(run_id, "/checkpoints/", suffix),
                what="get checkpoint",
                raw_body=True,
            )
        except (RunNotFoundError, CheckpointNotFoundError):
            return None
        return _envelope_bytes(body, f"{run_id}#{suffix}")

    async def get(self, run_id: str, seq: int | None = None) -> FlowCheckpoint | None:
        """The checkpoint at ``seq`` (latest when None), verified here again; None if absent."""
        fetched = await self._fetch(validate_id(run_id, "run_id"), seq)
        if fetched is None:
            return None
        raw, _ = fetched
        if len(raw) > self.offload_bytes:
            cp = await asyncio.to_thread(checkpoint_from_bytes, raw)
        else:
            cp = checkpoint_from_bytes(raw)
        return _matching(cp, run_id, seq)

    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None:
        """The checkpoint as a storage record (fetched, verified, sealed locally)."""
        fetched = await self._fetch(validate_id(run_id, "run_id"), seq)
        if fetched is None:
            return None
        raw, sha = fetched
        return self.seal_raw(_matching(checkpoint_from_bytes(raw), run_id, seq), raw, sha)

    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]:
        """Checkpoint summaries, newest first; ``[]`` for an unknown run."""
        path = self._run_path(run_id, "/checkpoints")
        validate_limit(limit)
        cursor = None if before_seq is None else _check_seq(before_seq)
        out: list[CheckpointSummary] = []
        while len(out) < limit:
            params: dict[str, str | int] = {"limit": min(_PAGE_MAX, limit - len(out))}
            if cursor is not None:
                params["before_seq"] = cursor
            try:
                _, doc = await self._request("GET", path, what="list checkpoints", params=params)
            except RunNotFoundError:
                return []
            for item in doc["checkpoints"]:
                out.append(
                    CheckpointSummary(
                        run_id=str(item.get("run_id", run_id)),
                        seq=int(item["seq"]),
                        status=CheckpointStatus(item["status"]),
                        created_at=_aware(str(item["created_at"])),
                        sha256=str(item["sha256"]),
                        raw_size=int(item["raw_size"]),
                        stored_size=int(item["stored_size"]),
                    )
                )
            if doc.get("next_cursor") is None:
                break
            cursor = int(doc["next_cursor"])
        return out

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run's summary, or None when the sidecar does not know it."""
        try:
            _, doc = await self._request("GET", self._run_path(run_id), what="get run")
        except RunNotFoundError:
            return None
        return _run_info(doc, [str(p) for p in doc.get("pending_input_paths", [])])

    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first; ``next_cursor`` continues the listing."""
        validate_limit(limit)
        params: dict[str, str | int] = {}
        if flow_id is not None:
            params["flow_id"] = validate_id(flow_id, "flow_id")
        if status is not None:
            params["status"] = CheckpointStatus(status).value
        if tenant_id is not None:
            params["tenant_id"] = validate_id(tenant_id, "tenant_id")
        runs: list[RunInfo] = []
        next_cursor = cursor
        while True:
            page_params = dict(params, limit=min(_PAGE_MAX, limit - len(runs)))
            if next_cursor is not None:
                page_params["cursor"] = next_cursor
            _, doc = await self._request("GET", "/v1/runs", what="list runs", params=page_params)
            runs.extend(
                _run_info(r, [str(p) for p in r.get("pending_inputs", [])]) for r in doc["runs"]
            )
            next_cursor = doc.get("next_cursor")
            if next_cursor is None or len(runs) >= limit:
                break
        return RunPage(runs=runs, next_cursor=next_cursor)

    # -- claims -----------------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo:
        """Lease the run: :class:`ClaimConflictError` while another worker holds it."""
        path = self._run_path(run_id, "/claim")
        body = {"worker_id": validate_id(worker_id, "worker_id"), "lease_seconds": lease_seconds}
        _, doc = await self._request(
            "POST", path, what="claim", params={"include_checkpoint": "false"}, body=body
        )
        return _claim(run_id, doc)

    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo:
        """Extend a held claim; :class:`StaleEpochError` when it was lost."""
        path = self._run_path(run_id, "/claim/renew")
        body = {
            "worker_id": validate_id(worker_id, "worker_id"),
            "epoch": epoch,
            "lease_seconds": lease_seconds,
        }
        _, doc = await self._request("POST", path, what="renew", body=body)
        return _claim(run_id, doc)

    async def release(self, run_id: str, worker_id: str, epoch: int) -> None:
        """Give a claim up (releasing twice is harmless)."""
        path = self._run_path(run_id, "/claim/release")
        body = {"worker_id": validate_id(worker_id, "worker_id"), "epoch": epoch}
        await self._request("POST", path, what="release", body=body)

    # -- human input ------------------------------------------------------------------------

    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord:
        """Answer a pending input of the run (validated by the sidecar against its schema)."""
        url = self._run_path(run_id, "/inputs")
        body = {"path": validate_input_path(path), "answer": codec.to_jsonable(answer)}
        _, doc = await self._request("POST", url, what="submit input", body=body, ok=(202,))
        return InputRecord(
            run_id=run_id,
            path=str(doc["path"]),
            answer=answer,
            submitted_at=_aware(str(doc["submitted_at"])),
            consumed=False,
        )

    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]:
        """Submitted answers; ``[]`` for an unknown run."""
        url = self._run_path(run_id, "/inputs")
        params = {"include_consumed": "true" if include_consumed else "false"}
        try:
            _, doc = await self._request("GET", url, what="list inputs", params=params)
        except RunNotFoundError:
            return []
        return [
            InputRecord(
                run_id=str(item["run_id"]),
                path=str(item["path"]),
                answer=codec.from_jsonable(item["answer"]),
                submitted_at=_aware(str(item["submitted_at"])),
                consumed=bool(item["consumed"]),
            )
            for item in doc["inputs"]
        ]

    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]:
        """Mark answers consumed; returns only the paths this call consumed."""
        url = self._run_path(run_id, "/inputs/consume")
        checked = [validate_input_path(p) for p in paths]
        if not checked:
            return []
        try:
            _, doc = await self._request(
                "POST", url, what="consume inputs", body={"paths": checked}
            )
        except RunNotFoundError:
            return []
        return [str(p) for p in doc["consumed"]]

    # -- removal ------------------------------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run; False when it did not exist."""
        try:
            await self._request("DELETE", self._run_path(run_id), what="delete run", ok=(204,))
        except RunNotFoundError:
            return False
        return True

    async def prune(self, run_id: str, max_checkpoints: int) -> int:
        """Keep the newest ``max_checkpoints`` (never the latest, pending or claimed one)."""
        path = self._run_path(run_id, "/prune")
        body = {"max_checkpoints": validate_retention(max_checkpoints)}
        try:
            _, doc = await self._request("POST", path, what="prune", body=body)
        except RunNotFoundError:
            return 0
        return int(doc["removed"])

    async def expire(self, older_than: dt.datetime) -> int:
        """Remove checkpoints created before ``older_than`` (protected ones stay)."""
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ConfigError("older_than must be timezone-aware (use datetime.now(UTC))")
        body = {"older_than": older_than.astimezone(dt.UTC).isoformat()}
        _, doc = await self._request("POST", "/v1/maintenance/expire", what="expire", body=body)
        return int(doc["removed"])

    async def close(self) -> None:
        """Close the HTTP session and the emitter. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # created on a loop that is gone: nothing left to close
                pass
        emitter, self._emitter = self._emitter, None
        if emitter is not None:
            try:
                await emitter.aclose()
            except RuntimeError:
                pass


_CHECKPOINT_FIELD: Final = b',"checkpoint":'


def _envelope_bytes(body: bytes, what: str) -> tuple[bytes, str]:
    """Cut the checkpoint's canonical bytes out of an envelope and verify their SHA-256.

    The sidecar splices the stored bytes after a flat head (``run_id``, ``seq``, ``sha256``,
    ``status``: none can hold the marker), so they are taken as they are, without parsing
    and re-encoding a large document. Anything else (a proxy re-formatted the JSON) falls
    back to parsing and canonical re-encoding.
    """
    cut = body.find(_CHECKPOINT_FIELD)
    if cut > 0 and body.endswith(b"}"):
        try:
            head = json.loads(body[:cut] + b"}")
        except ValueError:
            head = None
        raw = body[cut + len(_CHECKPOINT_FIELD) : -1]
        if isinstance(head, dict) and codec.sha256_hex(raw) == head.get("sha256"):
            return raw, str(head["sha256"])
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise StoreError(f"the sidecar sent a checkpoint that is not JSON ({what}): {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoint"), dict):
        raise StoreError(f"the sidecar sent an envelope without a checkpoint ({what})")
    raw = codec.canonical_json(doc["checkpoint"])
    sha = str(doc.get("sha256", ""))
    actual = codec.sha256_hex(raw)
    if actual != sha:
        raise ChecksumMismatchError(
            f"checkpoint {what} from the sidecar hashes to {actual}, not {sha}: it was "
            "damaged in transit or storage and was not used"
        )
    return raw, sha


def _outcome_of(ack: Any) -> PutOutcome:
    """``"stored"`` or ``"duplicate"``, as the sidecar reported it in its answer."""
    headers = getattr(ack, "headers", None)
    if headers is not None:
        value = headers.get(OUTCOME_HEADER) or headers.get(OUTCOME_HEADER.lower())
        if value is not None:
            outcomes = {v.strip() for v in str(value).split(",")}
            # the emitter hands each ack its own checkpoint's outcome; "spooled" is durable
            # and new, so it counts as stored
            return "duplicate" if outcomes == {"duplicate"} else "stored"
    return "stored"
