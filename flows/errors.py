"""Errors of the flow runtime, on top of those in :mod:`checkpoint.errors`.

The checkpoint errors a flow call can raise (``ConfigError``,
``GraphMismatchError``, ``InputValidationError``, ``RunNotFoundError``,
``CorruptCheckpointError``...) are re-exported here, so ``flows.errors`` is
the one place a workflow author imports errors from.
"""

from __future__ import annotations

from collections.abc import Sequence

from checkpoint import errors as _ck
from checkpoint.errors import (
    CheckpointNotFoundError,
    ClaimConflictError,
    CodecError,
    ConfigError,
    CorruptCheckpointError,
    FlowpointError,
    GraphMismatchError,
    InputValidationError,
    InvalidIdError,
    RunNotFoundError,
    StaleEpochError,
    StoreError,
)
from checkpoint.models import PendingInput

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "ClaimConflictError",
    "CodecError",
    "ConfigError",
    "CorruptCheckpointError",
    "EventLoopRunningError",
    "FlowpointError",
    "GraphMismatchError",
    "InputValidationError",
    "Interrupt",
    "InvalidIdError",
    "NodeExecutionError",
    "RunExistsError",
    "RunNotFoundError",
    "StaleEpochError",
    "StoreError",
]


class Interrupt(BaseException):
    """A node asks a human: raised by ``ctx.interrupt`` when no answer is recorded yet.

    It derives from :class:`BaseException`, not :class:`Exception`, so an
    ``except Exception`` in a node, a tool wrapper or an agent loop does not
    swallow it: it travels up to the scheduler, which marks the node
    ``waiting`` (keeping its internal state) and lists the pending inputs.
    Code that runs several asks at once (a map, an agent calling tools in
    parallel) may raise one Interrupt carrying all of them.
    """

    def __init__(self, pending_inputs: Sequence[PendingInput]) -> None:
        if not pending_inputs:
            raise ValueError("an Interrupt needs at least one pending input")
        self.pending_inputs: list[PendingInput] = list(pending_inputs)
        paths = ", ".join(p.path for p in self.pending_inputs)
        super().__init__(f"waiting for human input at {paths}")

    @property
    def pending_input(self) -> PendingInput:
        """The first (usually the only) pending input."""
        return self.pending_inputs[0]


class RunExistsError(FlowpointError):
    """``run(run_id=...)`` names a run the store already has: resume it instead."""


class CheckpointSaveError(StoreError):
    """A checkpoint could not be saved and ``on_save_error="raise"`` makes that fatal."""


class EventLoopRunningError(FlowpointError, RuntimeError):
    """A ``*_sync`` method was called from inside a running event loop.

    Use the async method instead (``await flow.run(...)``).
    """


class NodeExecutionError(_ck.NodeExecutionError):
    """A node raised; the run ended ``failed`` and can be resumed after a fix.

    Raised only once the failure checkpoint is durable. ``__cause__`` is the
    node's own exception; ``run_id``, ``node_id`` and ``seq`` (the failure
    checkpoint, 0 when none was saved) say where to resume.
    """

    def __init__(self, message: str, *, run_id: str, node_id: str, seq: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.node_id = node_id
        self.seq = seq
