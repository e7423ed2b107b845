"""The store contract every checkpoint store implements.

A store keeps, per run, an append-only history of sealed checkpoints keyed by
``(run_id, seq)``, a ``runs`` record (latest seq, status, claim), and the
human answers submitted for the run. Every store passes the shared
conformance suite in ``tests/conformance/``.

Semantics shared by all stores:

* ``put`` is idempotent: the same ``(run_id, seq)`` with the same SHA-256 is
  ``duplicate``; with another SHA-256 it raises :class:`SeqConflictError`.
* Fencing: a run starts at epoch 0; each successful ``claim`` bumps the
  epoch. ``put`` must carry the run's current epoch, else
  :class:`StaleEpochError`.
* "Latest" is ``max(seq)``, never a timestamp.
* ``prune`` and ``expire`` never remove a run's latest checkpoint, a
  ``pending_input`` checkpoint, or the checkpoint a live claim was given.
* Human answers are unique per ``(run_id, path)``; ``consume_inputs``
  marks them consumed exactly once, even under concurrent callers.

Stores implement the ``*_sealed`` primitives on :class:`SealedCheckpoint`
records; :class:`BaseStore` turns models into records and back, so every
store verifies checksums the same way.

Encryption at rest: give a store a :class:`checkpoint.crypto.Keyring` (``store.keyring =
Keyring.load()``) and :meth:`BaseStore.seal_raw` encrypts each compressed blob (AES-GCM,
bound to ``tenant_id/run_id/seq``) while :meth:`BaseStore.open_raw` decrypts it, in every
store alike. Plain rows (written before encryption was on) still open.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from checkpoint import codec, crypto
from checkpoint.errors import CorruptCheckpointError
from checkpoint.ids import validate_id
from checkpoint.models import (
    CheckpointStatus,
    FlowCheckpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from checkpoint.retention import SUMMARY_KEY, policy_summary

__all__ = [
    "BaseStore",
    "CheckpointStore",
    "CheckpointSummary",
    "ClaimInfo",
    "InputRecord",
    "PutOutcome",
    "RunInfo",
    "RunPage",
    "SealedCheckpoint",
    "summarize",
]

PutOutcome = Literal["stored", "duplicate"]


class ClaimInfo(BaseModel):
    """A worker's lease on a run. ``epoch`` fences writes from earlier holders."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    worker_id: str
    epoch: int
    lease_expires_at: dt.datetime
    seq: int | None = None  # the checkpoint the claim was given (latest at claim time)


class RunInfo(BaseModel):
    """A run's summary row."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    tenant_id: str
    flow_id: str
    status: CheckpointStatus
    latest_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime
    pending_inputs: list[str] = []
    epoch: int = 0
    claim: ClaimInfo | None = None


class RunPage(BaseModel):
    """One page of :meth:`CheckpointStore.list_runs`, newest first."""

    runs: list[RunInfo]
    next_cursor: str | None = None


class CheckpointSummary(BaseModel):
    """A checkpoint's listing row (no payload)."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    seq: int
    status: CheckpointStatus
    created_at: dt.datetime
    sha256: str
    raw_size: int
    stored_size: int


class InputRecord(BaseModel):
    """A human's answer to a pending input, as submitted to the store."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    path: str
    answer: Any
    submitted_at: dt.datetime
    consumed: bool = False


@dataclass(slots=True)
class SealedCheckpoint:
    """A checkpoint ready for storage: index fields, zstd blob, checksum.

    ``summary`` holds what listings need without decompressing: completed
    node ids and pending input paths.
    """

    tenant_id: str
    flow_id: str
    run_id: str
    seq: int
    status: CheckpointStatus
    schema_version: int
    sha256: str
    raw_size: int
    blob: bytes
    created_at: dt.datetime
    summary: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None

    @property
    def stored_size(self) -> int:
        return len(self.blob)

    def to_summary(self) -> CheckpointSummary:
        return CheckpointSummary(
            run_id=self.run_id,
            seq=self.seq,
            status=self.status,
            created_at=self.created_at,
            sha256=self.sha256,
            raw_size=self.raw_size,
            stored_size=self.stored_size,
        )


def summarize(cp: FlowCheckpoint) -> dict[str, Any]:
    """The listing summary of a checkpoint (stored beside the payload)."""
    summary: dict[str, Any] = {
        "completed": cp.completed_node_ids(),
        "pending_inputs": [p.path for p in cp.pending_inputs],
        "nodes": len(cp.node_states),
    }
    # The run's retention policy, so the sidecar's retention task reads it without the payload.
    policy = policy_summary(cp.metadata) if cp.metadata else None
    if policy is not None:
        summary[SUMMARY_KEY] = policy
    return summary


@runtime_checkable
class CheckpointStore(Protocol):
    """What the flow runtime and the sidecar need from a store."""

    async def put(self, cp: FlowCheckpoint, *, epoch: int = 0) -> PutOutcome: ...
    async def get(self, run_id: str, seq: int | None = None) -> FlowCheckpoint | None: ...
    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]: ...
    async def get_run(self, run_id: str) -> RunInfo | None: ...
    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage: ...
    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo: ...
    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo: ...
    async def release(self, run_id: str, worker_id: str, epoch: int) -> None: ...
    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord: ...
    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]: ...
    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]: ...
    async def delete_run(self, run_id: str) -> bool: ...
    async def prune(self, run_id: str, max_checkpoints: int) -> int: ...
    async def expire(self, older_than: dt.datetime) -> int: ...
    async def close(self) -> None: ...


class BaseStore(abc.ABC):
    """Shared model <-> sealed-record logic. Subclasses implement the ``_``-prefixed primitives.

    Encoding and compression of payloads over ``offload_bytes`` run in a
    worker thread so a large checkpoint does not stall the event loop.
    """

    compression_level: int = 3
    max_payload_bytes: int = codec.DEFAULT_MAX_DECOMPRESSED
    offload_bytes: int = 256 * 1024
    #: Encrypts sealed blobs at rest when set (see the module docstring).
    keyring: crypto.Keyring | None = None

    # -- model level (what the runtime calls) ---------------------------------------------

    async def put(self, cp: FlowCheckpoint, *, epoch: int = 0) -> PutOutcome:
        """Store ``cp``; ``"stored"`` or ``"duplicate"`` (same seq, same checksum)."""
        record = self.seal_checkpoint(cp)
        return await self.put_sealed(record, epoch=epoch)

    async def get(self, run_id: str, seq: int | None = None) -> FlowCheckpoint | None:
        """The checkpoint at ``seq`` (latest when None), verified; None when absent.

        Raises :class:`CorruptCheckpointError` (or its subclass
        :class:`ChecksumMismatchError`) when the stored bytes are damaged.
        """
        record = await self.get_sealed(validate_id(run_id, "run_id"), seq)
        if record is None:
            return None
        return await self.open_record(record)

    def seal_checkpoint(self, cp: FlowCheckpoint) -> SealedCheckpoint:
        """Encode, hash and compress ``cp`` into a storage record."""
        raw = checkpoint_to_bytes(cp)
        return self.seal_raw(cp, raw)

    def seal_raw(
        self, cp: FlowCheckpoint, raw: bytes, sha256: str | None = None
    ) -> SealedCheckpoint:
        """Build a record from already-encoded canonical bytes of ``cp``."""
        sealed = codec.seal(raw, level=self.compression_level, sha256=sha256)
        blob = sealed.blob
        if self.keyring is not None:
            blob = self.keyring.encrypt(blob, crypto.record_aad(cp.tenant_id, cp.run_id, cp.seq))
        return SealedCheckpoint(
            tenant_id=cp.tenant_id,
            flow_id=cp.flow_id,
            run_id=cp.run_id,
            seq=cp.seq,
            status=cp.status,
            schema_version=cp.schema_version,
            sha256=sealed.sha256,
            raw_size=sealed.raw_size,
            blob=blob,
            created_at=cp.created_at,
            summary=summarize(cp),
            trace_id=_trace_id(cp.trace_context),
        )

    async def open_record(self, record: SealedCheckpoint) -> FlowCheckpoint:
        """Decompress, verify and parse a stored record."""
        if record.raw_size > self.offload_bytes:
            return await asyncio.to_thread(self._open_record_sync, record)
        return self._open_record_sync(record)

    def open_raw(self, record: SealedCheckpoint) -> bytes:
        """The verified canonical bytes of a stored record (decrypted, decompressed, hashed).

        Raises :class:`CorruptCheckpointError` (or a subclass: checksum mismatch,
        decryption failure, missing encryption key) when they cannot be trusted.
        """
        aad = crypto.record_aad(record.tenant_id, record.run_id, record.seq)
        blob = crypto.open_blob(self.keyring, record.blob, aad)
        return codec.open_sealed(blob, record.sha256, max_size=self.max_payload_bytes)

    def _open_record_sync(self, record: SealedCheckpoint) -> FlowCheckpoint:
        raw = self.open_raw(record)
        cp = checkpoint_from_bytes(raw)
        if cp.run_id != record.run_id or cp.seq != record.seq:
            raise CorruptCheckpointError(
                f"stored checkpoint {record.run_id}#{record.seq} holds "
                f"{cp.run_id}#{cp.seq}: the row was copied or tampered with"
            )
        return cp

    # -- record level (what subclasses implement; the sidecar writes records directly) ------

    @abc.abstractmethod
    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> PutOutcome: ...

    @abc.abstractmethod
    async def get_sealed(self, run_id: str, seq: int | None = None) -> SealedCheckpoint | None: ...

    # -- everything else is the protocol, implemented per store ----------------------------

    @abc.abstractmethod
    async def list_checkpoints(
        self, run_id: str, *, limit: int = 100, before_seq: int | None = None
    ) -> list[CheckpointSummary]: ...

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunInfo | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        flow_id: str | None = None,
        status: CheckpointStatus | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage: ...

    @abc.abstractmethod
    async def claim(self, run_id: str, worker_id: str, lease_seconds: float) -> ClaimInfo: ...

    @abc.abstractmethod
    async def renew(
        self, run_id: str, worker_id: str, epoch: int, lease_seconds: float
    ) -> ClaimInfo: ...

    @abc.abstractmethod
    async def release(self, run_id: str, worker_id: str, epoch: int) -> None: ...

    @abc.abstractmethod
    async def submit_input(self, run_id: str, path: str, answer: Any) -> InputRecord: ...

    @abc.abstractmethod
    async def list_inputs(
        self, run_id: str, *, include_consumed: bool = False
    ) -> list[InputRecord]: ...

    @abc.abstractmethod
    async def consume_inputs(self, run_id: str, paths: Sequence[str]) -> list[str]: ...

    @abc.abstractmethod
    async def delete_run(self, run_id: str) -> bool: ...

    @abc.abstractmethod
    async def prune(self, run_id: str, max_checkpoints: int) -> int: ...

    @abc.abstractmethod
    async def expire(self, older_than: dt.datetime) -> int: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. Safe to call twice."""


def _trace_id(traceparent: str | None) -> str | None:
    # W3C traceparent: version-traceid-spanid-flags
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
