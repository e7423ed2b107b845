"""The :class:`Flow`: run, resume and fork a graph of nodes with checkpoints.

Checkpoints of one run (``seq`` starts at 1 and grows by one per save):

* on start (status ``active``, the original input, before any node runs), if ``on_start``;
* after each node finishes, fails or pauses, if ``after_node``;
* when a node calls ``await ctx.save_state()``, if ``mid_node``;
* on failure (``failed``) if ``on_failure``; on pending input (``pending_input``)
  and on completion (``completed``) always. These three are durable before
  ``run``/``resume`` returns or raises, whatever the durability mode.

Nodes listed in ``exclude_nodes`` never appear in ``node_states``: they run
again on every resume (their dependants that already succeeded do not).
Fields listed in ``redact`` are masked in checkpoints only: a resumed node gets
``"***REDACTED***"`` for them.

With no config, ``enabled=False`` or no store, the flow does no checkpoint
work at all: no snapshot, no encoding, no store call.

``wait_for_input_seconds`` (on the flow, or per ``run``/``resume`` call; 0 by
default): when a node pauses for input, the run makes the question visible
(a checkpoint listing it) and polls the store for an answer
(``store.list_inputs``) up to that long. An answer that arrives is validated,
recorded in the node's state, consumed once a checkpoint holding it is
durable, and the node continues in this process; when time runs out the run
ends ``pending_input`` as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import logging
import os
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema

from checkpoint.errors import (
    CheckpointNotFoundError,
    ClaimConflictError,
    CodecError,
    ConfigError,
    CorruptCheckpointError,
    GraphMismatchError,
    InputValidationError,
    PayloadTooLargeError,
    RunNotFoundError,
    StaleEpochError,
)
from checkpoint.ids import validate_id
from checkpoint.models import (
    CheckpointConfig,
    CheckpointStatus,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    ParentRef,
    PendingInput,
    utcnow,
)
from checkpoint.retention import policy_metadata
from checkpoint.store import CheckpointStore, CheckpointSummary
from flows.context import node_id_of_path
from flows.errors import EventLoopRunningError, NodeExecutionError, RunExistsError
from flows.fingerprint import graph_fingerprint
from flows.node import Node
from flows.redact import Redactor
from flows.saver import CheckpointWriter, Snapshot, SnapshotBuilder
from flows.scheduler import GraphOutcome, GraphRunner, NodeEvent, topological_order
from instrumentation.tracing import current_traceparent, run_span

__all__ = ["Flow", "RunResult"]

logger = logging.getLogger("flows")

_T = TypeVar("_T")


@dataclass(slots=True)
class RunResult:
    """What a ``run``/``resume``/``fork`` call returns (a failed run raises instead).

    ``output`` holds the outputs of the sink nodes (those nothing depends on)
    that have finished, by id; ``seq`` is the last checkpoint saved (0 if
    none); ``degraded`` is True when some save failed; ``executed`` lists the
    nodes run by this call, ``skipped`` those restored from the checkpoint.
    """

    run_id: str
    status: CheckpointStatus
    output: dict[str, Any]
    pending_inputs: list[PendingInput] = field(default_factory=list)
    seq: int = 0
    degraded: bool = False
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _run_blocking(coro: Coroutine[Any, Any, _T], what: str) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise EventLoopRunningError(
        f"{what}_sync() cannot run inside a running event loop (async code, Jupyter): "
        f"use `await flow.{what}(...)` instead"
    )


def _default_worker_id() -> str:
    return f"flows-{os.getpid()}-{uuid.uuid4().hex[:12]}"


async def _call_hook(callbacks: Sequence[Any], name: str, *args: Any) -> None:
    for callback in callbacks:
        hook = getattr(callback, name, None)
        if hook is None:
            continue
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.warning("callback %r.%s raised %s: %s", callback, name, type(exc).__name__, exc)


class Flow:
    """A named graph of nodes that can run, pause for humans, fail, and resume.

    >>> from flows import FunctionNode
    >>> flow = Flow(id="etl", nodes=[
    ...     FunctionNode(id="fetch", fn=lambda inputs: inputs["input"] * 2),
    ...     FunctionNode(id="clean", fn=lambda inputs: inputs["fetch"] + 1, depends=["fetch"]),
    ... ])
    >>> flow.run_sync(20, run_id="r1").output
    {'clean': 41}
    """

    def __init__(
        self,
        id: str,
        nodes: Sequence[Node],
        checkpoint: CheckpointConfig | Mapping[str, Any] | None = None,
        callbacks: Sequence[Any] = (),
        name: str | None = None,
        wait_for_input_seconds: float = 0,
    ) -> None:
        self.id = validate_id(id, "flow id")
        self.name = name or self.id
        self.wait_for_input_seconds = _check_wait(wait_for_input_seconds, self.id)
        if isinstance(checkpoint, Mapping):
            checkpoint = CheckpointConfig.from_mapping(dict(checkpoint))
        if checkpoint is not None and not isinstance(checkpoint, CheckpointConfig):
            raise ConfigError(
                f"checkpoint of flow {self.id!r} must be a CheckpointConfig, got {checkpoint!r}"
            )
        self.nodes: tuple[Node, ...] = tuple(nodes)
        if not self.nodes:
            raise ConfigError(f"flow {self.id!r} has no nodes")
        self.order = topological_order(self.nodes)
        self.by_id = {n.id: n for n in self.nodes}
        has_dependants = {d for n in self.nodes for d in n.depends}
        self.sinks = [nid for nid in self.order if nid not in has_dependants]
        self.checkpoint = checkpoint
        self.callbacks = tuple(callbacks)
        if checkpoint is not None:
            unknown = sorted(set(checkpoint.exclude_nodes) - set(self.by_id))
            if unknown:
                raise ConfigError(
                    f"exclude_nodes of flow {self.id!r} names unknown node(s) {unknown}"
                )

    # -- configuration -----------------------------------------------------------------------

    @functools.cached_property
    def graph_fingerprint(self) -> str:
        """Hash of node ids, types, edges and extras (computed on first use)."""
        return graph_fingerprint(self.nodes)

    @property
    def checkpointing(self) -> bool:
        """True when runs write checkpoints (enabled, with a store)."""
        return self.checkpoint is not None and self.checkpoint.active

    def _store(self) -> CheckpointStore | None:
        if self.checkpoint is None or not self.checkpoint.active:
            return None
        store: CheckpointStore = self.checkpoint.store
        return store

    def _require_store(self, what: str) -> tuple[CheckpointConfig, CheckpointStore]:
        store = self._store()
        if store is None or self.checkpoint is None:
            raise ConfigError(
                f"{what}() needs checkpointing: give flow {self.id!r} "
                "checkpoint=CheckpointConfig(enabled=True, store=...)"
            )
        return self.checkpoint, store

    def _sink_outputs(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {nid: outputs[nid] for nid in self.sinks if nid in outputs}

    # -- run ---------------------------------------------------------------------------------

    async def run(
        self,
        input: Any = None,
        run_id: str | None = None,
        *,
        wait_for_input_seconds: float | None = None,
    ) -> RunResult:
        """Run the flow on ``input`` as a new run (``run_id`` defaults to a random hex id).

        Returns a :class:`RunResult` (status ``completed`` or ``pending_input``);
        a failing node raises :class:`~flows.errors.NodeExecutionError` once the
        failure checkpoint is durable. An id the store already has raises
        :class:`~flows.errors.RunExistsError`. ``wait_for_input_seconds``
        overrides the flow's setting (see the module docstring).
        """
        run_id = validate_id(run_id if run_id is not None else uuid.uuid4().hex, "run_id")
        wait = self._wait(wait_for_input_seconds)
        store = self._store()
        if store is None:
            if wait:
                logger.warning(
                    "run %s: wait_for_input_seconds needs a checkpoint store to poll; "
                    "the run will not wait for answers",
                    run_id,
                )
            return await self._run_plain(input, run_id)
        assert self.checkpoint is not None
        degraded = False
        try:
            exists = await store.get_run(run_id) is not None
        except Exception as exc:
            if self.checkpoint.on_save_error == "raise":
                raise
            # The store is down: checkpoints will fail too; the run goes on, degraded.
            logger.warning(
                "run %s: the checkpoint store is unreachable (%s: %s); running degraded",
                run_id,
                type(exc).__name__,
                exc,
            )
            exists, degraded = False, True
        if exists:
            raise RunExistsError(
                f"run {run_id} already exists in the store: resume it instead "
                f"(flow.resume({run_id!r})) or choose another run_id"
            )
        with run_span(self.id, run_id, operation="run"):
            session = _Session(
                self,
                self.checkpoint,
                store,
                run_id=run_id,
                flow_id=self.id,
                original_input=input,
                next_seq=1,
                epoch=0,
                wait_seconds=wait,
            )
            session.writer.degraded = degraded
            return await session.execute({}, {})

    def run_sync(
        self,
        input: Any = None,
        run_id: str | None = None,
        *,
        wait_for_input_seconds: float | None = None,
    ) -> RunResult:
        """:meth:`run` for sync code (raises if an event loop is running in this thread)."""
        return _run_blocking(
            self.run(input, run_id, wait_for_input_seconds=wait_for_input_seconds), "run"
        )

    def _wait(self, override: float | None) -> float:
        if override is None:
            return self.wait_for_input_seconds
        return _check_wait(override, self.id)

    async def _run_plain(self, input: Any, run_id: str) -> RunResult:
        # No checkpointing: no listener, so the runner builds no snapshot and saves nothing.
        with run_span(self.id, run_id, operation="run"):
            runner = GraphRunner(self.nodes, run_id=run_id, order=self.order)
            outcome = await runner.run(input)
        if outcome.status is CheckpointStatus.FAILED:
            raise _node_error(outcome, run_id, 0, resumable=False)
        return RunResult(
            run_id=run_id,
            status=outcome.status,
            output=self._sink_outputs(outcome.outputs),
            pending_inputs=outcome.pending_inputs,
            executed=outcome.executed,
            skipped=outcome.skipped,
        )

    # -- resume ------------------------------------------------------------------------------

    async def resume(
        self,
        run_id: str,
        seq: int | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        allow_graph_change: bool = False,
        fallback_to_previous: bool = False,
        worker_id: str | None = None,
        lease_seconds: float = 60,
        wait_for_input_seconds: float | None = None,
    ) -> RunResult:
        """Continue run ``run_id`` from checkpoint ``seq`` (the latest when None).

        Completed nodes are not executed again; their saved outputs feed their
        dependants. ``inputs`` answers pending inputs by path; answers
        submitted to the store are used too (explicit ones win) and marked
        consumed once a checkpoint holding them is durable. The run is claimed
        for the duration (``worker_id``, ``lease_seconds``); new checkpoints
        continue after the run's latest seq. A completed run returns its result
        without executing anything (``inputs`` are then ignored).
        ``wait_for_input_seconds`` overrides the flow's setting.
        """
        config, store = self._require_store("resume")
        wait = self._wait(wait_for_input_seconds)
        run_id = validate_id(run_id, "run_id")
        worker_id = validate_id(worker_id or _default_worker_id(), "worker_id")
        claim = await store.claim(run_id, worker_id, lease_seconds)
        renewer = asyncio.create_task(
            _keep_claim(store, run_id, worker_id, claim.epoch, lease_seconds),
            name=f"flowpoint lease {run_id}",
        )
        try:
            cp = await self._load(store, run_id, seq, fallback_to_previous)
            if cp.status is CheckpointStatus.COMPLETED:
                return self._completed_result(cp)
            self._check_graph(cp, allow_graph_change)
            stored = await store.list_inputs(run_id)
            pending = {p.path: p for p in cp.pending_inputs}
            merged: dict[str, Any] = {}
            for record in stored:
                if record.path in pending:
                    merged[record.path] = record.answer
                else:
                    logger.info(
                        "run %s: ignoring the stored answer to %s, not pending at seq %d",
                        run_id,
                        record.path,
                        cp.seq,
                    )
            merged.update(_check_inputs(inputs, pending, run_id, cp.seq))
            _validate_answers(merged, pending)
            latest = claim.seq
            if latest is None:
                info = await store.get_run(run_id)
                latest = info.latest_seq if info is not None else cp.seq
            await _call_hook(self.callbacks, "on_resume", run_id, cp.seq)
            with run_span(self.id, run_id, resumed_from=cp.trace_context, operation="resume"):
                session = _Session(
                    self,
                    config,
                    store,
                    run_id=run_id,
                    flow_id=cp.flow_id,
                    original_input=cp.original_input,
                    next_seq=max(latest, cp.seq) + 1,
                    epoch=claim.epoch,
                    parent=cp.parent,
                    metadata={"resumed_from_seq": cp.seq},
                    carried_pending=[p for p in cp.pending_inputs if p.path not in merged],
                    consume=[r.path for r in stored if r.path in merged],
                    wait_seconds=wait,
                )
                return await session.execute(self._restorable(cp), merged)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await store.release(run_id, worker_id, claim.epoch)
            except Exception as exc:
                logger.warning(
                    "run %s: releasing the claim failed (%s: %s); it lapses after %ss",
                    run_id,
                    type(exc).__name__,
                    exc,
                    lease_seconds,
                )

    def resume_sync(
        self,
        run_id: str,
        seq: int | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        allow_graph_change: bool = False,
        fallback_to_previous: bool = False,
        worker_id: str | None = None,
        lease_seconds: float = 60,
        wait_for_input_seconds: float | None = None,
    ) -> RunResult:
        """:meth:`resume` for sync code."""
        return _run_blocking(
            self.resume(
                run_id,
                seq,
                inputs,
                allow_graph_change=allow_graph_change,
                fallback_to_previous=fallback_to_previous,
                worker_id=worker_id,
                lease_seconds=lease_seconds,
                wait_for_input_seconds=wait_for_input_seconds,
            ),
            "resume",
        )

    async def fork(
        self,
        run_id: str,
        seq: int | None,
        new_run_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        allow_graph_change: bool = False,
    ) -> RunResult:
        """Start a new run from checkpoint ``seq`` of ``run_id`` and continue it like a resume.

        The new run records ``parent=(run_id, seq)`` and numbers its own
        checkpoints from 1; the original run is not touched.
        """
        config, store = self._require_store("fork")
        run_id = validate_id(run_id, "run_id")
        new_run_id = validate_id(new_run_id or uuid.uuid4().hex, "new_run_id")
        cp = await self._load(store, run_id, seq, False)
        if await store.get_run(new_run_id) is not None:
            raise RunExistsError(
                f"run {new_run_id} already exists in the store: resume it instead, "
                "or fork into another new_run_id"
            )
        self._check_graph(cp, allow_graph_change)
        pending = {p.path: p for p in cp.pending_inputs}
        answers = _check_inputs(inputs, pending, run_id, cp.seq)
        _validate_answers(answers, pending)
        await _call_hook(self.callbacks, "on_resume", run_id, cp.seq)
        with run_span(self.id, new_run_id, resumed_from=cp.trace_context, operation="fork"):
            session = _Session(
                self,
                config,
                store,
                run_id=new_run_id,
                flow_id=cp.flow_id,
                original_input=cp.original_input,
                next_seq=1,
                epoch=0,
                parent=ParentRef(run_id=run_id, seq=cp.seq),
                metadata={"forked_from": {"run_id": run_id, "seq": cp.seq}},
                carried_pending=[p for p in cp.pending_inputs if p.path not in answers],
            )
            return await session.execute(self._restorable(cp), answers)

    def fork_sync(
        self,
        run_id: str,
        seq: int | None,
        new_run_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        allow_graph_change: bool = False,
    ) -> RunResult:
        """:meth:`fork` for sync code."""
        return _run_blocking(
            self.fork(run_id, seq, new_run_id, inputs, allow_graph_change=allow_graph_change),
            "fork",
        )

    async def _load(
        self, store: CheckpointStore, run_id: str, seq: int | None, fallback: bool
    ) -> FlowCheckpoint:
        target = seq
        while True:
            try:
                cp = await store.get(run_id, target)
            except CorruptCheckpointError as exc:
                if not fallback:
                    raise
                bad = target if target is not None else await _latest_seq(store, run_id)
                logger.warning(
                    "run %s: checkpoint seq %s is corrupt (%s); falling back to the previous one",
                    run_id,
                    bad,
                    exc,
                )
                if bad is None:
                    raise
                target = await _previous_seq(store, run_id, bad)
                if target is None:
                    raise CorruptCheckpointError(
                        f"run {run_id} has no intact checkpoint at or before seq {bad}"
                    ) from exc
                continue
            if cp is not None:
                return cp
            if await store.get_run(run_id) is None:
                raise RunNotFoundError(f"run {run_id} has no checkpoint in this store")
            raise CheckpointNotFoundError(f"run {run_id} has no checkpoint with seq {target}")

    def _check_graph(self, cp: FlowCheckpoint, allow: bool) -> None:
        if allow:
            return
        if cp.flow_id != self.id:
            raise GraphMismatchError(
                f"run {cp.run_id} belongs to flow {cp.flow_id!r}, not {self.id!r}: resume it "
                "with that flow, or pass allow_graph_change=True"
            )
        if cp.graph_fingerprint != self.graph_fingerprint:
            saved = set(cp.node_states)
            current = set(self.by_id)
            detail = []
            if saved - current:
                detail.append(f"nodes only in the checkpoint: {sorted(saved - current)}")
            if current - saved:
                detail.append(f"nodes not in the checkpoint: {sorted(current - saved)}")
            raise GraphMismatchError(
                f"run {cp.run_id} (seq {cp.seq}) was checkpointed by a different graph "
                f"(fingerprint {cp.graph_fingerprint[:12]} vs {self.graph_fingerprint[:12]}"
                + (f"; {'; '.join(detail)}" if detail else "; node types or edges changed")
                + "): resume with the original flow definition, or pass allow_graph_change=True"
            )

    def _restorable(self, cp: FlowCheckpoint) -> dict[str, NodeState]:
        return {nid: st for nid, st in cp.node_states.items() if nid in self.by_id}

    def _completed_result(self, cp: FlowCheckpoint) -> RunResult:
        outputs = {
            nid: st.output
            for nid, st in cp.node_states.items()
            if st.status is NodeStatus.SUCCEEDED
        }
        return RunResult(
            run_id=cp.run_id,
            status=CheckpointStatus.COMPLETED,
            output=self._sink_outputs(outputs),
            seq=cp.seq,
            skipped=[nid for nid in self.order if nid in outputs],
        )

    # -- inspection --------------------------------------------------------------------------

    async def list_checkpoints(self, run_id: str, limit: int = 10) -> list[CheckpointSummary]:
        """The run's checkpoints, newest first ([] without a store)."""
        store = self._store()
        if store is None:
            return []
        return await store.list_checkpoints(validate_id(run_id, "run_id"), limit=limit)

    def list_checkpoints_sync(self, run_id: str, limit: int = 10) -> list[CheckpointSummary]:
        """:meth:`list_checkpoints` for sync code."""
        return _run_blocking(self.list_checkpoints(run_id, limit), "list_checkpoints")

    async def latest_checkpoint(self, run_id: str) -> FlowCheckpoint | None:
        """The run's latest checkpoint (None when absent or without a store)."""
        store = self._store()
        if store is None:
            return None
        return await store.get(validate_id(run_id, "run_id"))

    def latest_checkpoint_sync(self, run_id: str) -> FlowCheckpoint | None:
        """:meth:`latest_checkpoint` for sync code."""
        return _run_blocking(self.latest_checkpoint(run_id), "latest_checkpoint")

    async def delete_run(self, run_id: str) -> bool:
        """Delete every checkpoint and answer of the run; True if it existed."""
        store = self._store()
        if store is None:
            return False
        return await store.delete_run(validate_id(run_id, "run_id"))

    def delete_run_sync(self, run_id: str) -> bool:
        """:meth:`delete_run` for sync code."""
        return _run_blocking(self.delete_run(run_id), "delete_run")

    def __repr__(self) -> str:
        return f"Flow(id={self.id!r}, nodes={[n.id for n in self.nodes]!r})"


# -- helpers for resume ------------------------------------------------------------------------


async def _keep_claim(
    store: CheckpointStore, run_id: str, worker_id: str, epoch: int, lease_seconds: float
) -> None:
    interval = max(lease_seconds / 3, 0.01)
    while True:
        await asyncio.sleep(interval)
        try:
            await store.renew(run_id, worker_id, epoch, lease_seconds)
        except (StaleEpochError, ClaimConflictError) as exc:
            logger.warning("run %s: lost the claim (%s); saves will be refused", run_id, exc)
            return
        except Exception as exc:
            logger.warning(
                "run %s: renewing the claim failed (%s: %s); retrying",
                run_id,
                type(exc).__name__,
                exc,
            )


async def _latest_seq(store: CheckpointStore, run_id: str) -> int | None:
    info = await store.get_run(run_id)
    return info.latest_seq if info is not None else None


async def _previous_seq(store: CheckpointStore, run_id: str, seq: int) -> int | None:
    try:
        older = await store.list_checkpoints(run_id, limit=1, before_seq=seq)
        return older[0].seq if older else None
    except Exception as exc:  # a listing hurt by the same damage: walk back one by one
        logger.debug("run %s: listing checkpoints failed (%s); stepping back by one", run_id, exc)
        return seq - 1 if seq > 0 else None


def _check_wait(seconds: object, flow_id: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(
            f"wait_for_input_seconds of flow {flow_id!r} must be a number >= 0, got {seconds!r}"
        )
    return float(seconds)


def _check_inputs(
    inputs: Mapping[str, Any] | None,
    pending: Mapping[str, PendingInput],
    run_id: str,
    seq: int,
) -> dict[str, Any]:
    if not inputs:
        return {}
    if not isinstance(inputs, Mapping):
        raise InputValidationError(f"inputs must map input paths to answers, got {inputs!r}")
    unknown = [p for p in inputs if p not in pending]
    if unknown:
        valid = sorted(pending)
        raise InputValidationError(
            f"run {run_id} (seq {seq}) is not waiting for input at {unknown}; "
            + (f"pending input paths: {valid}" if valid else "it has no pending input")
        )
    return dict(inputs)


def _validate_answers(answers: Mapping[str, Any], pending: Mapping[str, PendingInput]) -> None:
    """Check every answer against its input's JSON schema before anything changes."""
    for path, answer in answers.items():
        schema = pending[path].schema_
        if schema is None:
            continue
        try:
            validator_cls = jsonschema.validators.validator_for(schema)
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(
                f"the JSON schema of input {path!r} is invalid: {exc.message}"
            ) from exc
        error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(answer))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "the answer"
            raise InputValidationError(
                f"answer to input {path!r} does not match its schema at {where}: {error.message}; "
                "nothing was changed, send a corrected answer"
            )


def _node_error(
    outcome: GraphOutcome, run_id: str, seq: int, *, resumable: bool
) -> NodeExecutionError:
    first = outcome.first_error
    assert first is not None
    node_id, exc = first
    hint = (
        f"; fix it and resume with flow.resume({run_id!r})"
        if resumable
        else "; enable checkpointing to resume failed runs"
    )
    error = NodeExecutionError(
        f"node {node_id!r} of run {run_id} failed: {type(exc).__name__}: {exc}{hint}",
        run_id=run_id,
        node_id=node_id,
        seq=seq,
    )
    error.__cause__ = exc
    return error


# -- one run/resume/fork call with checkpointing -------------------------------------------------


_TERMINAL_KINDS = frozenset({"failed", "pending_input", "completed"})


class _Session:
    """The checkpointing side of one ``run``/``resume``/``fork`` call."""

    def __init__(
        self,
        flow: Flow,
        config: CheckpointConfig,
        store: CheckpointStore,
        *,
        run_id: str,
        flow_id: str,
        original_input: Any,
        next_seq: int,
        epoch: int,
        parent: ParentRef | None = None,
        metadata: Mapping[str, Any] | None = None,
        carried_pending: Sequence[PendingInput] = (),
        consume: Sequence[str] = (),
        wait_seconds: float = 0,
    ) -> None:
        self.flow = flow
        self.wait_seconds = wait_seconds
        self.config = config
        self.store = store
        self.run_id = run_id
        self.flow_id = flow_id
        self.original_input = original_input
        self.next_seq = next_seq
        self.parent = parent
        # The run's retention policy travels in its checkpoints: the sidecar's retention
        # task applies it (only values off the defaults are written).
        self.metadata = {
            **policy_metadata(config.max_checkpoints, config.retention_days),
            **(metadata or {}),
        }
        self.excluded = frozenset(config.exclude_nodes)
        self.pending: dict[str, PendingInput] = {p.path: p for p in carried_pending}
        self.consume = list(consume)
        self.first_seq = next_seq
        self.has_checkpoint_hooks = any(
            getattr(cb, "on_checkpoint", None) is not None for cb in flow.callbacks
        )
        self.writer = CheckpointWriter(
            store,
            run_id=run_id,
            durability=config.durability,
            queue_size=config.async_queue_size,
            on_save_error=config.on_save_error,
            epoch=epoch,
            prune_every=config.max_checkpoints,
            after_put=self._after_put,
        )
        self.builder: SnapshotBuilder | None = None

    # -- saving ------------------------------------------------------------------------------

    async def _after_put(self, snap: Snapshot) -> None:
        if self.consume and snap.seq >= self.first_seq:
            paths, self.consume = self.consume, []
            try:
                await self.store.consume_inputs(self.run_id, paths)
            except Exception as exc:
                self.consume = paths  # retried after the next durable checkpoint
                logger.warning(
                    "run %s: marking answers %s consumed failed (%s: %s)",
                    self.run_id,
                    paths,
                    type(exc).__name__,
                    exc,
                )
        if self.has_checkpoint_hooks:
            await _call_hook(self.flow.callbacks, "on_checkpoint", snap.checkpoint())

    async def save(self, kind: str, status: CheckpointStatus, node_id: str | None = None) -> None:
        """Build the snapshot now and hand it to the writer (seq assigned here)."""
        terminal = kind in _TERMINAL_KINDS
        if self.builder is None or (self.config.durability == "exit" and not terminal):
            return
        metadata = dict(self.metadata)
        metadata["event"] = kind
        if node_id is not None:
            metadata["node_id"] = node_id
        try:
            snap = self.builder.build(
                seq=self.next_seq,
                status=status,
                pending_inputs=list(self.pending.values()),
                metadata=metadata,
            )
        except (CodecError, PayloadTooLargeError) as exc:
            self.writer.failed(exc, f"checkpoint {self.run_id}#{self.next_seq} ({kind})")
            return
        self.next_seq += 1
        await self.writer.save(snap, durable=terminal)

    def _record(self, state: NodeState) -> bool:
        assert self.builder is not None
        try:
            self.builder.set_node(state)
            return True
        except CodecError as exc:
            self.writer.failed(
                exc,
                f"the state of node {state.node_id!r} ({state.status}); the node will run "
                "again on resume",
            )
            return False

    async def on_event(self, event: NodeEvent) -> None:
        if event.kind != "state_saved":
            for path in [p for p in self.pending if node_id_of_path(p) == event.node_id]:
                del self.pending[path]
            for pending in event.pending_inputs:
                self.pending[pending.path] = pending
        if self.builder is None or event.node_id in self.excluded:
            return
        if event.kind == "state_saved":
            if self.config.mid_node and self._record(event.state):
                await self.save("state", CheckpointStatus.ACTIVE, event.node_id)
            return
        if self._record(event.state) and self.config.after_node:
            await self.save("node", CheckpointStatus.ACTIVE, event.node_id)

    async def wait_for_input(self, event: NodeEvent) -> dict[str, Any]:
        """Poll the store for answers to ``event``'s pending inputs, up to ``wait_seconds``.

        Returns the validated answers that arrived (empty when none did). They
        are recorded in the node's state in the snapshot builder, so every
        later checkpoint holds them, and consumed once such a checkpoint is
        durable; the runner runs the node again with them.
        """
        wanted = {p.path: p for p in event.pending_inputs}
        if not wanted:
            return {}
        saved_by_event = (
            self.config.after_node
            and self.config.durability != "exit"
            and event.node_id not in self.excluded
        )
        if not saved_by_event:
            # Whoever answers must see the question: the sidecar accepts answers only to
            # inputs pending in the latest checkpoint.
            await self.save("pending_input", CheckpointStatus.PENDING_INPUT, event.node_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        delay = 0.05
        refused: set[tuple[str, str]] = set()
        while True:
            found: dict[str, Any] = {}
            try:
                records = await self.store.list_inputs(self.run_id)
            except Exception as exc:
                logger.warning(
                    "run %s: polling for answers failed (%s: %s)",
                    self.run_id,
                    type(exc).__name__,
                    exc,
                )
                records = []
            for record in records:
                if record.path not in wanted:
                    continue
                try:
                    _validate_answers({record.path: record.answer}, wanted)
                except (InputValidationError, ConfigError) as exc:
                    key = (record.path, str(record.submitted_at))
                    if key not in refused:
                        refused.add(key)
                        logger.warning("run %s: ignoring a stored answer: %s", self.run_id, exc)
                    continue
                found[record.path] = record.answer
            if found:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 1.0)
        for path in found:
            self.pending.pop(path, None)
        if self.builder is not None and event.node_id not in self.excluded:
            internal = dict(event.state.internal_state)
            recorded = internal.get("answers")
            internal["answers"] = {**(recorded if isinstance(recorded, dict) else {}), **found}
            self._record(event.state.model_copy(update={"internal_state": internal}))
        # Consumed only once a checkpoint built from now on (holding the answers) is durable.
        self.consume.extend(p for p in found if p not in self.consume)
        self.first_seq = max(self.first_seq, self.next_seq)
        logger.info("run %s: got answers to %s while waiting", self.run_id, sorted(found))
        return found

    # -- the call ------------------------------------------------------------------------------

    def _start_builder(self, node_states: Mapping[str, NodeState]) -> None:
        try:
            self.builder = SnapshotBuilder(
                tenant_id=self.config.tenant_id,
                flow_id=self.flow_id,
                run_id=self.run_id,
                graph_fingerprint=self.flow.graph_fingerprint,
                original_input=self.original_input,
                parent=self.parent,
                trace_context=current_traceparent(),
                redact=Redactor(self.config.redact),
                max_payload_bytes=self.config.max_payload_bytes,
            )
        except CodecError as exc:
            self.writer.failed(exc, f"the input of run {self.run_id} (no checkpoint at all)")
            return
        for nid, state in node_states.items():
            if nid not in self.excluded:
                self._record(state)

    async def execute(
        self, node_states: dict[str, NodeState], answers: Mapping[str, Any]
    ) -> RunResult:
        flow = self.flow
        for path, answer in answers.items():
            # Recorded in the waiting node's state: the first checkpoint makes them durable.
            state = node_states.get(node_id_of_path(path))
            if state is not None:
                recorded = state.internal_state.get("answers")
                if not isinstance(recorded, dict):
                    recorded = state.internal_state["answers"] = {}
                recorded[path] = answer
        try:
            self._start_builder(node_states)
            if self.config.on_start:
                await self.save("start", CheckpointStatus.ACTIVE)
            runner = GraphRunner(
                flow.nodes,
                node_states,
                answers,
                self.on_event,
                run_id=self.run_id,
                order=flow.order,
                wait_for_input=self.wait_for_input if self.wait_seconds > 0 else None,
            )
            outcome = await runner.run(self.original_input)
            status = outcome.status
            if status is CheckpointStatus.COMPLETED:
                self.pending.clear()
                await self.save("completed", status)
            elif status is CheckpointStatus.PENDING_INPUT:
                await self.save("pending_input", status)
            elif self.config.on_failure:
                await self.save("failed", status)
            await self.writer.flush()
            if status is CheckpointStatus.COMPLETED:
                await self._retention()
        finally:
            await self.writer.close()
        seq = self.writer.last_durable_seq
        if status is CheckpointStatus.FAILED:
            raise _node_error(outcome, self.run_id, seq, resumable=True)
        return RunResult(
            run_id=self.run_id,
            status=status,
            output=flow._sink_outputs(outcome.outputs),
            pending_inputs=(
                list(self.pending.values()) if status is CheckpointStatus.PENDING_INPUT else []
            ),
            seq=seq,
            degraded=self.writer.degraded,
            executed=outcome.executed,
            skipped=outcome.skipped,
        )

    async def _retention(self) -> None:
        config = self.config
        try:
            if config.max_checkpoints is not None:
                await self.store.prune(self.run_id, config.max_checkpoints)
            if config.retention_days is not None:
                await self.store.expire(utcnow() - dt.timedelta(days=config.retention_days))
        except Exception as exc:
            logger.warning(
                "run %s: checkpoint retention failed (%s: %s)",
                self.run_id,
                type(exc).__name__,
                exc,
            )
