"""Request and response bodies of the resume API (``/v1/runs``), as pydantic models.

They validate what clients send (bad input becomes a 400/422 with a message, never a 500)
and generate the JSON Schemas of ``/openapi.json``. User values (answers, checkpoint
contents) are "any JSON": the codec's ``{"$t": ...}`` tags may appear only there.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from checkpoint.ids import validate_id
from checkpoint.models import CheckpointStatus, PendingInput
from checkpoint.stores.rules import MAX_INPUT_PATH, validate_input_path

__all__ = [
    "USER_VALUE_DESCRIPTION",
    "CheckpointCreatedEvent",
    "CheckpointEnvelope",
    "CheckpointItem",
    "CheckpointList",
    "ClaimRequest",
    "ClaimResponse",
    "ClaimView",
    "ConsumeRequest",
    "ConsumeResponse",
    "ErrorBody",
    "ExpireRequest",
    "ExpireResponse",
    "InputAccepted",
    "InputItem",
    "InputList",
    "InputReceivedEvent",
    "InputRequest",
    "InputRequestedEvent",
    "PruneRequest",
    "PruneResponse",
    "ReleaseRequest",
    "ReleaseResponse",
    "RenewRequest",
    "RenewResponse",
    "RunDetail",
    "RunItem",
    "RunList",
    "StatusChangedEvent",
    "StreamEndEvent",
]

USER_VALUE_DESCRIPTION = 'any JSON; codec tags {"$t": ...} may appear only here'
MAX_LEASE_SECONDS = 86_400.0
# What checkpoint.ids.validate_id accepts (less its "no '..'" rule), for the JSON Schemas.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# validate_input_path: printable, no control characters.
INPUT_PATH_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# seq and epoch are int64 on the wire and in the database.
INT64_MAX = 2**63 - 1


def _worker_id(value: str) -> str:
    return validate_id(value, "worker_id")


InputPath = Annotated[
    str,
    AfterValidator(validate_input_path),
    Field(
        min_length=1,
        max_length=MAX_INPUT_PATH,
        description="where the input was asked, e.g. review or triage/tools/approve#3",
        json_schema_extra={"pattern": INPUT_PATH_PATTERN},
    ),
]
WorkerId = Annotated[
    str,
    AfterValidator(_worker_id),
    Field(description="a worker id", json_schema_extra={"pattern": ID_PATTERN}),
]
LeaseSeconds = Annotated[
    float,
    Field(gt=0, le=MAX_LEASE_SECONDS, description="lease length in seconds (0 < s <= 86400)"),
]
Epoch = Annotated[
    int, Field(ge=0, le=INT64_MAX, description="the claim epoch (fences older holders)")
]


class _Request(BaseModel):
    # Strict (validated from JSON): a body is what /openapi.json says, no coercions like
    # "10" -> 10.0 or 0 -> 1970-01-01T00:00:00Z.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Response):
    """Every error answer: a stable machine code and a human message."""

    error: str = Field(description="machine-readable code, e.g. run_not_found, stale_epoch")
    message: str


# -- requests -------------------------------------------------------------------------------


class ClaimRequest(_Request):
    """Claim a run for resuming: one worker at a time, for ``lease_seconds``."""

    worker_id: WorkerId
    lease_seconds: LeaseSeconds


class RenewRequest(_Request):
    """Extend a held claim before its lease ends."""

    worker_id: WorkerId
    epoch: Epoch
    lease_seconds: LeaseSeconds


class ReleaseRequest(_Request):
    """Give a claim up."""

    worker_id: WorkerId
    epoch: Epoch


class InputRequest(_Request):
    """A human's answer to one of the run's pending inputs."""

    path: InputPath
    answer: Any = Field(description=USER_VALUE_DESCRIPTION)


class ConsumeRequest(_Request):
    """Mark answers consumed (each is consumed exactly once)."""

    paths: list[InputPath] = Field(min_length=1, max_length=1000)


class PruneRequest(_Request):
    """Keep at most ``max_checkpoints`` checkpoints of the run (maintenance)."""

    max_checkpoints: int = Field(ge=0, le=1_000_000, description="0 keeps only the latest")


class ExpireRequest(_Request):
    """Remove checkpoints created before ``older_than`` (maintenance)."""

    older_than: dt.datetime = Field(description="timezone-aware cutoff (RFC 3339)")

    @field_validator("older_than")
    @classmethod
    def _aware(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("older_than must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
        return v.astimezone(dt.UTC)


# -- responses ------------------------------------------------------------------------------


class ClaimView(_Response):
    """A live claim on a run."""

    worker_id: str
    epoch: int
    lease_expires_at: dt.datetime
    seq: int | None = Field(default=None, description="the checkpoint the claim was given")


class RunItem(_Response):
    """A row of ``GET /v1/runs``."""

    run_id: str
    flow_id: str
    status: CheckpointStatus
    latest_seq: int
    updated_at: dt.datetime
    tenant_id: str
    created_at: dt.datetime
    pending_inputs: list[str] = Field(description="paths of the latest checkpoint's inputs")
    epoch: int
    claim: ClaimView | None = None


class RunList(_Response):
    """A page of runs, newest first. Pass ``next_cursor`` as ``cursor`` for the next page."""

    runs: list[RunItem]
    next_cursor: str | None = None


class RunDetail(_Response):
    """``GET /v1/runs/{run_id}``: the run's summary with its full pending inputs."""

    run_id: str
    tenant_id: str
    flow_id: str
    status: CheckpointStatus
    latest_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime
    epoch: int
    pending_inputs: list[PendingInput] = Field(
        description="the latest checkpoint's pending inputs (empty when it cannot be read)"
    )
    pending_input_paths: list[str]
    claim: ClaimView | None = None
    latest_error: ErrorBody | None = Field(
        default=None, description="set when the latest checkpoint is corrupt"
    )


class CheckpointItem(_Response):
    """A row of ``GET /v1/runs/{run_id}/checkpoints`` (no payload)."""

    seq: int
    status: CheckpointStatus
    created_at: dt.datetime
    raw_size: int
    stored_size: int
    sha256: str
    run_id: str


class CheckpointList(_Response):
    """A page of checkpoints, newest first. Pass ``next_cursor`` as ``before_seq``."""

    checkpoints: list[CheckpointItem]
    next_cursor: str | None = None


class CheckpointEnvelope(_Response):
    """A verified checkpoint: ``checkpoint`` is the wire JSON object of a FlowCheckpoint.

    Its canonical JSON encoding (sorted keys, compact, UTF-8) hashes to ``sha256``.
    """

    run_id: str
    seq: int
    status: CheckpointStatus
    sha256: str
    # /openapi.json documents this as components.schemas.FlowCheckpoint.
    checkpoint: dict[str, Any]


class ClaimResponse(_Response):
    """A won claim: its epoch and lease, and the checkpoint to resume from."""

    run_id: str
    worker_id: str
    epoch: int
    lease_expires_at: dt.datetime
    seq: int | None = None
    checkpoint: CheckpointEnvelope | None = Field(
        default=None, description="null when not asked for or when it is corrupt"
    )
    checkpoint_error: ErrorBody | None = None


class RenewResponse(_Response):
    """A renewed claim."""

    run_id: str
    worker_id: str
    epoch: int
    lease_expires_at: dt.datetime
    seq: int | None = None


class ReleaseResponse(_Response):
    """A released claim."""

    run_id: str
    released: bool


class InputAccepted(_Response):
    """``202``: the answer is stored and will be consumed exactly once by the resumed run."""

    run_id: str
    path: str
    submitted_at: dt.datetime


class InputItem(_Response):
    """A submitted answer."""

    run_id: str
    path: str
    answer: Any = Field(description=USER_VALUE_DESCRIPTION)
    submitted_at: dt.datetime
    consumed: bool


class InputList(_Response):
    """The run's submitted answers (unconsumed only unless ``include_consumed``)."""

    inputs: list[InputItem]


class ConsumeResponse(_Response):
    """The paths this call consumed (a path already consumed is not listed again)."""

    consumed: list[str]


class PruneResponse(_Response):
    """How many checkpoints the prune removed."""

    run_id: str
    removed: int


class ExpireResponse(_Response):
    """How many checkpoints the expiry removed."""

    removed: int


# -- Server-Sent Events (data of each event, as JSON) ----------------------------------------


class CheckpointCreatedEvent(BaseModel):
    """``event: checkpoint_created``: a checkpoint was committed."""

    run_id: str
    seq: int
    status: CheckpointStatus


class StatusChangedEvent(BaseModel):
    """``event: status_changed``: the run's status (also sent first on connect)."""

    run_id: str
    status: CheckpointStatus
    seq: int | None = None
    snapshot: bool = Field(default=False, description="true for the state sent on connect")


class InputRequestedEvent(BaseModel):
    """``event: input_requested``: the run waits for a human answer at ``path``."""

    model_config = ConfigDict(extra="allow")
    run_id: str
    path: str
    prompt: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    metadata: dict[str, Any] | None = Field(default=None, description=USER_VALUE_DESCRIPTION)
    requested_at: dt.datetime | None = None
    snapshot: bool = False


class InputReceivedEvent(BaseModel):
    """``event: input_received``: an answer was accepted for ``path``."""

    run_id: str
    path: str
    submitted_at: dt.datetime


class StreamEndEvent(BaseModel):
    """``event: stream_overflow`` or ``stream_closed``: the stream ends; reconnect."""

    model_config = ConfigDict(extra="allow")
    reason: str
