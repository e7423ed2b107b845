"""``POST /v1/traces``: OTLP in, durable checkpoints out.

The write path of one request:

1. check the content type (415), the size (413, also when gzip inflates past the limit)
   and the bearer token (401);
2. decode the OTLP body (400 when malformed) and split checkpoint spans from the rest;
3. per checkpoint: verify the payload's SHA-256, parse it as a FlowCheckpoint, check it
   matches the span's attributes, and compress it (in a worker thread when large). Any
   failure rejects the whole request with a 400 and stores nothing of it;
4. hand the records to the group-commit writer and await their outcomes;
5. answer 200 (an empty ExportTraceServiceResponse) only when every checkpoint is durable;
   else 503 + Retry-After (not durable: retry), 409 (stale epoch or seq conflict) or 400.

The ``Flowpoint-Outcome`` response header says ``stored``, ``duplicate`` or ``spooled``: one
word when every checkpoint of the request shares it, else one per checkpoint span in request
order (``stored,duplicate``), so a client can tell a first write from a replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import zstandard
from aiohttp import web

from checkpoint import codec
from checkpoint.crypto import Keyring, record_aad
from checkpoint.errors import (
    CheckpointRefusedError,
    CorruptCheckpointError,
    ErrorCode,
    FlowpointError,
    InvalidIdError,
    SeqConflictError,
    StaleEpochError,
    StoreError,
    StoreUnavailableError,
    TenantMismatchError,
    UnknownSchemaVersionError,
)
from checkpoint.models import (
    SCHEMA_VERSION,
    FlowCheckpoint,
    PendingInput,
    checkpoint_from_bytes,
)
from checkpoint.store import SealedCheckpoint, summarize
from checkpoint.stores.sidecar import OUTCOME_HEADER
from sidecar import otlp
from sidecar.api import ApiError, tenant_of
from sidecar.events import CHECKPOINT_CREATED, INPUT_REQUESTED, STATUS_CHANGED, EventBroker
from sidecar.forward import OtlpForwarder, Stage
from sidecar.keys import TOKENS_KEY
from sidecar.logs import log_event
from sidecar.metrics import Metrics
from sidecar.selftrace import SelfTracer
from sidecar.writer import GroupCommitWriter, PendingWrite, WriteResult

__all__ = ["OUTCOME_HEADER", "IngestService", "RunTracker"]

log = logging.getLogger("flowpoint.sidecar.ingest")

RETRY_AFTER_SECONDS: Final = "1"
DECODE_OFFLOAD_BYTES: Final = 8 * 1024 * 1024
_SUPPORTED: Final = (otlp.PROTOBUF, otlp.JSON)
# OTLP/HTTP compresses with gzip only. aiohttp would inflate "deflate" too, but a deflate
# body that ends mid-stream and arrives after the headers leaves request.read() waiting
# forever (aiohttp 3.14 drops the error raised at EOF), so it is refused up front; any
# other coding would reach the decoder still encoded.
_CODINGS: Final = ("", "identity", "gzip")


class _Rejected(Exception):
    """A checkpoint that must not be stored (and must not be retried): a 400."""

    def __init__(self, reason: str, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Timeline:
    """When a request arrived (both clocks) and was decoded: for the sidecar's own spans."""

    arrival_ns: int
    arrival_perf: float
    decode_start: float = 0.0
    decode_end: float = 0.0

    def ns(self, perf: float) -> int:
        return self.arrival_ns + int((perf - self.arrival_perf) * 1e9)


@dataclass(slots=True, eq=False)
class Prepared:
    """A verified checkpoint ready for the writer, and what its metrics need."""

    span: otlp.CheckpointSpan
    record: SealedCheckpoint
    pending_inputs: list[PendingInput]
    arrival_ns: int
    verify_seconds: float
    compress_seconds: float
    verify_start: float = 0.0
    timeline: _Timeline | None = None

    @property
    def start_ns(self) -> int:
        # A span without a start time (a hand-made export) is timed from its arrival.
        return self.span.start_time_unix_nano or self.arrival_ns


@dataclass(slots=True)
class _RunState:
    seq: int
    status: str


@dataclass
class RunTracker:
    """The latest stored seq and status of recently seen runs (a bounded LRU).

    Used to count seq gaps and to publish ``status_changed`` only on a change. A run
    that fell out of the LRU (or predates this process) has no baseline: its next
    checkpoint counts no gap.
    """

    capacity: int = 65_536
    _runs: OrderedDict[str, _RunState] = field(default_factory=OrderedDict)

    def observe(self, run_id: str, seq: int, status: str) -> tuple[bool, bool, bool]:
        """Record a stored checkpoint: (is newest, status changed, seq gap before it)."""
        prev = self._runs.get(run_id)
        if prev is None:
            self._runs[run_id] = _RunState(seq, status)
            if len(self._runs) > self.capacity:
                self._runs.popitem(last=False)
            return True, True, False
        self._runs.move_to_end(run_id)
        if seq <= prev.seq:
            return False, False, False  # a late (reordered) checkpoint: not the newest
        gap = seq > prev.seq + 1
        changed = status != prev.status
        prev.seq, prev.status = seq, status
        return True, changed, gap

    def __len__(self) -> int:
        return len(self._runs)


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # A compressor is not thread-safe but is costly to build: one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return comp


def _trace_id_of(cp: FlowCheckpoint) -> str | None:
    parts = (cp.trace_context or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def parse_checkpoint(payload: bytes) -> FlowCheckpoint:
    """``checkpoint_from_bytes(payload)``, with a faster road for the common case.

    Decoding codec tags (``{"$t": ...}``) means walking every user value in Python,
    which dominates the cost of a large checkpoint. A payload with no ``$`` in it (nor
    an escaped one) cannot hold a tag, so it is parsed as the reference road parses it
    (``codec.loads``) and validated by the same model without the tag walk. A tag, an
    older schema version or a payload the model refuses takes the reference road, which
    also produces the precise error. Only the original bytes are ever stored, so the
    parsed model serves validation, the summary and the events.
    """
    # memchr-fast checks first: most payloads have no "$", many have no backslash at all.
    if b"$" in payload or (b"\\" in payload and b"\\u0024" in payload):
        return checkpoint_from_bytes(payload)
    try:
        cp = FlowCheckpoint.model_validate(codec.loads(payload))
    except (ValueError, RecursionError):  # bad JSON, or pydantic's ValidationError
        return checkpoint_from_bytes(payload)
    if cp.schema_version != SCHEMA_VERSION:
        return checkpoint_from_bytes(payload)  # migrations run on the reference road
    return cp


def prepare(
    span: otlp.CheckpointSpan, level: int, arrival_ns: int, keyring: Keyring | None = None
) -> Prepared:
    """Verify, parse, check and compress one checkpoint span (pure CPU; thread-safe).

    With a ``keyring`` the compressed blob is encrypted (bound to tenant, run and seq).

    Raises :class:`_Rejected` when the checkpoint must not be stored.
    """
    t0 = time.perf_counter()
    payload = span.payload
    actual = hashlib.sha256(payload).hexdigest()
    if actual != span.sha256:
        raise _Rejected(
            "checksum",
            ErrorCode.CHECKSUM_MISMATCH,
            f"checkpoint {span.key}: the payload's SHA-256 is {actual}, but the span's "
            f"{otlp.ATTR.SHA256} says {span.sha256}; the payload was damaged in transit or "
            "hashed over other bytes. Nothing of this request was stored.",
        )
    try:
        cp = parse_checkpoint(payload)
    except UnknownSchemaVersionError as exc:
        raise _Rejected(
            "invalid_payload",
            ErrorCode.UNKNOWN_SCHEMA_VERSION,
            f"checkpoint {span.key}: {exc} (upgrade the sidecar)",
        ) from exc
    except CorruptCheckpointError as exc:
        raise _Rejected(
            "invalid_payload", ErrorCode.INVALID_PAYLOAD, f"checkpoint {span.key}: {exc}"
        ) from exc
    mismatched = [
        f"{name} (span {want!r}, payload {got!r})"
        for name, want, got in (
            ("tenant_id", span.tenant_id, cp.tenant_id),
            ("flow_id", span.flow_id, cp.flow_id),
            ("run_id", span.run_id, cp.run_id),
            ("seq", span.seq, cp.seq),
            ("status", str(span.status), str(cp.status)),
            # The payload may have been migrated from an older version: only a span that
            # claims the current (or a newer) version can be held to the payload's.
            (
                "schema_version",
                span.schema_version,
                cp.schema_version if span.schema_version >= SCHEMA_VERSION else span.schema_version,
            ),
        )
        if want != got
    ]
    if mismatched:
        raise _Rejected(
            "payload_mismatch",
            ErrorCode.PAYLOAD_MISMATCH,
            f"checkpoint {span.key}: the span's attributes do not match its payload: "
            + ", ".join(mismatched),
        )
    t1 = time.perf_counter()
    blob = _compressor(level).compress(payload)
    if keyring is not None:
        blob = keyring.encrypt(blob, record_aad(span.tenant_id, span.run_id, span.seq))
    t2 = time.perf_counter()
    record = SealedCheckpoint(
        tenant_id=span.tenant_id,
        flow_id=span.flow_id,
        run_id=span.run_id,
        seq=span.seq,
        status=span.status,
        schema_version=span.schema_version,
        sha256=actual,
        raw_size=len(payload),
        blob=blob,
        created_at=cp.created_at,
        summary=summarize(cp),
        trace_id=span.trace_id or _trace_id_of(cp),
    )
    return Prepared(
        span=span,
        record=record,
        pending_inputs=list(cp.pending_inputs),
        arrival_ns=arrival_ns,
        verify_seconds=t1 - t0,
        compress_seconds=t2 - t1,
        verify_start=t0,
    )


def _error(
    status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": str(code), "message": message}, status=status, headers=headers
    )


class IngestService:
    """The ``POST /v1/traces`` handler and the post-commit bookkeeping of the writer."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        broker: EventBroker,
        forwarder: OtlpForwarder,
        max_body_bytes: int,
        compression_level: int,
        offload_bytes: int,
        offload_threads: int = 2,
        keyring: Keyring | None = None,
    ) -> None:
        self.metrics = metrics
        self.keyring = keyring
        self.broker = broker
        self.forwarder = forwarder
        self.max_body_bytes = max_body_bytes
        self.compression_level = compression_level
        self.offload_bytes = offload_bytes
        # A few threads for large payloads (zstd and hashlib release the GIL): more would
        # only fight over the GIL and hold more megabytes in memory at once.
        self._executor = ThreadPoolExecutor(
            max_workers=offload_threads, thread_name_prefix="flowpoint-ingest"
        )
        self.writer: GroupCommitWriter | None = None
        self.runs = RunTracker()
        self.tracer = SelfTracer(forwarder.url)

    def close(self) -> None:
        """Stop the worker threads (after the last request)."""
        self._executor.shutdown(wait=True)

    def attach(self, writer: GroupCommitWriter) -> None:
        """Use ``writer`` for durable writes (the app factory wires them both ways)."""
        self.writer = writer

    # -- the handler -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/traces``."""
        try:
            return await self._handle(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unexpected error while ingesting traces")
            return _error(500, ErrorCode.INTERNAL, "internal error in the sidecar; see its log")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrival_ns = time.time_ns()
        timeline = _Timeline(arrival_ns, time.perf_counter())
        try:
            tenant = tenant_of(request) if request.app.get(TOKENS_KEY) else None
        except ApiError as exc:
            return exc.response()

        content_type = request.content_type
        if content_type not in _SUPPORTED:
            return _error(
                415,
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {content_type or '(none)'!r} is not supported: send OTLP as "
                f"{otlp.PROTOBUF} or {otlp.JSON}",
            )
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding not in _CODINGS:
            self.metrics.rejected("malformed")
            return _error(
                415,
                ErrorCode.UNSUPPORTED_CONTENT_ENCODING,
                f"Content-Encoding {coding!r} is not supported: send the body as is or gzip",
            )
        length = request.content_length
        if length is not None and length > self.max_body_bytes and not coding:
            return self._too_large(length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        except web.RequestPayloadError as exc:
            # The body does not decode as its Content-Encoding claims (or its framing broke).
            self.metrics.rejected("malformed")
            cause = exc.__cause__ or exc
            detail = getattr(cause, "message", None) or str(cause)
            return _error(
                400,
                ErrorCode.BAD_CONTENT_ENCODING,
                f"the request body could not be read as Content-Encoding {coding or 'identity'!r}"
                f": {detail}",
            )

        if coding == "gzip":
            inflated = await self._gunzip(body)
            if isinstance(inflated, web.Response):
                return inflated
            body = inflated

        t_decode = timeline.decode_start = time.perf_counter()
        decode = otlp.decode_json if content_type == otlp.JSON else otlp.decode_protobuf
        try:
            # Decoding holds the GIL (upb, json): a thread only keeps the loop breathing
            # through a huge body, and costs a hand-off on every ordinary one.
            if len(body) > DECODE_OFFLOAD_BYTES:
                decoded = await asyncio.get_running_loop().run_in_executor(
                    self._executor, decode, body
                )
            else:
                decoded = decode(body)
        except otlp.OtlpError as exc:
            self.metrics.rejected(exc.reason)
            log_event(log, logging.WARNING, "trace export refused", error=exc.code, detail=str(exc))
            return _error(400, exc.code, str(exc))
        timeline.decode_end = time.perf_counter()
        decode_seconds = timeline.decode_end - t_decode
        del body

        spans = decoded.checkpoints
        if not spans:
            self._forward(decoded)
            return self._ok(content_type, [])
        decode_stage = self.metrics.stage["decode"]
        for _ in spans:
            decode_stage.observe(decode_seconds)

        if tenant is not None:
            foreign = [s for s in spans if s.tenant_id != tenant]
            if foreign:
                return self._reject(
                    spans,
                    foreign,
                    "tenant_mismatch",
                    ErrorCode.TENANT_MISMATCH,
                    f"checkpoint {foreign[0].key} names tenant {foreign[0].tenant_id!r}, but "
                    f"the bearer token belongs to tenant {tenant!r}",
                )

        prepared_or_error = await self._prepare_all(spans, arrival_ns)
        failures = [
            (s, r)
            for s, r in zip(spans, prepared_or_error, strict=True)
            if isinstance(r, _Rejected)
        ]
        if failures:
            first = failures[0][1]
            for s, r in failures:
                self.metrics.checkpoint_rejected_total.labels(reason=r.reason).inc()
                self.metrics.outcome["rejected"].inc()
                log_event(
                    log,
                    logging.WARNING,
                    "checkpoint rejected",
                    trace_id=s.trace_id or None,
                    run_id=s.run_id,
                    seq=s.seq,
                    outcome="rejected",
                    reason=r.reason,
                )
            innocent = len(spans) - len(failures)
            if innocent:
                self.metrics.rejected("request_rejected", innocent)
            self._forward(decoded)
            return _error(400, first.code, first.message)
        prepared = [p for p in prepared_or_error if isinstance(p, Prepared)]
        verify = self.metrics.stage["verify"]
        compress = self.metrics.stage["compress"]
        for p in prepared:
            p.timeline = timeline
            verify.observe(p.verify_seconds)
            compress.observe(p.compress_seconds)

        writer = self.writer
        if writer is None:
            return self._unavailable("the sidecar's writer is not running")
        try:
            futures = writer.submit([(p.record, p.span.epoch, p) for p in prepared])
        except StoreUnavailableError as exc:
            return self._unavailable(str(exc))
        self.metrics.writer_pending.inc(len(futures))
        try:
            results = [await f for f in futures]
        finally:
            self.metrics.writer_pending.dec(len(futures))
        response = self._answer(content_type, prepared, results)
        if response.status != 503:
            self._forward(decoded)
        return response

    # -- steps -------------------------------------------------------------------------------

    async def _prepare_all(
        self, spans: Sequence[otlp.CheckpointSpan], arrival_ns: int
    ) -> list[Prepared | _Rejected]:
        level = self.compression_level
        out: list[Prepared | _Rejected | None] = [None] * len(spans)
        large: list[tuple[int, asyncio.Future[Prepared]]] = []
        loop = asyncio.get_running_loop()
        for i, span in enumerate(spans):
            if len(span.payload) > self.offload_bytes:
                # zstd and hashlib release the GIL: large payloads run beside the loop.
                large.append(
                    (
                        i,
                        loop.run_in_executor(
                            self._executor, prepare, span, level, arrival_ns, self.keyring
                        ),
                    )
                )
                continue
            try:
                out[i] = prepare(span, level, arrival_ns, self.keyring)
            except _Rejected as exc:
                out[i] = exc
        for i, fut in large:
            try:
                out[i] = await fut
            except _Rejected as exc:
                out[i] = exc
        return [r for r in out if r is not None]

    def _answer(
        self, content_type: str, prepared: Sequence[Prepared], results: Sequence[WriteResult]
    ) -> web.Response:
        outcomes: list[str] = []
        unavailable: FlowpointError | None = None
        bad: FlowpointError | None = None
        conflict: FlowpointError | None = None
        for result in results:
            if isinstance(result, str):
                outcomes.append(result)
            elif isinstance(result, StoreError):
                unavailable = unavailable or result
            elif isinstance(result, (SeqConflictError, StaleEpochError)):
                conflict = conflict or result
            else:
                bad = bad or result
        if unavailable is not None:
            return self._unavailable(str(unavailable))
        if bad is not None:
            code = (
                ErrorCode.TENANT_MISMATCH
                if isinstance(bad, TenantMismatchError)
                else (
                    ErrorCode.INVALID_CHECKPOINT
                    if isinstance(bad, InvalidIdError)
                    else ErrorCode.REJECTED
                )
            )
            return _error(400, code, str(bad))
        if conflict is not None:
            code = (
                ErrorCode.STALE_EPOCH
                if isinstance(conflict, StaleEpochError)
                else ErrorCode.SEQ_CONFLICT
            )
            return _error(409, code, str(conflict))
        return self._ok(content_type, outcomes)

    def _ok(self, content_type: str, outcomes: Sequence[str]) -> web.Response:
        body, ctype = otlp.encode_response(content_type)
        resp = web.Response(body=body, content_type=ctype)
        if outcomes:
            first = outcomes[0]
            same = all(o == first for o in outcomes)
            resp.headers[OUTCOME_HEADER] = first if same else ",".join(outcomes)
        return resp

    async def _gunzip(self, body: bytes) -> bytes | web.Response:
        """Inflate a gzip body ourselves: bounded, and refused unless the stream is whole.

        aiohttp's own inflater (turned off in create_app) accepts a stream cut short: a
        truncated body could then decode to a shorter, valid export, be answered 200, and
        the cut-off checkpoints would be dropped from the worker's outbox.
        """
        if len(body) > self.offload_bytes:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, _inflate_gzip, body, self.max_body_bytes
            )
        else:
            result = _inflate_gzip(body, self.max_body_bytes)
        if result is None:
            return self._too_large(None)
        if isinstance(result, str):
            self.metrics.rejected("malformed")
            return _error(
                400,
                ErrorCode.BAD_CONTENT_ENCODING,
                f"the request body could not be read as Content-Encoding 'gzip': {result}",
            )
        return result

    def _too_large(self, length: int | None) -> web.Response:
        self.metrics.rejected("too_large")
        size = f" ({length} bytes)" if length is not None else ""
        return _error(
            413,
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the request body{size} exceeds the sidecar's limit of {self.max_body_bytes} "
            "bytes (after gzip decompression); raise --max-body-bytes or send smaller "
            "checkpoints",
        )

    def _unavailable(self, message: str) -> web.Response:
        return _error(
            503,
            ErrorCode.STORE_UNAVAILABLE,
            f"the checkpoint is not durable, retry: {message}",
            {"Retry-After": RETRY_AFTER_SECONDS},
        )

    def _reject(
        self,
        spans: Sequence[otlp.CheckpointSpan],
        guilty: Sequence[otlp.CheckpointSpan],
        reason: str,
        code: ErrorCode,
        message: str,
    ) -> web.Response:
        self.metrics.rejected(reason, len(guilty))
        if len(spans) > len(guilty):
            self.metrics.rejected("request_rejected", len(spans) - len(guilty))
        log_event(log, logging.WARNING, "checkpoint rejected", reason=reason, detail=message)
        return _error(400, code, message)

    def _forward(self, decoded: otlp.DecodedTraces) -> None:
        if decoded.checkpoints:
            # The checkpoint spans stop here: their payload-free copies complete the trace.
            self.tracer.checkpoint_spans(decoded.request)
        if not decoded.other_spans:
            return
        if not self.forwarder.enabled:
            self.forwarder.submit(decoded.request, decoded.other_spans)
            return
        request = (
            decoded.request
            if not decoded.checkpoints
            else otlp.other_spans_request(decoded.request)
        )
        self.forwarder.submit(request, decoded.other_spans)

    # -- after each commit (called by the writer before the futures resolve) ------------------

    def on_batch(
        self,
        items: Sequence[PendingWrite],
        results: Sequence[WriteResult],
        started: float,
        seconds: float,
    ) -> None:
        """Metrics, seq-gap tracking and run events for one committed batch."""
        m = self.metrics
        now_ns = time.time_ns()
        m.commit_batch_size.observe(len(items))
        commit_stage = m.stage["commit"]
        queue_stage = m.stage["queue"]
        stored: list[Prepared] = []
        failed_batch = False
        debug = log.isEnabledFor(logging.DEBUG)
        for item, result in zip(items, results, strict=True):
            p: Prepared = item.context
            queue_stage.observe(max(0.0, started - item.enqueued))
            commit_stage.observe(seconds)
            span = p.span
            if result == "stored" or result == "spooled":
                # Spooled is durable too (and readable): same bookkeeping, its own outcome.
                stored.append(p)
                latency = max(0.0, (now_ns - p.start_ns) / 1e9)
                if span.trace_id:
                    m.checkpoint_save_seconds.observe(latency, {"trace_id": span.trace_id})
                else:
                    m.checkpoint_save_seconds.observe(latency)
                m.outcome[result].inc()
                m.raw_bytes.observe(p.record.raw_size)
                m.stored_bytes.observe(p.record.stored_size)
                if p.record.stored_size:
                    m.checkpoint_compression_ratio.observe(p.record.raw_size / p.record.stored_size)
                if debug:  # the fields are built per checkpoint: only when they are logged
                    _log_checkpoint(
                        logging.DEBUG,
                        "checkpoint stored",
                        span,
                        outcome=result,
                        latency_ms=round(latency * 1000, 3),
                    )
            elif result == "duplicate":
                m.outcome["duplicate"].inc()
                _log_checkpoint(
                    logging.INFO,
                    "checkpoint already stored",
                    span,
                    outcome="duplicate",
                )
            elif isinstance(result, (SeqConflictError, StaleEpochError)):
                m.outcome["conflict"].inc()
                _log_checkpoint(
                    logging.WARNING,
                    "checkpoint conflict",
                    span,
                    outcome="conflict",
                    error=type(result).__name__,
                    detail=str(result),
                )
            elif isinstance(result, StoreError):
                failed_batch = True
            else:
                reason = (
                    "tenant_mismatch"
                    if isinstance(result, TenantMismatchError)
                    else "refused_by_store"
                    if isinstance(result, CheckpointRefusedError)
                    else "invalid_attributes"
                )
                m.rejected(reason)
                _log_checkpoint(
                    logging.WARNING,
                    "checkpoint rejected by the store",
                    span,
                    outcome="rejected",
                    reason=reason,
                    detail=str(result),
                )
        if self.tracer.enabled:
            self._trace(items, results, started, seconds)
        if failed_batch:
            m.commit_errors_total.inc()
            log_event(
                log,
                logging.ERROR,
                "group commit failed: checkpoints not durable (clients retry)",
                records=len(items),
                detail=str(next(r for r in results if isinstance(r, StoreError))),
            )
        if stored:
            self._after_stored(stored)

    def _trace(
        self,
        items: Sequence[PendingWrite],
        results: Sequence[WriteResult],
        started: float,
        seconds: float,
    ) -> None:
        # Spans of the sidecar's own stages, under each worker's checkpoint.save span.
        for item, result in zip(items, results, strict=True):
            p: Prepared = item.context
            timeline = p.timeline
            if timeline is None:
                continue
            at = timeline.ns
            verify_end = p.verify_start + p.verify_seconds
            stages = [
                Stage("decode", at(timeline.decode_start), at(timeline.decode_end)),
                Stage("verify", at(p.verify_start), at(verify_end)),
                Stage("compress", at(verify_end), at(verify_end + p.compress_seconds)),
                Stage("queue", at(item.enqueued), at(started)),
                Stage("commit", at(started), at(started + seconds)),
            ]
            outcome = result if isinstance(result, str) else type(result).__name__
            self.tracer.stages(
                p.span.trace_id,
                p.span.span_id,
                stages,
                {
                    "flowpoint.run_id": p.span.run_id,
                    "flowpoint.seq": p.span.seq,
                    "flowpoint.outcome": outcome,
                    "flowpoint.batch_size": len(items),
                    "flowpoint.raw_bytes": p.record.raw_size,
                    "flowpoint.stored_bytes": p.record.stored_size,
                },
                error=None if isinstance(result, str) else str(result),
            )

    def _after_stored(self, stored: list[Prepared]) -> None:
        stored.sort(key=lambda p: (p.span.run_id, p.span.seq))
        publish = self.broker.publish
        for p in stored:
            span = p.span
            status = str(span.status)
            newest, changed, gap = self.runs.observe(span.run_id, span.seq, status)
            if gap:
                self.metrics.seq_gaps_total.inc()
                log_event(
                    log,
                    logging.WARNING,
                    "seq gap: checkpoints between the run's previous latest and this one "
                    "never arrived",
                    trace_id=span.trace_id or None,
                    run_id=span.run_id,
                    seq=span.seq,
                )
            publish(
                span.run_id,
                CHECKPOINT_CREATED,
                {"run_id": span.run_id, "seq": span.seq, "status": status},
            )
            if newest and changed:
                publish(
                    span.run_id,
                    STATUS_CHANGED,
                    {"run_id": span.run_id, "status": status, "seq": span.seq},
                )
            if newest and p.pending_inputs:
                for pending in p.pending_inputs:
                    data: dict[str, Any] = {"run_id": span.run_id, "seq": span.seq}
                    data.update(pending.model_dump(mode="json", by_alias=True))
                    publish(span.run_id, INPUT_REQUESTED, data)


def _inflate_gzip(body: bytes, limit: int) -> bytes | str | None:
    """The inflated body; None past ``limit``; a message when the stream is not whole gzip."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        return f"not a gzip stream ({exc})"
    if len(out) > limit:
        return None
    if not inflater.eof:
        return "the gzip stream is truncated (no end-of-stream and trailer)"
    if inflater.unused_data:
        return "bytes follow the end of the gzip stream"
    return out


def _log_checkpoint(level: int, message: str, span: otlp.CheckpointSpan, **fields: Any) -> None:
    """One log event about a checkpoint, with its trace id, run id and seq."""
    log_event(
        log,
        level,
        message,
        trace_id=span.trace_id or None,
        run_id=span.run_id,
        seq=span.seq,
        **fields,
    )
