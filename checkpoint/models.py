"""The checkpoint data model (pydantic v2).

A :class:`FlowCheckpoint` is the whole resumable state of one run at one
``seq``. Its own fields are plain JSON on the wire; user values (inputs,
outputs, node internal state, metadata, answers) go through
:mod:`checkpoint.codec`, so bytes, datetimes, sets and the like come back
exactly, and the codec's ``{"$t": ...}`` tags appear only inside them.

Use :func:`checkpoint_to_bytes` / :func:`checkpoint_from_bytes` for the wire
format; they are the only functions that produce and read it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from checkpoint import codec
from checkpoint.errors import (
    CodecError,
    ConfigError,
    CorruptCheckpointError,
    UnknownSchemaVersionError,
)
from checkpoint.ids import validate_id

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
    "node_state_to_bytes",
    "register_migration",
    "utcnow",
]

SCHEMA_VERSION = 1
_WIRE = {"wire": True}


def utcnow() -> dt.datetime:
    """The current time as a timezone-aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


def _aware_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware (use datetime.now(UTC))")
    return value.astimezone(dt.UTC)


class CheckpointStatus(enum.StrEnum):
    """Where a run stands at the moment of a checkpoint."""

    ACTIVE = "active"
    PENDING_INPUT = "pending_input"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class NodeStatus(enum.StrEnum):
    """Where a node stands. Only ``succeeded`` is final: every other node runs on resume."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    RUNNING = "running"
    WAITING = "waiting"


def _decode_user(value: Any, info: ValidationInfo) -> Any:
    # Only wire data carries codec tags; a value built in Python is taken as it is.
    if info.context and info.context.get("wire"):
        return codec.from_jsonable(value, fresh=True)  # checkpoint_from_bytes' own document
    return value


def _encode_user(value: Any, info: SerializationInfo, path: str) -> Any:
    # ``path`` locates the value in the checkpoint, so a CodecError says which field failed.
    if info.mode_is_json():
        return codec.to_jsonable(value, path)
    return value


class ErrorInfo(BaseModel):
    """An exception, as recorded in a checkpoint."""

    model_config = ConfigDict(extra="forbid")
    type: str
    message: str


class NodeState(BaseModel):
    """One node's state in a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    node_id: str
    node_type: str
    status: NodeStatus
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    internal_state: dict[str, Any] = Field(default_factory=dict)
    attempts: int = 0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @field_validator("started_at", "finished_at")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        return _aware_utc(v)

    @field_validator("input", "output", "internal_state", mode="before")
    @classmethod
    def _dec(cls, v: Any, info: ValidationInfo) -> Any:
        return _decode_user(v, info)

    @field_serializer("input", "output", "internal_state")
    def _ser(self, v: Any, info: FieldSerializationInfo) -> Any:
        return _encode_user(v, info, f"$.node_states.{self.node_id}.{info.field_name}")


class PendingInput(BaseModel):
    """A question waiting for a human. ``path`` names where it was asked.

    Paths: ``review`` (a node), ``triage/tools/approve_refund#3`` (a tool
    call inside an agent), ``summaries[7]/check`` (inside a map iteration).
    """

    path: str
    prompt: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    metadata: dict[str, Any] = Field(default_factory=dict)
    requested_at: dt.datetime = Field(default_factory=utcnow)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    @field_validator("requested_at")
    @classmethod
    def _utc(cls, v: dt.datetime) -> dt.datetime | None:
        return _aware_utc(v)

    @field_validator("metadata", mode="before")
    @classmethod
    def _dec(cls, v: Any, info: ValidationInfo) -> Any:
        return _decode_user(v, info)

    @field_serializer("metadata")
    def _ser(self, v: Any, info: FieldSerializationInfo) -> Any:
        return _encode_user(v, info, f"$.pending_inputs[{self.path}].metadata")


class ParentRef(BaseModel):
    """The checkpoint a forked run started from."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    seq: int


class FlowCheckpoint(BaseModel):
    """The resumable state of one run at one ``seq``.

    ``(run_id, seq)`` identifies it; ``seq`` grows by one per save; the latest
    checkpoint of a run is the one with the highest ``seq``.
    """

    tenant_id: str = "default"
    flow_id: str
    run_id: str
    seq: int = Field(ge=0)
    status: CheckpointStatus = CheckpointStatus.ACTIVE
    graph_fingerprint: str = ""
    node_states: dict[str, NodeState] = Field(default_factory=dict)
    original_input: Any = None
    pending_inputs: list[PendingInput] = Field(default_factory=list)
    parent: ParentRef | None = None
    schema_version: int = SCHEMA_VERSION
    created_at: dt.datetime = Field(default_factory=utcnow)
    trace_context: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tenant_id", "flow_id", "run_id")
    @classmethod
    def _ids(cls, v: str, info: ValidationInfo) -> str:
        return validate_id(v, info.field_name or "id")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: dt.datetime) -> dt.datetime | None:
        return _aware_utc(v)

    @field_validator("original_input", "metadata", mode="before")
    @classmethod
    def _dec(cls, v: Any, info: ValidationInfo) -> Any:
        return _decode_user(v, info)

    @field_serializer("original_input", "metadata")
    def _ser(self, v: Any, info: FieldSerializationInfo) -> Any:
        return _encode_user(v, info, f"$.{info.field_name}")

    def completed_node_ids(self) -> list[str]:
        """Ids of nodes that succeeded: these never run again."""
        return [n for n, s in self.node_states.items() if s.status is NodeStatus.SUCCEEDED]


Migration = Callable[[dict[str, Any]], dict[str, Any]]
_MIGRATIONS: dict[int, Migration] = {}


def register_migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register a function that upgrades a checkpoint dict from ``from_version`` to the next.

    >>> @register_migration(1)
    ... def _v1_to_v2(doc):  # doctest: +SKIP
    ...     doc["new_field"] = None
    ...     doc["schema_version"] = 2
    ...     return doc
    """

    def decorator(fn: Migration) -> Migration:
        _MIGRATIONS[from_version] = fn
        return fn

    return decorator


def _migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        raise CorruptCheckpointError(f"checkpoint has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise UnknownSchemaVersionError(
            f"checkpoint schema_version {version} is newer than this Flowpoint understands "
            f"({SCHEMA_VERSION}): upgrade Flowpoint to read it"
        )
    while version < SCHEMA_VERSION:
        step = _MIGRATIONS.get(version)
        if step is None:
            raise UnknownSchemaVersionError(
                f"no migration registered from checkpoint schema_version {version}"
            )
        doc = step(doc)
        version = doc["schema_version"]
    return doc


# checkpoint_to_bytes dumps the model without its user values and adds them itself:
# pydantic would copy every user value twice (the serializer's result is walked again),
# while to_jsonable(share=True) reuses what is already plain JSON, allocating nothing.
_USER_FIELDS: Final = ("input", "output", "internal_state")
_SKELETON: Final[dict[str, Any]] = {
    "original_input": True,
    "metadata": True,
    "node_states": {"__all__": set(_USER_FIELDS)},
    "pending_inputs": {"__all__": {"metadata"}},
}


def checkpoint_to_bytes(cp: FlowCheckpoint) -> bytes:
    """The canonical wire bytes of a checkpoint (what is hashed, sent and stored)."""
    try:
        doc = cp.model_dump(mode="json", by_alias=True, exclude=_SKELETON)
    except (ValueError, TypeError) as exc:
        # pydantic wraps CodecError raised inside serializers.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, CodecError):
            raise cause from None
        raise CodecError(str(exc)) from exc
    # The same values and error paths as the field serializers (see _encode_user).
    # Model fields hold no floats, except a pending input's JSON schema.
    floats = [any(p.schema_ is not None for p in cp.pending_inputs)]

    def share(value: Any, where: str) -> Any:
        return codec.to_jsonable(value, where, share=True, floats=floats)

    doc["original_input"] = share(cp.original_input, "$.original_input")
    doc["metadata"] = share(cp.metadata, "$.metadata")
    # Paired by position, and keyed again by the model's own keys: pydantic's JSON mode
    # mangles a dict key holding a lone surrogate (a value it keeps as is).
    node_docs = doc["node_states"] = dict(
        zip(cp.node_states, doc["node_states"].values(), strict=True)
    )
    for node_id, state in cp.node_states.items():
        _share_user_fields(state, node_docs[node_id], floats)
    for pending, pending_doc in zip(cp.pending_inputs, doc["pending_inputs"], strict=True):
        pending_doc["metadata"] = share(
            pending.metadata, f"$.pending_inputs[{pending.path}].metadata"
        )
    # Model fields hold no floats and user values pass through to_jsonable: finite.
    return codec.canonical_json(doc, finite=True, floats=floats[0])


def node_state_to_bytes(state: NodeState) -> bytes:
    """One node's canonical JSON, exactly as :func:`checkpoint_to_bytes` writes it.

    The flow runtime encodes each node once per change and joins the results per save.
    """
    try:
        doc = state.model_dump(mode="json", by_alias=True, exclude=set(_USER_FIELDS))
    except (ValueError, TypeError) as exc:
        raise CodecError(str(exc)) from exc
    floats = [False]  # the model's own fields hold no floats
    _share_user_fields(state, doc, floats)
    # to_jsonable leaves no NaN or infinity.
    return codec.canonical_json(doc, finite=True, floats=floats[0])


def _share_user_fields(state: NodeState, node_doc: dict[str, Any], floats: list[bool]) -> None:
    """Put ``state``'s user values into its JSON document, as its field serializers would."""
    for name in _USER_FIELDS:
        where = f"$.node_states.{state.node_id}.{name}"
        node_doc[name] = codec.to_jsonable(getattr(state, name), where, share=True, floats=floats)


def checkpoint_from_bytes(data: bytes) -> FlowCheckpoint:
    """Parse wire bytes back into a :class:`FlowCheckpoint`, migrating old schema versions.

    Raises :class:`CorruptCheckpointError` when the bytes are not a checkpoint.
    """
    try:
        doc = codec.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptCheckpointError(f"checkpoint is not valid JSON: {exc}") from exc
    except RecursionError:
        raise CorruptCheckpointError("checkpoint JSON is nested too deeply to load") from None
    if not isinstance(doc, dict):
        raise CorruptCheckpointError("checkpoint is not a JSON object")
    doc = _migrate(doc)
    try:
        return FlowCheckpoint.model_validate(doc, context=_WIRE)
    except ValidationError as exc:
        raise CorruptCheckpointError(f"checkpoint does not match the schema: {exc}") from exc
    except CodecError as exc:
        raise CorruptCheckpointError(f"checkpoint holds a malformed value: {exc}") from exc


Durability = Literal["sync", "async", "exit"]


class CheckpointConfig(BaseModel):
    """How a flow checkpoints. Off by default: a disabled config costs nothing.

    >>> from checkpoint.stores import MemoryStore
    >>> config = CheckpointConfig(enabled=True, store=MemoryStore(), durability="async")
    >>> config.active
    True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    enabled: bool = False
    store: Any = None
    durability: Durability = "sync"
    on_start: bool = True
    after_node: bool = True
    on_failure: bool = True
    mid_node: bool = True
    max_checkpoints: int | None = Field(default=10, ge=1)
    retention_days: float | None = Field(default=None, gt=0)
    exclude_nodes: list[str] = Field(default_factory=list)
    redact: list[str] = Field(default_factory=list)
    max_payload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    on_save_error: Literal["warn", "raise"] = "warn"
    async_queue_size: int = Field(default=64, ge=1)
    tenant_id: str = "default"

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return validate_id(v, "tenant_id")

    @property
    def active(self) -> bool:
        """True when checkpoints are actually written (enabled and a store is set)."""
        return self.enabled and self.store is not None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> CheckpointConfig:
        """Build from a plain mapping (YAML), raising :class:`ConfigError` on bad fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid checkpoint config: {exc}") from exc
