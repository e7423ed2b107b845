"""The checkpoint domain: models, the lossless codec, the store contract and stores."""

from checkpoint.errors import *  # noqa: F403
from checkpoint.errors import __all__ as _errors_all
from checkpoint.models import (
    SCHEMA_VERSION,
    CheckpointConfig,
    CheckpointStatus,
    ErrorInfo,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    ParentRef,
    PendingInput,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    register_migration,
    utcnow,
)

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointConfig",
    "CheckpointStatus",
    "ErrorInfo",
    "FlowCheckpoint",
    "NodeState",
    "NodeStatus",
    "ParentRef",
    "PendingInput",
    "checkpoint_from_bytes",
    "checkpoint_to_bytes",
    "register_migration",
    "utcnow",
    *_errors_all,
]
