"""Every error Flowpoint raises on purpose.

Each one says what went wrong and what to do about it. They all derive from
:class:`FlowpointError`, so ``except FlowpointError`` catches exactly the
errors that are ours.
"""

from __future__ import annotations

__all__ = [
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "ClaimConflictError",
    "CodecError",
    "ConfigError",
    "CorruptCheckpointError",
    "DecryptionError",
    "EncryptionKeyMissingError",
    "FlowpointError",
    "GraphMismatchError",
    "InputConflictError",
    "InputValidationError",
    "InvalidIdError",
    "NodeExecutionError",
    "PayloadTooLargeError",
    "RunNotFoundError",
    "SeqConflictError",
    "StaleEpochError",
    "StoreError",
    "StoreUnavailableError",
    "TenantMismatchError",
    "UnknownSchemaVersionError",
]


class FlowpointError(Exception):
    """Base class of every error Flowpoint raises on purpose."""


class ConfigError(FlowpointError, ValueError):
    """A configuration value is invalid (the message names the field)."""


class InvalidIdError(FlowpointError, ValueError):
    """A run, flow, tenant, node or worker id is malformed.

    Ids are 1-128 characters from ``[A-Za-z0-9._:-]`` starting with a letter
    or digit, so they are safe in file names, URLs and SQL.
    """


class CodecError(FlowpointError, ValueError):
    """A value cannot be encoded losslessly, or stored bytes cannot be decoded."""


class CorruptCheckpointError(FlowpointError):
    """Stored checkpoint bytes are damaged (truncated, not zstd, not a checkpoint).

    The checkpoint is never used. Resume from an earlier one with
    ``resume(run_id, seq=...)`` or ``fallback_to_previous=True``.
    """


class ChecksumMismatchError(CorruptCheckpointError):
    """The SHA-256 of a payload is not the one recorded with it."""


class DecryptionError(CorruptCheckpointError):
    """An encrypted checkpoint does not authenticate (AES-GCM tag check failed).

    It was damaged, edited, or copied from another run, seq or tenant (those are bound
    into the encryption): it is never used.
    """


class EncryptionKeyMissingError(CorruptCheckpointError):
    """A checkpoint is encrypted with a key this process does not hold.

    Encryption fails closed: the checkpoint cannot be read until the key (named in the
    message) is added to ``FLOWPOINT_ENCRYPTION_KEYS`` or the keys file. It is handled
    like a corrupt checkpoint everywhere (never used), though its bytes are intact.
    """


class PayloadTooLargeError(FlowpointError, ValueError):
    """A payload exceeds the configured size cap (``max_payload_bytes``)."""


class UnknownSchemaVersionError(FlowpointError):
    """A checkpoint was written by a newer Flowpoint (its ``schema_version`` is unknown).

    Upgrade Flowpoint in this process to read it.
    """


class StoreError(FlowpointError):
    """A store could not complete an operation (I/O, connection, server error)."""


class StoreUnavailableError(StoreError):
    """The store's backend is unreachable; retrying later may succeed."""


class RunNotFoundError(FlowpointError, LookupError):
    """No checkpoint exists for this run id (check the id and the store)."""


class CheckpointNotFoundError(FlowpointError, LookupError):
    """The run exists but has no checkpoint with this seq."""


class SeqConflictError(FlowpointError):
    """A checkpoint with this ``(run_id, seq)`` exists with another checksum.

    Two writers are producing the same run: claim the run before resuming it.
    """


class TenantMismatchError(FlowpointError):
    """The run belongs to another tenant."""


class ClaimConflictError(FlowpointError):
    """Another worker holds an unexpired claim on this run; retry after its lease ends."""


class StaleEpochError(FlowpointError):
    """A write or claim operation carries an epoch that is no longer current.

    Another worker has claimed the run since: this worker must stop working on it.
    """


class InputConflictError(FlowpointError):
    """An answer for this input path was already submitted for the run."""


class InputValidationError(FlowpointError, ValueError):
    """A human's answer does not match the JSON schema of the pending input.

    Nothing was changed: send a corrected answer.
    """


class GraphMismatchError(FlowpointError):
    """The flow's graph differs from the one that wrote the checkpoint.

    Node ids, types or edges changed. Resume with the original flow
    definition, or pass ``allow_graph_change=True`` to accept the new graph.
    """


class NodeExecutionError(FlowpointError):
    """A node raised; the run ended ``failed`` and can be resumed after a fix."""
