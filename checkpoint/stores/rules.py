"""The rules every local store applies: run rows, fencing, claims, retention, cursors.

Memory, file and SQLite stores keep one :class:`RunRow` per run and apply these
pure functions to it while holding their own lock or transaction, so put,
claim and retention behave the same everywhere. The Redis store runs the same
steps as Lua scripts (they must be atomic on the server); its scripts mirror
these functions. Times are integer microseconds since the Unix epoch (UTC), so
they compare exactly and serialize without loss.

Claim semantics (shared by every store):

* ``claim``: a live claim by another worker -> :class:`ClaimConflictError`;
  a live claim by the same worker -> same epoch, lease extended; otherwise the
  epoch goes up by one. ``ClaimInfo.seq`` is the run's latest seq at claim time.
* ``renew``: needs the current epoch (else :class:`StaleEpochError`) and an
  unreleased claim (else :class:`StaleEpochError`) held by this worker (else
  :class:`ClaimConflictError`). A lapsed lease that nobody took over can be renewed.
* ``release``: needs the current epoch (else :class:`StaleEpochError`); the
  epoch is kept, so the next claim gets ``epoch + 1``. Releasing twice is a no-op.
* ``put`` carries the run's current epoch (0 for a run never claimed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from checkpoint import codec
from checkpoint.errors import (
    ClaimConflictError,
    ConfigError,
    InvalidIdError,
    SeqConflictError,
    StaleEpochError,
    TenantMismatchError,
)
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus
from checkpoint.store import ClaimInfo, PutOutcome, RunInfo, SealedCheckpoint

__all__ = [
    "MAX_INPUT_PATH",
    "LoopLock",
    "RunRow",
    "apply_claim",
    "apply_put",
    "apply_release",
    "apply_renew",
    "check_put",
    "decode_answer",
    "decode_cursor",
    "encode_answer",
    "encode_cursor",
    "from_micros",
    "is_protected",
    "lease_micros",
    "now_micros",
    "page_runs",
    "pending_paths",
    "retention_victims",
    "to_micros",
    "validate_input_path",
    "validate_limit",
    "validate_record",
    "validate_retention",
]

MAX_INPUT_PATH = 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# -- time -------------------------------------------------------------------------------


def now_micros() -> int:
    """The wall clock in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def to_micros(value: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware (use datetime.now(UTC))")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> dt.datetime:
    """The aware UTC datetime of ``micros`` since the epoch (exact)."""
    return _EPOCH + dt.timedelta(microseconds=micros)


def lease_micros(lease_seconds: float) -> int:
    """Validate a lease length and convert it to microseconds."""
    if not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
        raise ConfigError(f"lease_seconds must be a positive number, got {lease_seconds!r}")
    return max(1, round(lease_seconds * 1_000_000))


# -- argument checks ----------------------------------------------------------------------


def validate_input_path(path: object) -> str:
    """Input paths are free-form (``triage/tools/approve#3``) but bounded and printable.

    Stores never use a path as a key component directly: the file store hashes it,
    SQL binds it as a parameter, Redis uses it as a hash field.
    """
    if (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_INPUT_PATH
        or any(ord(c) < 32 or ord(c) == 127 for c in path)
    ):
        raise InvalidIdError(
            f"invalid input path {path!r}: use 1-{MAX_INPUT_PATH} printable characters"
        )
    return path


def validate_limit(limit: object) -> int:
    """A page size: a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    return limit


def validate_retention(max_checkpoints: object) -> int:
    """``prune``'s count: a non-negative int (the latest checkpoint is always kept)."""
    if isinstance(max_checkpoints, bool) or not isinstance(max_checkpoints, int):
        raise ConfigError(f"max_checkpoints must be an integer, got {max_checkpoints!r}")
    if max_checkpoints < 0:
        raise ConfigError(f"max_checkpoints must be >= 0, got {max_checkpoints}")
    return max_checkpoints


def validate_record(record: SealedCheckpoint) -> None:
    """Check the ids and seq of a record before it touches storage."""
    validate_id(record.run_id, "run_id")
    validate_id(record.tenant_id, "tenant_id")
    validate_id(record.flow_id, "flow_id")
    if isinstance(record.seq, bool) or not isinstance(record.seq, int) or record.seq < 0:
        raise InvalidIdError(f"invalid seq {record.seq!r}: use an integer >= 0")


def pending_paths(record: SealedCheckpoint) -> list[str]:
    """The pending input paths a record's summary lists."""
    paths = record.summary.get("pending_inputs", [])
    return [str(p) for p in paths] if isinstance(paths, list) else []


# -- answers -----------------------------------------------------------------------------


def encode_answer(answer: Any) -> str:
    """Canonical JSON text of a human answer (bytes, datetimes... survive)."""
    return codec.encode(answer).decode("utf-8")


def decode_answer(text: str | bytes) -> Any:
    """Inverse of :func:`encode_answer`."""
    return codec.decode(text.encode("utf-8") if isinstance(text, str) else text)


# -- run rows ----------------------------------------------------------------------------


@dataclass(slots=True)
class RunRow:
    """The ``runs`` record of one run, as the local stores keep it."""

    run_id: str
    tenant_id: str
    flow_id: str
    status: CheckpointStatus
    latest_seq: int
    created_at: int
    updated_at: int
    pending_inputs: list[str] = field(default_factory=list)
    epoch: int = 0
    claim_worker: str | None = None
    claim_expires: int | None = None
    claim_seq: int | None = None

    def live_claim(self, now: int) -> bool:
        """True while a worker holds an unexpired lease."""
        return (
            self.claim_worker is not None
            and self.claim_expires is not None
            and self.claim_expires > now
        )

    def claim_info(self) -> ClaimInfo:
        """The current claim as a :class:`ClaimInfo` (the claim must be set)."""
        if self.claim_worker is None or self.claim_expires is None:
            raise ValueError(f"run {self.run_id} has no claim")
        return ClaimInfo(
            run_id=self.run_id,
            worker_id=self.claim_worker,
            epoch=self.epoch,
            lease_expires_at=from_micros(self.claim_expires),
            seq=self.claim_seq,
        )

    def to_info(self, now: int) -> RunInfo:
        """The public summary; ``claim`` is set only while the lease is live."""
        return RunInfo(
            run_id=self.run_id,
            tenant_id=self.tenant_id,
            flow_id=self.flow_id,
            status=self.status,
            latest_seq=self.latest_seq,
            created_at=from_micros(self.created_at),
            updated_at=from_micros(self.updated_at),
            pending_inputs=list(self.pending_inputs),
            epoch=self.epoch,
            claim=self.claim_info() if self.live_claim(now) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the file store's ``run.json``)."""
        return {
            "run_id": self.run_id,
            "tenant_id": self.tenant_id,
            "flow_id": self.flow_id,
            "status": self.status.value,
            "latest_seq": self.latest_seq,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "pending_inputs": list(self.pending_inputs),
            "epoch": self.epoch,
            "claim_worker": self.claim_worker,
            "claim_expires": self.claim_expires,
            "claim_seq": self.claim_seq,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunRow:
        """Inverse of :meth:`to_json`; raises KeyError/ValueError/TypeError on bad input."""
        return cls(
            run_id=str(doc["run_id"]),
            tenant_id=str(doc["tenant_id"]),
            flow_id=str(doc["flow_id"]),
            status=CheckpointStatus(doc["status"]),
            latest_seq=int(doc["latest_seq"]),
            created_at=int(doc["created_at"]),
            updated_at=int(doc["updated_at"]),
            pending_inputs=[str(p) for p in doc.get("pending_inputs", [])],
            epoch=int(doc.get("epoch", 0)),
            claim_worker=doc.get("claim_worker"),
            claim_expires=_opt_int(doc.get("claim_expires")),
            claim_seq=_opt_int(doc.get("claim_seq")),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def check_put(
    row: RunRow | None, existing_sha256: str | None, record: SealedCheckpoint, epoch: int
) -> PutOutcome | None:
    """Decide a put before writing: ``"duplicate"``, an error, or None (go ahead and store).

    A retry of an already stored checkpoint is a success even with an old epoch:
    it wrote nothing new, and the first attempt was legitimate.
    """
    if row is not None and row.tenant_id != record.tenant_id:
        raise TenantMismatchError(
            f"run {record.run_id} belongs to another tenant; a checkpoint of tenant "
            f"{record.tenant_id} cannot be written to it"
        )
    if existing_sha256 is not None and existing_sha256 == record.sha256:
        return "duplicate"
    current = row.epoch if row is not None else 0
    if epoch != current:
        raise StaleEpochError(
            f"run {record.run_id} is at epoch {current}, this write carries epoch {epoch}: "
            "another worker claimed the run, stop working on it"
        )
    if existing_sha256 is not None:
        raise SeqConflictError(
            f"checkpoint {record.run_id}#{record.seq} already exists with checksum "
            f"{existing_sha256}, not {record.sha256}: two writers produce this run"
        )
    return None


def apply_put(row: RunRow | None, record: SealedCheckpoint, now: int) -> RunRow:
    """The run row after storing ``record`` (a new row for the run's first checkpoint)."""
    if row is None:
        row = RunRow(
            run_id=record.run_id,
            tenant_id=record.tenant_id,
            flow_id=record.flow_id,
            status=record.status,
            latest_seq=-1,
            created_at=now,
            updated_at=now,
        )
    if record.seq > row.latest_seq:
        row.latest_seq = record.seq
        row.status = CheckpointStatus(record.status)
        row.pending_inputs = pending_paths(record)
    row.updated_at = max(now, row.updated_at)
    return row


def apply_claim(row: RunRow, worker_id: str, lease: int, now: int) -> ClaimInfo:
    """Claim ``row`` for ``worker_id`` for ``lease`` microseconds (see module docstring)."""
    if row.live_claim(now):
        if row.claim_worker != worker_id:
            raise ClaimConflictError(
                f"run {row.run_id} is claimed by worker {row.claim_worker} until "
                f"{from_micros(row.claim_expires or 0).isoformat()}"
            )
    else:
        row.epoch += 1
    row.claim_worker = worker_id
    row.claim_expires = now + lease
    row.claim_seq = row.latest_seq
    return row.claim_info()


def _check_epoch(row: RunRow, epoch: int) -> None:
    if epoch != row.epoch:
        raise StaleEpochError(
            f"run {row.run_id} is at epoch {row.epoch}, not {epoch}: "
            "another worker claimed the run since"
        )


def apply_renew(row: RunRow, worker_id: str, epoch: int, lease: int, now: int) -> ClaimInfo:
    """Extend the lease of the claim at ``epoch`` held by ``worker_id``."""
    _check_epoch(row, epoch)
    if row.claim_worker is None:
        raise StaleEpochError(f"the claim on run {row.run_id} at epoch {epoch} was released")
    if row.claim_worker != worker_id:
        raise ClaimConflictError(
            f"run {row.run_id} at epoch {epoch} is claimed by worker {row.claim_worker}"
        )
    row.claim_expires = now + lease
    return row.claim_info()


def apply_release(row: RunRow, worker_id: str, epoch: int) -> None:
    """Drop the claim at ``epoch`` (idempotent); the epoch itself is kept."""
    _check_epoch(row, epoch)
    if row.claim_worker is not None and row.claim_worker != worker_id:
        raise ClaimConflictError(
            f"run {row.run_id} at epoch {epoch} is claimed by worker {row.claim_worker}"
        )
    row.claim_worker = None
    row.claim_expires = None
    row.claim_seq = None


# -- retention ---------------------------------------------------------------------------


def is_protected(seq: int, status: str, latest_seq: int, claimed_seq: int | None) -> bool:
    """Checkpoints that prune/expire never remove."""
    return (
        seq == latest_seq
        or status == CheckpointStatus.PENDING_INPUT.value
        or (claimed_seq is not None and seq == claimed_seq)
    )


def retention_victims(
    entries: Iterable[tuple[int, str, int]],
    *,
    keep: int | None,
    cutoff: int | None,
    row: RunRow | None,
    now: int,
) -> list[int]:
    """Seqs to delete among ``entries`` ``(seq, status, created_at)``.

    ``keep``: prune to the ``keep`` newest; ``cutoff``: expire those created
    before it. Latest, pending-input and live-claimed checkpoints always stay.
    """
    ordered = sorted(entries, key=lambda e: e[0], reverse=True)
    if not ordered:
        return []
    latest = ordered[0][0]
    claimed = row.claim_seq if row is not None and row.live_claim(now) else None
    victims = []
    for index, (seq, status, created) in enumerate(ordered):
        if keep is not None and index < keep:
            continue
        if cutoff is not None and created >= cutoff:
            continue
        if is_protected(seq, status, latest, claimed):
            continue
        victims.append(seq)
    return victims


# -- run listing -------------------------------------------------------------------------


def encode_cursor(updated_at: int, run_id: str) -> str:
    """An opaque cursor: the position after the run ``(updated_at, run_id)``."""
    return base64.urlsafe_b64encode(f"{updated_at}|{run_id}".encode()).decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; :class:`InvalidIdError` when malformed."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
        micros, _, run_id = text.partition("|")
        return int(micros), validate_id(run_id, "run_id")
    except (ValueError, UnicodeError, binascii.Error, InvalidIdError) as exc:
        raise InvalidIdError(
            f"invalid cursor {cursor!r}: pass the next_cursor of a previous page"
        ) from exc


def page_runs(
    rows: Iterable[RunRow],
    *,
    flow_id: str | None,
    status: CheckpointStatus | None,
    tenant_id: str | None,
    limit: int,
    cursor: str | None,
    now: int,
) -> tuple[list[RunInfo], str | None]:
    """Filter, order (``updated_at`` desc, then ``run_id`` desc) and page ``rows``."""
    after = decode_cursor(cursor) if cursor is not None else None
    selected = [
        r
        for r in rows
        if (flow_id is None or r.flow_id == flow_id)
        and (status is None or r.status == status)
        and (tenant_id is None or r.tenant_id == tenant_id)
        and (after is None or (r.updated_at, r.run_id) < after)
    ]
    selected.sort(key=lambda r: (r.updated_at, r.run_id), reverse=True)
    page = selected[:limit]
    more = len(selected) > limit
    next_cursor = encode_cursor(page[-1].updated_at, page[-1].run_id) if more else None
    return [r.to_info(now) for r in page], next_cursor


class LoopLock:
    """An :class:`asyncio.Lock` for whichever event loop is running.

    Stores are built outside any loop (in a ``CheckpointConfig``) and ``run_sync``
    callers may use a new loop per call; a plain Lock would be bound to the first.
    """

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
        return self._lock
