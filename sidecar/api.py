"""The resume API: ``/v1/runs`` routes, the per-run SSE stream and maintenance routes.

``setup_api(app)`` registers everything on the sidecar's application. Handlers read the
store, metrics and event broker from the app (``sidecar.keys``). Every error is a JSON
``{"error": code, "message": text}`` with a fitting status: ids and parameters are
validated (400), bodies by pydantic (422), unknown runs are 404, and a corrupt stored
checkpoint is a 422 ``corrupt_checkpoint`` whose bad bytes are never sent.

Checkpoints are sent as the exact canonical bytes that were hashed at the source, spliced
into the envelope without re-encoding, so a client can verify ``sha256`` itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import jsonschema
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from pydantic import BaseModel, ValidationError

from checkpoint import codec
from checkpoint.errors import (
    CheckpointNotFoundError,
    CheckpointRefusedError,
    ClaimConflictError,
    CodecError,
    ConfigError,
    CorruptCheckpointError,
    EncryptionKeyMissingError,
    ErrorCode,
    FlowpointError,
    InputConflictError,
    InputValidationError,
    InvalidIdError,
    PayloadTooLargeError,
    RunNotFoundError,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
    TenantMismatchError,
    UnknownSchemaVersionError,
)
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus, FlowCheckpoint, checkpoint_from_bytes
from checkpoint.store import BaseStore, ClaimInfo, RunInfo, SealedCheckpoint
from sidecar import events as ev
from sidecar.events import Event, EventBroker, Subscription
from sidecar.keys import EVENTS_KEY, METRICS_KEY, STORE_KEY, TOKENS_KEY
from sidecar.schemas import (
    INT64_MAX,
    CheckpointItem,
    CheckpointList,
    ClaimRequest,
    ClaimView,
    ConsumeRequest,
    ConsumeResponse,
    ErrorBody,
    ExpireRequest,
    ExpireResponse,
    InputAccepted,
    InputItem,
    InputList,
    InputRequest,
    PruneRequest,
    PruneResponse,
    ReleaseRequest,
    ReleaseResponse,
    RenewRequest,
    RenewResponse,
    RunDetail,
    RunItem,
    RunList,
)

__all__ = [
    "API_ROUTES",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ApiError",
    "json_depth_exceeds",
    "setup_api",
    "tenant_of",
]

log = logging.getLogger("flowpoint.sidecar.api")

MAX_JSON_DEPTH: Final = 64
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100
DEFAULT_TENANT: Final = "default"
SSE_PING_SECONDS: Final = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answer: raised by handlers, turned into JSON by :func:`_json_errors`."""

    def __init__(
        self, status: int, error: ErrorCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return _error_response(self.status, self.error, self.message, self.headers)


def _error_response(
    status: int, error: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = ErrorBody(error=str(error), message=message).model_dump_json()
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


# Order matters: subclasses before their bases.
_ERROR_MAP: tuple[tuple[type[FlowpointError], int, ErrorCode], ...] = (
    (InvalidIdError, 400, ErrorCode.INVALID_ID),
    (InputValidationError, 422, ErrorCode.INPUT_VALIDATION),
    (PayloadTooLargeError, 413, ErrorCode.PAYLOAD_TOO_LARGE),
    (CodecError, 400, ErrorCode.INVALID_VALUE),
    (CheckpointRefusedError, 400, ErrorCode.REJECTED),
    (ConfigError, 400, ErrorCode.INVALID_PARAMETER),
    (RunNotFoundError, 404, ErrorCode.RUN_NOT_FOUND),
    (TenantMismatchError, 404, ErrorCode.RUN_NOT_FOUND),
    (CheckpointNotFoundError, 404, ErrorCode.CHECKPOINT_NOT_FOUND),
    (ClaimConflictError, 409, ErrorCode.CLAIM_CONFLICT),
    (StaleEpochError, 409, ErrorCode.STALE_EPOCH),
    (SeqConflictError, 409, ErrorCode.SEQ_CONFLICT),
    (InputConflictError, 409, ErrorCode.INPUT_CONFLICT),
    (EncryptionKeyMissingError, 422, ErrorCode.ENCRYPTION_KEY_MISSING),
    (CorruptCheckpointError, 422, ErrorCode.CORRUPT_CHECKPOINT),
    (UnknownSchemaVersionError, 422, ErrorCode.UNKNOWN_SCHEMA_VERSION),
    (StoreUnavailableError, 503, ErrorCode.STORE_UNAVAILABLE),
    (StoreError, 503, ErrorCode.STORE_ERROR),
)


def _flowpoint_error(exc: FlowpointError) -> ApiError:
    for cls, status, code in _ERROR_MAP:
        if isinstance(exc, cls):
            headers = {"Retry-After": "1"} if status == 503 else None
            return ApiError(status, code, str(exc), headers)
    return ApiError(500, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _json_errors(fn: Handler) -> Handler:
    """Turn every failure of ``fn`` into a JSON error answer (never a bare 500)."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except ApiError as exc:
            return exc.response()
        except FlowpointError as exc:
            return _flowpoint_error(exc).response()
        except web.HTTPException as exc:
            if exc.status == 413:
                return _error_response(
                    413, ErrorCode.PAYLOAD_TOO_LARGE, exc.text or "body too large"
                )
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return _error_response(
                500, ErrorCode.INTERNAL, "internal error in the sidecar; see its log for details"
            )

    return wrapper


# -- request helpers ----------------------------------------------------------------------


def _store(request: web.Request) -> BaseStore:
    return request.app[STORE_KEY]


def _broker(app: web.Application) -> EventBroker:
    broker = app.get(EVENTS_KEY)
    if broker is None:
        raise ApiError(503, ErrorCode.NOT_READY, "the event broker is not configured")
    return broker


def _metric(request: web.Request, name: str) -> Any:
    # The metrics object is owned by sidecar.metrics; a missing one (or metric) is no error.
    metrics = request.app.get(METRICS_KEY)
    return getattr(metrics, name, None) if metrics is not None else None


def _configured_tokens(request: web.Request) -> dict[str, str]:
    tokens = request.app.get(TOKENS_KEY)
    return dict(tokens) if tokens else {}


def tenant_of(request: web.Request) -> str:
    """The tenant a request acts for: its bearer token's tenant, else ``"default"``.

    With tokens configured, a missing or unknown token is a 401.
    """
    tokens = _configured_tokens(request)
    if not tokens:
        return DEFAULT_TENANT
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "this sidecar requires 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    token = token.strip()
    tenant: str | None = None
    # Compare against every token so the time taken does not tell which prefix matched.
    for known, known_tenant in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            tenant = known_tenant
    if tenant is None:
        raise ApiError(
            401, ErrorCode.UNAUTHORIZED, "unknown bearer token", {"WWW-Authenticate": "Bearer"}
        )
    return tenant


def _tenant_scope(request: web.Request) -> str | None:
    """The tenant whose runs are visible, or None when every run is (no tokens configured)."""
    if not _configured_tokens(request):
        return None
    return tenant_of(request)


def _run_id(request: web.Request) -> str:
    try:
        return validate_id(request.match_info["run_id"], "run_id")
    except InvalidIdError as exc:
        raise ApiError(400, ErrorCode.INVALID_ID, str(exc)) from None


def _int_param(
    request: web.Request, name: str, default: int | None, lo: int, hi: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, ErrorCode.INVALID_PARAMETER, f"{name} must be an integer, got {raw!r}"
        ) from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(400, ErrorCode.INVALID_PARAMETER, f"{name} must be {bounds}, got {value}")
    return value


def _limit(request: web.Request) -> int:
    value = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    assert value is not None
    return value


def _bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ApiError(400, ErrorCode.INVALID_PARAMETER, f"{name} must be true or false, got {raw!r}")


def json_depth_exceeds(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``doc`` nests objects/arrays deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def _body(request: web.Request, model: type[M]) -> M:
    """Read, bound and validate a JSON body into ``model``."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise ApiError(
            415,
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send application/json, not {request.content_type}",
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ApiError(
            400, ErrorCode.INVALID_JSON, f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:
        raise ApiError(400, ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}") from None
    if json_depth_exceeds(doc):
        raise ApiError(
            400, ErrorCode.INVALID_JSON, f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        # From the JSON text: strict models then take exactly the JSON types the schema names
        # (an RFC 3339 string for a date-time, an integer for an int).
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, ErrorCode.INVALID_REQUEST, _validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json(by_alias=True), content_type="application/json"
    )


def _json_bytes(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _not_found(run_id: str) -> ApiError:
    return ApiError(404, ErrorCode.RUN_NOT_FOUND, f"run {run_id!r} not found")


async def _visible_run(request: web.Request, run_id: str) -> RunInfo:
    """The run row, or 404 when absent or owned by another tenant."""
    run = await _store(request).get_run(run_id)
    scope = _tenant_scope(request)
    if run is None or (scope is not None and run.tenant_id != scope):
        raise _not_found(run_id)
    return run


async def _check_tenant(request: web.Request, run_id: str) -> None:
    """404 for another tenant's run; free when every run is visible."""
    if _tenant_scope(request) is not None:
        await _visible_run(request, run_id)


# -- checkpoint loading ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """A verified checkpoint: the record, its canonical bytes and the parsed model."""

    record: SealedCheckpoint
    raw: bytes
    checkpoint: FlowCheckpoint

    def envelope(self) -> bytes:
        """``{"run_id", "seq", "status", "sha256", "checkpoint"}`` with the raw bytes spliced."""
        head = codec.canonical_json(
            {
                "run_id": self.record.run_id,
                "seq": self.record.seq,
                "status": str(self.record.status),
                "sha256": self.record.sha256,
            }
        )
        return head[:-1] + b',"checkpoint":' + self.raw + b"}"


def _open(store: BaseStore, record: SealedCheckpoint) -> Loaded:
    try:
        # Decrypts (when encrypted at rest), decompresses and checks the SHA-256.
        raw = store.open_raw(record)
    except PayloadTooLargeError as exc:
        raise CorruptCheckpointError(str(exc)) from exc
    cp = checkpoint_from_bytes(raw)
    if cp.run_id != record.run_id or cp.seq != record.seq:
        raise CorruptCheckpointError(
            f"stored checkpoint {record.run_id}#{record.seq} holds {cp.run_id}#{cp.seq}: "
            "the row was copied or tampered with"
        )
    return Loaded(record=record, raw=raw, checkpoint=cp)


async def _load(request: web.Request, run_id: str, seq: int | None) -> Loaded:
    """The verified checkpoint at ``seq`` (latest when None); 404 when absent, 422 corrupt."""
    store = _store(request)
    record = await store.get_sealed(run_id, seq)
    scope = _tenant_scope(request)
    if record is None or (scope is not None and record.tenant_id != scope):
        await _visible_run(request, run_id)  # 404 run_not_found when absent or hidden
        which = "no checkpoint" if seq is None else f"no checkpoint with seq {seq}"
        raise ApiError(404, ErrorCode.CHECKPOINT_NOT_FOUND, f"run {run_id!r} has {which}")
    if record.raw_size > store.offload_bytes:
        return await asyncio.to_thread(_open, store, record)
    return _open(store, record)


def _corrupt_body(exc: FlowpointError) -> ErrorBody:
    api = _flowpoint_error(exc)
    return ErrorBody(error=api.error, message=api.message)


# -- runs ------------------------------------------------------------------------------------


def _claim_view(claim: ClaimInfo | None) -> ClaimView | None:
    if claim is None:
        return None
    return ClaimView(
        worker_id=claim.worker_id,
        epoch=claim.epoch,
        lease_expires_at=claim.lease_expires_at,
        seq=claim.seq,
    )


@_json_errors
async def list_runs(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs``: runs newest first, filtered by flow and status, paged by cursor."""
    scope = _tenant_scope(request)
    flow_id = request.query.get("flow_id") or None
    if flow_id is not None:
        validate_id(flow_id, "flow_id")
    tenant_id = request.query.get("tenant_id") or None
    if tenant_id is not None:
        validate_id(tenant_id, "tenant_id")
        if scope is not None and tenant_id != scope:
            raise ApiError(403, ErrorCode.FORBIDDEN, "a token may list only its own tenant's runs")
    raw_status = request.query.get("status") or None
    status: CheckpointStatus | None = None
    if raw_status is not None:
        try:
            status = CheckpointStatus(raw_status)
        except ValueError:
            allowed = ", ".join(s.value for s in CheckpointStatus)
            raise ApiError(
                400,
                ErrorCode.INVALID_PARAMETER,
                f"status must be one of {allowed}, got {raw_status!r}",
            ) from None
    cursor = request.query.get("cursor") or None
    try:
        page = await _store(request).list_runs(
            flow_id=flow_id,
            status=status,
            tenant_id=scope or tenant_id,
            limit=_limit(request),
            cursor=cursor,
        )
    except FlowpointError:
        raise
    except ValueError as exc:
        raise ApiError(400, ErrorCode.INVALID_CURSOR, f"cursor is not valid: {exc}") from None
    runs = [
        RunItem(
            run_id=r.run_id,
            flow_id=r.flow_id,
            status=r.status,
            latest_seq=r.latest_seq,
            updated_at=r.updated_at,
            tenant_id=r.tenant_id,
            created_at=r.created_at,
            pending_inputs=r.pending_inputs,
            epoch=r.epoch,
            claim=_claim_view(r.claim),
        )
        for r in page.runs
    ]
    return _json(RunList(runs=runs, next_cursor=page.next_cursor))


@_json_errors
async def get_run(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}``: summary with the latest checkpoint's pending inputs."""
    run_id = _run_id(request)
    run = await _visible_run(request, run_id)
    pending = []
    latest_error = None
    try:
        loaded = await _load(request, run_id, None)
        pending = loaded.checkpoint.pending_inputs
    except (CorruptCheckpointError, UnknownSchemaVersionError) as exc:
        latest_error = _corrupt_body(exc)
    except ApiError as exc:
        if exc.status != 404:  # deleted between the two reads: report what the row says
            raise
    detail = RunDetail(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        flow_id=run.flow_id,
        status=run.status,
        latest_seq=run.latest_seq,
        created_at=run.created_at,
        updated_at=run.updated_at,
        epoch=run.epoch,
        pending_inputs=pending,
        pending_input_paths=run.pending_inputs,
        claim=_claim_view(run.claim),
        latest_error=latest_error,
    )
    # mode="json" runs the codec on user values (metadata), by_alias writes "schema".
    return _json_bytes(
        codec.canonical_json(detail.model_dump(mode="json", by_alias=True)), status=200
    )


@_json_errors
async def delete_run(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/runs/{run_id}``: remove the run, its checkpoints and inputs."""
    run_id = _run_id(request)
    await _check_tenant(request, run_id)
    if not await _store(request).delete_run(run_id):
        raise _not_found(run_id)
    return web.Response(status=204)


# -- checkpoints ----------------------------------------------------------------------------


@_json_errors
async def list_checkpoints(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}/checkpoints``: newest first, paged by ``before_seq``."""
    run_id = _run_id(request)
    limit = _limit(request)
    before_seq = _int_param(request, "before_seq", None, 0, INT64_MAX)
    await _visible_run(request, run_id)
    rows = await _store(request).list_checkpoints(run_id, limit=limit + 1, before_seq=before_seq)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        CheckpointItem(
            seq=r.seq,
            status=r.status,
            created_at=r.created_at,
            raw_size=r.raw_size,
            stored_size=r.stored_size,
            sha256=r.sha256,
            run_id=r.run_id,
        )
        for r in rows
    ]
    next_cursor = str(rows[-1].seq) if more and rows else None
    return _json(CheckpointList(checkpoints=items, next_cursor=next_cursor))


def _observe_resume(request: web.Request, started: float) -> None:
    histogram = _metric(request, "resume_seconds")
    if histogram is not None:
        histogram.observe(time.perf_counter() - started)


@_json_errors
async def get_latest_checkpoint(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}/checkpoints/latest``: the verified latest checkpoint."""
    started = time.perf_counter()
    run_id = _run_id(request)
    loaded = await _load(request, run_id, None)
    _observe_resume(request, started)
    return _json_bytes(loaded.envelope())


@_json_errors
async def get_checkpoint(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}/checkpoints/{seq}``: one verified checkpoint."""
    started = time.perf_counter()
    run_id = _run_id(request)
    raw_seq = request.match_info["seq"]
    if not raw_seq.isdigit() or len(raw_seq) > 19:
        raise ApiError(
            400,
            ErrorCode.INVALID_PARAMETER,
            f"seq must be a non-negative integer or 'latest', got {raw_seq!r}",
        )
    seq = int(raw_seq)
    if seq > INT64_MAX:
        raise ApiError(
            400, ErrorCode.INVALID_PARAMETER, f"seq must be at most {INT64_MAX}, got {seq}"
        )
    loaded = await _load(request, run_id, seq)
    _observe_resume(request, started)
    return _json_bytes(loaded.envelope())


# -- claims ---------------------------------------------------------------------------------


def _claim_head(claim: ClaimInfo) -> dict[str, Any]:
    return {
        "run_id": claim.run_id,
        "worker_id": claim.worker_id,
        "epoch": claim.epoch,
        # Same form as the pydantic-made bodies: RFC 3339 in UTC with a "Z".
        "lease_expires_at": claim.lease_expires_at.astimezone(dt.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "seq": claim.seq,
    }


@_json_errors
async def claim_run(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/claim``: lease the run; 409 while another worker holds it."""
    started = time.perf_counter()
    run_id = _run_id(request)
    body = await _body(request, ClaimRequest)
    include = _bool_param(request, "include_checkpoint", True)
    await _check_tenant(request, run_id)
    try:
        claim = await _store(request).claim(run_id, body.worker_id, body.lease_seconds)
    except (ClaimConflictError, StaleEpochError):
        counter = _metric(request, "claim_conflicts_total")
        if counter is not None:
            counter.inc()
        raise
    head = _claim_head(claim)
    if not include:
        head["checkpoint"] = None
        return _json_bytes(codec.canonical_json(head))
    try:
        loaded = await _load(request, run_id, claim.seq)
    except (CorruptCheckpointError, UnknownSchemaVersionError) as exc:
        # The claim is held either way: the worker needs its epoch to release it.
        head["checkpoint"] = None
        head["checkpoint_error"] = _corrupt_body(exc).model_dump()
        return _json_bytes(codec.canonical_json(head))
    _observe_resume(request, started)
    body_bytes = codec.canonical_json(head)
    return _json_bytes(body_bytes[:-1] + b',"checkpoint":' + loaded.envelope() + b"}")


def _renewed(claim: ClaimInfo) -> RenewResponse:
    return RenewResponse(
        run_id=claim.run_id,
        worker_id=claim.worker_id,
        epoch=claim.epoch,
        lease_expires_at=claim.lease_expires_at,
        seq=claim.seq,
    )


@_json_errors
async def renew_claim(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/claim/renew``: extend the lease; 409 when no longer held."""
    run_id = _run_id(request)
    body = await _body(request, RenewRequest)
    await _check_tenant(request, run_id)
    claim = await _store(request).renew(run_id, body.worker_id, body.epoch, body.lease_seconds)
    return _json(_renewed(claim))


@_json_errors
async def release_claim(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/claim/release``: give the claim up; 409 when not held."""
    run_id = _run_id(request)
    body = await _body(request, ReleaseRequest)
    await _check_tenant(request, run_id)
    await _store(request).release(run_id, body.worker_id, body.epoch)
    return _json(ReleaseResponse(run_id=run_id, released=True))


# -- human input -----------------------------------------------------------------------------


def _validate_answer(schema: dict[str, Any] | None, answer: Any, path: str) -> None:
    if schema is None:
        return
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ApiError(
            422,
            ErrorCode.INVALID_INPUT_SCHEMA,
            f"the schema of input {path!r} is not valid: {exc.message}",
        ) from None
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(answer))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "answer"
        raise InputValidationError(f"answer for {path!r} is invalid at {where}: {error.message}")


@_json_errors
async def submit_input(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/inputs``: answer a pending input (202; 409 when answered)."""
    run_id = _run_id(request)
    body = await _body(request, InputRequest)
    loaded = await _load(request, run_id, None)
    pending = {p.path: p for p in loaded.checkpoint.pending_inputs}
    target = pending.get(body.path)
    if target is None:
        listed = ", ".join(repr(p) for p in pending) or "none"
        raise ApiError(
            422,
            ErrorCode.UNKNOWN_INPUT_PATH,
            f"{body.path!r} is not a pending input of run {run_id!r} at seq "
            f"{loaded.record.seq} (pending: {listed})",
        )
    _validate_answer(target.schema_, body.answer, body.path)
    answer = codec.from_jsonable(body.answer)
    record = await _store(request).submit_input(run_id, body.path, answer)
    accepted = InputAccepted(run_id=run_id, path=record.path, submitted_at=record.submitted_at)
    broker = request.app.get(EVENTS_KEY)
    if broker is not None:
        broker.publish(run_id, ev.INPUT_RECEIVED, accepted.model_dump(mode="json"))
    return _json(accepted, status=202)


@_json_errors
async def list_inputs(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}/inputs``: submitted answers (unconsumed unless asked)."""
    run_id = _run_id(request)
    include = _bool_param(request, "include_consumed", False)
    await _visible_run(request, run_id)
    records = await _store(request).list_inputs(run_id, include_consumed=include)
    items = [
        InputItem(
            run_id=r.run_id,
            path=r.path,
            answer=codec.to_jsonable(r.answer),
            submitted_at=r.submitted_at,
            consumed=r.consumed,
        )
        for r in records
    ]
    return _json(InputList(inputs=items))


@_json_errors
async def consume_inputs(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/inputs/consume``: mark answers consumed, exactly once."""
    run_id = _run_id(request)
    body = await _body(request, ConsumeRequest)
    await _visible_run(request, run_id)
    consumed = await _store(request).consume_inputs(run_id, body.paths)
    return _json(ConsumeResponse(consumed=list(consumed)))


# -- maintenance ------------------------------------------------------------------------------


@_json_errors
async def prune_run(request: web.Request) -> web.StreamResponse:
    """``POST /v1/runs/{run_id}/prune``: keep the newest ``max_checkpoints`` (maintenance)."""
    run_id = _run_id(request)
    body = await _body(request, PruneRequest)
    await _visible_run(request, run_id)
    removed = await _store(request).prune(run_id, body.max_checkpoints)
    return _json(PruneResponse(run_id=run_id, removed=removed))


@_json_errors
async def expire(request: web.Request) -> web.StreamResponse:
    """``POST /v1/maintenance/expire``: drop checkpoints older than a cutoff (maintenance)."""
    body = await _body(request, ExpireRequest)
    if _tenant_scope(request) is not None:
        # Expiry spans every tenant: with tokens configured no single tenant may trigger it.
        raise ApiError(
            403, ErrorCode.FORBIDDEN, "expire is an operator action; run it without tokens"
        )
    removed = await _store(request).expire(body.older_than)
    return _json(ExpireResponse(removed=removed))


# -- events ------------------------------------------------------------------------------------


def _sse_data(event: Event) -> str:
    return codec.canonical_json(event.data).decode("utf-8")


async def _snapshot(request: web.Request, broker: EventBroker, run: RunInfo) -> list[Event]:
    """The run's current state as events, so a (re)connecting client is never behind."""
    events = [
        broker.make_event(
            run.run_id,
            ev.STATUS_CHANGED,
            {
                "run_id": run.run_id,
                "status": str(run.status),
                "seq": run.latest_seq,
                "snapshot": True,
            },
        )
    ]
    try:
        loaded = await _load(request, run.run_id, None)
        for p in loaded.checkpoint.pending_inputs:
            data = {"run_id": run.run_id, "snapshot": True}
            data.update(p.model_dump(mode="json", by_alias=True))
            events.append(broker.make_event(run.run_id, ev.INPUT_REQUESTED, data))
    except (CorruptCheckpointError, UnknownSchemaVersionError, ApiError):
        # The row still names the pending paths; say what is known rather than nothing.
        for path in run.pending_inputs:
            events.append(
                broker.make_event(
                    run.run_id,
                    ev.INPUT_REQUESTED,
                    {"run_id": run.run_id, "path": path, "snapshot": True},
                )
            )
    return events


async def _pump(resp: EventSourceResponse, snapshot: list[Event], sub: Subscription) -> None:
    """Send the snapshot, then live events until the stream ends or the client leaves."""
    for item in snapshot:
        await resp.send(_sse_data(item), id=str(item.id), event=item.event)
    closed = asyncio.ensure_future(resp.wait())  # ends when a ping finds the client gone
    try:
        while True:
            nxt = asyncio.ensure_future(sub.get())
            await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                return
            live = nxt.result()
            if live is None:
                return
            await resp.send(_sse_data(live), id=str(live.id), event=live.event)
            if live.event in (ev.STREAM_OVERFLOW, ev.STREAM_CLOSED):
                return
    finally:
        closed.cancel()


@_json_errors
async def run_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/runs/{run_id}/events``: Server-Sent Events, current state first."""
    run_id = _run_id(request)
    broker = _broker(request.app)
    # Subscribe before reading the state: an event racing the snapshot is sent twice at worst,
    # never missed.
    sub = broker.subscribe(run_id)
    try:
        run = await _visible_run(request, run_id)
        snapshot = await _snapshot(request, broker, run)
        async with sse_response(request, ping_interval=SSE_PING_SECONDS) as resp:
            # The status line is sent: from here on errors end the stream, never a JSON answer.
            try:
                await _pump(resp, snapshot, sub)
            except (ConnectionResetError, RuntimeError):
                pass  # the client went away mid-write
            except Exception:
                log.exception("event stream of run %s failed", run_id)
        return resp
    finally:
        broker.unsubscribe(sub)


# -- registration --------------------------------------------------------------------------------

API_ROUTES: Final[Sequence[tuple[str, str, Handler, str]]] = (
    ("GET", "/v1/runs", list_runs, "list_runs"),
    ("GET", "/v1/runs/{run_id}", get_run, "get_run"),
    ("DELETE", "/v1/runs/{run_id}", delete_run, "delete_run"),
    ("GET", "/v1/runs/{run_id}/checkpoints", list_checkpoints, "list_checkpoints"),
    ("GET", "/v1/runs/{run_id}/checkpoints/latest", get_latest_checkpoint, "get_latest"),
    ("GET", "/v1/runs/{run_id}/checkpoints/{seq}", get_checkpoint, "get_checkpoint"),
    ("POST", "/v1/runs/{run_id}/claim", claim_run, "claim"),
    ("POST", "/v1/runs/{run_id}/claim/renew", renew_claim, "renew_claim"),
    ("POST", "/v1/runs/{run_id}/claim/release", release_claim, "release_claim"),
    ("GET", "/v1/runs/{run_id}/inputs", list_inputs, "list_inputs"),
    ("POST", "/v1/runs/{run_id}/inputs", submit_input, "submit_input"),
    ("POST", "/v1/runs/{run_id}/inputs/consume", consume_inputs, "consume_inputs"),
    ("GET", "/v1/runs/{run_id}/events", run_events, "run_events"),
    ("POST", "/v1/runs/{run_id}/prune", prune_run, "prune_run"),
    ("POST", "/v1/maintenance/expire", expire, "expire"),
)


async def _close_streams(app: web.Application) -> None:
    broker = app.get(EVENTS_KEY)
    if broker is not None:
        broker.close()


def setup_api(app: web.Application) -> None:
    """Register the resume API, the SSE stream and ``/openapi.json`` on ``app``.

    Creates the app's :class:`EventBroker` when the factory has not, and ends every SSE
    stream on shutdown (so a graceful stop is not held up by open streams).
    """
    from sidecar.openapi import openapi_handler

    if EVENTS_KEY not in app:
        app[EVENTS_KEY] = EventBroker()
    for method, path, handler, name in API_ROUTES:
        app.router.add_route(method, path, handler, name=name)
    if not any(getattr(r, "canonical", None) == "/openapi.json" for r in app.router.resources()):
        app.router.add_get("/openapi.json", openapi_handler, name="openapi")
    app.on_shutdown.append(_close_streams)
