"""Building checkpoint snapshots and writing them in order, per durability mode.

:class:`SnapshotBuilder` turns the run's state into the canonical bytes of a
:class:`~checkpoint.models.FlowCheckpoint` at the moment of the event, so
later mutation of a node's output or state never changes what is saved. It
keeps each node's encoded state and the encoded constant fields, so a save
encodes only what changed (one node) and joins bytes for the rest; the result
is byte-identical to :func:`checkpoint.models.checkpoint_to_bytes`.

:class:`CheckpointWriter` writes snapshots to a store, serialized and in seq
order:

* ``sync``: each save is awaited;
* ``async``: saves go to a bounded queue drained by one writer task, in order;
  a full queue blocks the caller (nothing is ever dropped); saves marked
  durable (failure, pending input, completion) wait for the queue to drain
  up to them;
* ``exit``: the flow submits only failed, pending-input and completed
  checkpoints; each is awaited.

A failed save either logs a warning and marks the run degraded
(``on_save_error="warn"``) or is fatal (``"raise"``,
:class:`~flows.errors.CheckpointSaveError`). A stale epoch, a seq conflict or a
tenant mismatch is always fatal: another worker owns the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import context as otel_context
from pydantic import BaseModel, TypeAdapter

from checkpoint import codec
from checkpoint.errors import (
    CodecError,
    PayloadTooLargeError,
    SeqConflictError,
    StaleEpochError,
    TenantMismatchError,
)
from checkpoint.models import (
    SCHEMA_VERSION,
    CheckpointStatus,
    FlowCheckpoint,
    NodeState,
    ParentRef,
    PendingInput,
    checkpoint_from_bytes,
    node_state_to_bytes,
    utcnow,
)
from checkpoint.retention import policy_entries
from checkpoint.store import BaseStore, CheckpointStore, SealedCheckpoint
from flows.errors import CheckpointSaveError
from flows.redact import Redactor

__all__ = ["CheckpointWriter", "Snapshot", "SnapshotBuilder"]

logger = logging.getLogger("flows")

_DATETIME = TypeAdapter(dt.datetime)
_DYNAMIC = frozenset({"seq", "status", "created_at", "node_states", "pending_inputs", "metadata"})
_FATAL = (StaleEpochError, SeqConflictError, TenantMismatchError)


@dataclass(slots=True)
class Snapshot:
    """One checkpoint ready to write: its canonical bytes and an index-only model.

    ``header`` carries the ids, seq, status, node statuses and pending paths a
    store needs to index the record; its user values are not filled in (the
    bytes are the checkpoint).
    """

    seq: int
    status: CheckpointStatus
    raw: bytes
    header: FlowCheckpoint
    done: asyncio.Future[None] | None = None
    # The trace context of the moment the snapshot was taken: the async writer writes
    # under it, so the checkpoint span stays a child of the node that produced it.
    context: otel_context.Context | None = None

    def checkpoint(self) -> FlowCheckpoint:
        """The full checkpoint, decoded from the bytes (an independent copy)."""
        return checkpoint_from_bytes(self.raw)


_FIELD_KEYS = {name: codec.canonical_json(name) for name in FlowCheckpoint.model_fields}
_STATUS_JSON = {status: codec.canonical_json(status.value) for status in CheckpointStatus}
_EMPTY_LIST = b"[]"
_MAX_BATCH = 32


def _dump(model: BaseModel) -> Any:
    """``model.model_dump(mode="json")``, raising the codec's own error for odd values."""
    try:
        return model.model_dump(mode="json", by_alias=True)
    except (ValueError, TypeError) as exc:
        # pydantic wraps the CodecError raised inside field serializers.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, CodecError):
            raise cause from None
        raise CodecError(str(exc)) from exc


class SnapshotBuilder:
    """Incremental canonical encoding of one run's checkpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        tenant_id: str,
        flow_id: str,
        run_id: str,
        graph_fingerprint: str,
        original_input: Any,
        parent: ParentRef | None = None,
        trace_context: str | None = None,
        redact: Redactor | None = None,
        max_payload_bytes: int | None = None,
    ) -> None:
        self._redact = redact if redact else None
        self.max_payload_bytes = max_payload_bytes
        base = FlowCheckpoint(
            tenant_id=tenant_id,
            flow_id=flow_id,
            run_id=run_id,
            seq=0,
            graph_fingerprint=graph_fingerprint,
            original_input=self._mask(original_input),
            parent=parent,
            trace_context=trace_context,
        )
        # Raises CodecError when the input cannot be checkpointed.
        doc = _dump(base)
        self._static = {k: codec.canonical_json(v) for k, v in doc.items() if k not in _DYNAMIC}
        self._tenant_id = tenant_id
        self._flow_id = flow_id
        self._run_id = run_id
        self._graph_fingerprint = graph_fingerprint
        self._parent = parent
        self._trace_context = trace_context
        # Each node's '"id":{...}' entry, encoded once per event and joined per save.
        self._entries: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._sorted_ids: list[str] = []
        self._joined: bytes | None = None
        self._states: dict[str, NodeState] = {}
        self._field_order = sorted(doc)

    def _mask(self, value: Any) -> Any:
        return self._redact(value) if self._redact is not None else value

    def _mask_pending(self, pending: PendingInput) -> PendingInput:
        # A pending input's metadata is user data like any other (ctx.interrupt(metadata=)).
        if self._redact is None or not pending.metadata:
            return pending
        masked = self._redact(pending.metadata)
        return (
            pending
            if masked is pending.metadata
            else pending.model_copy(update={"metadata": masked})
        )

    def set_node(self, state: NodeState) -> None:
        """Record ``state`` as the node's current state, encoding it now.

        Raises :class:`~checkpoint.errors.CodecError` when a value cannot be
        checkpointed; the node's previous state is kept then.
        """
        if self._redact is not None:
            state = state.model_copy(
                update={
                    "input": self._redact(state.input),
                    "output": self._redact(state.output),
                    "internal_state": self._redact(state.internal_state),
                }
            )
        encoded = node_state_to_bytes(state)
        node_id = state.node_id
        key = self._keys.get(node_id)
        if key is None:
            key = self._keys[node_id] = codec.canonical_json(node_id) + b":"
            self._sorted_ids = sorted(self._keys)
        self._entries[node_id] = key + encoded
        self._joined = None
        self._states[node_id] = state

    def set_nodes(self, states: Iterable[NodeState]) -> None:
        """:meth:`set_node` for each state."""
        for state in states:
            self.set_node(state)

    @property
    def node_ids(self) -> list[str]:
        """Ids of the nodes recorded so far."""
        return list(self._sorted_ids)

    def build(
        self,
        *,
        seq: int,
        status: CheckpointStatus,
        pending_inputs: list[PendingInput],
        metadata: Mapping[str, Any],
    ) -> Snapshot:
        """The snapshot at ``seq`` of everything recorded so far.

        Raises :class:`~checkpoint.errors.CodecError` or
        :class:`~checkpoint.errors.PayloadTooLargeError`.
        """
        created_at = utcnow()
        if self._joined is None:
            entries = self._entries
            self._joined = b"{" + b",".join([entries[nid] for nid in self._sorted_ids]) + b"}"
        parts = dict(self._static)
        parts["seq"] = str(int(seq)).encode()
        parts["status"] = _STATUS_JSON[status]
        parts["created_at"] = _DATETIME.dump_json(created_at)
        parts["pending_inputs"] = (
            codec.canonical_json([_dump(self._mask_pending(p)) for p in pending_inputs])
            if pending_inputs
            else _EMPTY_LIST
        )
        parts["metadata"] = codec.canonical_json(codec.to_jsonable(self._mask(dict(metadata))))
        parts["node_states"] = self._joined
        raw = b"{" + b",".join([_FIELD_KEYS[k] + b":" + parts[k] for k in self._field_order]) + b"}"
        if self.max_payload_bytes is not None and len(raw) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"checkpoint {self._run_id}#{seq} is {len(raw)} bytes, over "
                f"max_payload_bytes={self.max_payload_bytes}: keep large data out of node "
                "outputs and state (store a reference instead)"
            )
        header = FlowCheckpoint.model_construct(
            tenant_id=self._tenant_id,
            flow_id=self._flow_id,
            run_id=self._run_id,
            graph_fingerprint=self._graph_fingerprint,
            parent=self._parent,
            trace_context=self._trace_context,
            seq=seq,
            status=status,
            node_states=dict(self._states),
            pending_inputs=list(pending_inputs),
            schema_version=SCHEMA_VERSION,
            created_at=created_at,
            original_input=None,
            # Only the retention policy: the store copies it into the listing summary.
            metadata=policy_entries(metadata),
        )
        return Snapshot(seq=seq, status=status, raw=raw, header=header)


AfterPut = Callable[[Snapshot], Awaitable[None]]


class CheckpointWriter:
    """Writes snapshots of one run to ``store`` in seq order (see the module docstring).

    The caller assigns seqs and calls :meth:`save` right after building each
    snapshot, with no ``await`` in between: saves are then written in the
    order they were built.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        run_id: str,
        durability: Literal["sync", "async", "exit"] = "sync",
        queue_size: int = 64,
        on_save_error: Literal["warn", "raise"] = "warn",
        epoch: int = 0,
        prune_every: int | None = None,
        after_put: AfterPut | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.durability = durability
        self.on_save_error = on_save_error
        self.epoch = epoch
        self.prune_every = prune_every
        self.after_put = after_put
        self.degraded = False
        self.last_durable_seq = 0
        self.saved = 0
        self._fatal: BaseException | None = None
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Snapshot] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------------------

    async def save(self, snap: Snapshot, *, durable: bool = False) -> None:
        """Write ``snap``: now (sync/exit, or ``durable``) or through the queue (async)."""
        if self._fatal is not None:
            raise self._fatal
        if self.durability != "async":
            async with self._lock:
                await self._write(snap)
            return
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"flowpoint writer {self.run_id}")
        if durable:
            snap.done = asyncio.get_running_loop().create_future()
        snap.context = otel_context.get_current()
        # The lock keeps enqueue order = call order even while the queue is full
        # (asyncio.Queue lets a newcomer overtake a woken putter).
        async with self._lock:
            await self._queue.put(snap)
        if snap.done is not None:
            await snap.done

    async def flush(self) -> None:
        """Wait until every queued snapshot is written; raise a fatal save error if any."""
        if self._task is not None and not self._task.done():
            await self._queue.join()
        if self._fatal is not None:
            raise self._fatal

    async def close(self) -> None:
        """Flush what is queued (errors are logged, not raised) and stop the writer task."""
        try:
            await self.flush()
        except Exception as exc:
            logger.debug("run %s: writer closed after a fatal save error: %s", self.run_id, exc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- internals ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                records = await self._seal_batch(batch)
                errors = await self._put_many(batch, records)
                for index, snap in enumerate(batch):
                    try:
                        if self._fatal is not None:
                            raise self._fatal
                        if errors is None:
                            await self._write_in_context(snap, records[index])
                        else:
                            await self._settle(snap, errors[index])
                        if snap.done is not None and not snap.done.done():
                            snap.done.set_result(None)
                    except Exception as exc:
                        self._fatal = self._fatal or exc
                        if snap.done is not None and not snap.done.done():
                            snap.done.set_exception(exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _seal_batch(self, batch: list[Snapshot]) -> list[SealedCheckpoint | None]:
        """Seal a backlog in one worker-thread call (zstd and SHA-256 release the GIL)."""
        store = self.store
        if len(batch) == 1 or not isinstance(store, BaseStore):
            return [None] * len(batch)  # sealed by _write, on the loop or offloaded if large
        try:
            return await asyncio.to_thread(
                lambda: [store.seal_raw(snap.header, snap.raw) for snap in batch]
            )
        except Exception:
            return [None] * len(batch)  # each is sealed again by _write, which reports errors

    async def _put_many(
        self, batch: list[Snapshot], records: list[SealedCheckpoint | None]
    ) -> list[BaseException | None] | None:
        """One call for a backlog when the store writes batches (one transaction), else None.

        Returns, per snapshot, the error that refused it or None when it is stored.
        """
        put_many = getattr(self.store, "put_sealed_many", None)
        if put_many is None or len(batch) == 1:
            return None
        sealed = [r for r in records if r is not None]
        if len(sealed) != len(batch):
            return None
        try:
            results = await put_many([(record, self.epoch) for record in sealed])
        except Exception as exc:
            return [exc] * len(batch)
        return [r if isinstance(r, BaseException) else None for r in results]

    async def _write_in_context(self, snap: Snapshot, record: SealedCheckpoint | None) -> None:
        token = otel_context.attach(snap.context) if snap.context is not None else None
        try:
            await self._write(snap, record)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _write(self, snap: Snapshot, record: SealedCheckpoint | None = None) -> None:
        store = self.store
        try:
            if isinstance(store, BaseStore):
                if record is None:
                    if len(snap.raw) > store.offload_bytes:
                        record = await asyncio.to_thread(store.seal_raw, snap.header, snap.raw)
                    else:
                        record = store.seal_raw(snap.header, snap.raw)
                await store.put_sealed(record, epoch=self.epoch)
            else:
                await store.put(snap.checkpoint(), epoch=self.epoch)
        except Exception as exc:
            await self._settle(snap, exc)
            return
        await self._settle(snap, None)

    async def _settle(self, snap: Snapshot, error: BaseException | None) -> None:
        """Account for one written (or refused) snapshot, in seq order."""
        if error is not None:
            if isinstance(error, _FATAL):
                self._fatal = error
                raise error
            self.failed(error, f"checkpoint {self.run_id}#{snap.seq}")
            return
        self.last_durable_seq = max(self.last_durable_seq, snap.seq)
        self.saved += 1
        if self.after_put is not None:
            await self.after_put(snap)
        if self.prune_every is not None and self.saved % self.prune_every == 0:
            try:
                await self.store.prune(self.run_id, self.prune_every)
            except Exception as exc:
                logger.warning(
                    "run %s: pruning old checkpoints failed (%s: %s)",
                    self.run_id,
                    type(exc).__name__,
                    exc,
                )

    def failed(self, exc: BaseException, what: str) -> None:
        """Handle a save failure per ``on_save_error``: raise, or warn and mark degraded."""
        message = f"{what} could not be saved: {type(exc).__name__}: {exc}"
        if self.on_save_error == "raise":
            error = CheckpointSaveError(message)
            error.__cause__ = exc
            self._fatal = error
            raise error
        self.degraded = True
        logger.warning("run %s: %s (the run continues, degraded)", self.run_id, message)
