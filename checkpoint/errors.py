"""Every error Flowpoint raises on purpose.

Each one says what went wrong and what to do about it. They all derive from
:class:`FlowpointError`, so ``except FlowpointError`` catches exactly the
errors that are ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

__all__ = [
    "ERROR_TYPES",
    "CheckpointNotFoundError",
    "CheckpointRefusedError",
    "ChecksumMismatchError",
    "ClaimConflictError",
    "CodecError",
    "ConfigError",
    "CorruptCheckpointError",
    "DecryptionError",
    "EncryptionKeyMissingError",
    "ErrorCode",
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


class CheckpointRefusedError(FlowpointError, ValueError):
    """The store cannot hold this checkpoint as it is; sending it again will not help.

    PostgreSQL, for one, refuses a NUL character (or a lone surrogate) in the text it
    indexes (a node id, an input path). Only the refused checkpoint fails: the others
    of its batch are stored.
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


class ErrorCode(StrEnum):
    """The ``error`` field of the sidecar's JSON error answers.

    The sidecar answers ``{"error": <code>, "message": <text>}``;
    :class:`~checkpoint.stores.SidecarStore` raises ``ERROR_TYPES[code]`` for it, so
    a refusal means the same on both sides of the wire. A code missing from
    :data:`ERROR_TYPES` concerns the request or the service (a bad header, a
    token), never a checkpoint or a run: the client maps it by HTTP status.
    """

    # the request itself
    MALFORMED_REQUEST = "malformed_request"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMETER = "invalid_parameter"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_ID = "invalid_id"
    INVALID_VALUE = "invalid_value"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_CONTENT_ENCODING = "unsupported_content_encoding"
    BAD_CONTENT_ENCODING = "bad_content_encoding"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # checkpoints sent to POST /v1/traces
    INVALID_CHECKPOINT = "invalid_checkpoint"
    INVALID_PAYLOAD = "invalid_payload"
    PAYLOAD_MISMATCH = "payload_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    TENANT_MISMATCH = "tenant_mismatch"
    STALE_EPOCH = "stale_epoch"
    SEQ_CONFLICT = "seq_conflict"
    REJECTED = "rejected"  # the store cannot hold it (see the message): do not retry
    # stored checkpoints, runs, claims and human input
    CORRUPT_CHECKPOINT = "corrupt_checkpoint"
    ENCRYPTION_KEY_MISSING = "encryption_key_missing"
    RUN_NOT_FOUND = "run_not_found"
    CHECKPOINT_NOT_FOUND = "checkpoint_not_found"
    CLAIM_CONFLICT = "claim_conflict"
    INPUT_CONFLICT = "input_conflict"
    INPUT_VALIDATION = "input_validation"
    UNKNOWN_INPUT_PATH = "unknown_input_path"
    INVALID_INPUT_SCHEMA = "invalid_input_schema"
    # the sidecar itself
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_ERROR = "store_error"
    NOT_READY = "not_ready"
    INTERNAL = "internal"


#: The error a client raises for each code the sidecar sends about a checkpoint or a run.
ERROR_TYPES: Final[Mapping[str, type[FlowpointError]]] = {
    ErrorCode.MALFORMED_REQUEST: CorruptCheckpointError,
    ErrorCode.INVALID_REQUEST: ConfigError,
    ErrorCode.INVALID_PARAMETER: ConfigError,
    ErrorCode.INVALID_CURSOR: InvalidIdError,
    ErrorCode.INVALID_ID: InvalidIdError,
    ErrorCode.INVALID_VALUE: CodecError,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLargeError,
    ErrorCode.INVALID_CHECKPOINT: InvalidIdError,
    ErrorCode.INVALID_PAYLOAD: CorruptCheckpointError,
    ErrorCode.PAYLOAD_MISMATCH: CorruptCheckpointError,
    ErrorCode.CHECKSUM_MISMATCH: ChecksumMismatchError,
    ErrorCode.UNKNOWN_SCHEMA_VERSION: UnknownSchemaVersionError,
    ErrorCode.TENANT_MISMATCH: TenantMismatchError,
    ErrorCode.STALE_EPOCH: StaleEpochError,
    ErrorCode.SEQ_CONFLICT: SeqConflictError,
    ErrorCode.REJECTED: CheckpointRefusedError,
    ErrorCode.CORRUPT_CHECKPOINT: CorruptCheckpointError,
    ErrorCode.ENCRYPTION_KEY_MISSING: EncryptionKeyMissingError,
    ErrorCode.RUN_NOT_FOUND: RunNotFoundError,
    ErrorCode.CHECKPOINT_NOT_FOUND: CheckpointNotFoundError,
    ErrorCode.CLAIM_CONFLICT: ClaimConflictError,
    ErrorCode.INPUT_CONFLICT: InputConflictError,
    ErrorCode.INPUT_VALIDATION: InputValidationError,
    ErrorCode.UNKNOWN_INPUT_PATH: InputValidationError,
    ErrorCode.INVALID_INPUT_SCHEMA: InputValidationError,
    ErrorCode.STORE_UNAVAILABLE: StoreUnavailableError,
    ErrorCode.STORE_ERROR: StoreError,
}
