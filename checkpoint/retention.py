"""A run's retention policy, as it travels from the flow to the sidecar's retention task.

A flow's :class:`~checkpoint.models.CheckpointConfig` says how many checkpoints a run keeps
(``max_checkpoints``, default 10, None for no limit) and for how long (``retention_days``,
None for no limit). The flow writes the values that differ from the defaults into every
checkpoint's ``metadata`` (:func:`policy_metadata`), the store's listing summary copies them
(:func:`policy_summary`, read without decompressing the payload), and the sidecar's
retention task applies them per run (:func:`policy_from_summary`), falling back to its own
defaults for runs that say nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_CHECKPOINTS",
    "META_MAX_CHECKPOINTS",
    "META_RETENTION_DAYS",
    "SUMMARY_KEY",
    "RetentionPolicy",
    "policy_entries",
    "policy_from_summary",
    "policy_metadata",
    "policy_summary",
]

DEFAULT_MAX_CHECKPOINTS: Final = 10
META_MAX_CHECKPOINTS: Final = "max_checkpoints"
META_RETENTION_DAYS: Final = "retention_days"
SUMMARY_KEY: Final = "retention"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What one run keeps: the newest ``max_checkpoints`` (None: all), for ``retention_days``."""

    max_checkpoints: int | None = DEFAULT_MAX_CHECKPOINTS
    retention_days: float | None = None


def policy_metadata(max_checkpoints: int | None, retention_days: float | None) -> dict[str, Any]:
    """The metadata entries a flow adds to its checkpoints: only values off the defaults.

    >>> policy_metadata(10, None), policy_metadata(None, 7)
    ({}, {'max_checkpoints': None, 'retention_days': 7})
    """
    out: dict[str, Any] = {}
    if max_checkpoints != DEFAULT_MAX_CHECKPOINTS:
        out[META_MAX_CHECKPOINTS] = max_checkpoints
    if retention_days is not None:
        out[META_RETENTION_DAYS] = retention_days
    return out


def policy_entries(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The policy keys of ``metadata`` as they are (for an index-only checkpoint header)."""
    return {k: metadata[k] for k in (META_MAX_CHECKPOINTS, META_RETENTION_DAYS) if k in metadata}


def _valid_max(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 1)


def _valid_days(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def policy_summary(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The policy entries of a checkpoint's metadata, for its listing summary (None: none).

    Malformed values (metadata is the user's) are left out, so the defaults apply.
    """
    out: dict[str, Any] = {}
    if META_MAX_CHECKPOINTS in metadata and _valid_max(metadata[META_MAX_CHECKPOINTS]):
        out[META_MAX_CHECKPOINTS] = metadata[META_MAX_CHECKPOINTS]
    if META_RETENTION_DAYS in metadata and _valid_days(metadata[META_RETENTION_DAYS]):
        out[META_RETENTION_DAYS] = float(metadata[META_RETENTION_DAYS])
    return out or None


def policy_from_summary(
    summary: Mapping[str, Any] | None,
    *,
    default_max_checkpoints: int | None = DEFAULT_MAX_CHECKPOINTS,
    default_retention_days: float | None = None,
) -> RetentionPolicy:
    """The policy a stored checkpoint's summary names, defaults filling what it does not."""
    entries = summary.get(SUMMARY_KEY) if summary else None
    if not isinstance(entries, Mapping):
        entries = {}
    max_cp = entries.get(META_MAX_CHECKPOINTS, default_max_checkpoints)
    days = entries.get(META_RETENTION_DAYS, default_retention_days)
    return RetentionPolicy(
        max_checkpoints=max_cp if _valid_max(max_cp) else default_max_checkpoints,
        retention_days=float(days) if _valid_days(days) else default_retention_days,
    )
