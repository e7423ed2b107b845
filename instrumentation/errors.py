"""What the checkpoint emitter reports when the sidecar does not acknowledge a checkpoint.

Every error derives from :class:`EmitError`, which carries the HTTP ``status``
(None when no answer arrived), the sidecar's ``message``, its machine-readable
``error`` code when it sent one (e.g. ``stale_epoch``), the raw ``body`` and the
record's ``key``. Whether the record stays in the outbox is part of each class's
contract, so a caller knows whether :meth:`CheckpointEmitter.replay_outbox`
will deliver it later.
"""

from __future__ import annotations

__all__ = [
    "EmitArgumentError",
    "EmitConflict",
    "EmitError",
    "EmitRejected",
    "EmitUnauthorized",
    "EmitUnavailable",
    "OutboxError",
]


class EmitError(Exception):
    """The sidecar did not acknowledge a checkpoint.

    Raised as is for an unexpected answer (e.g. 500 or 404); the record is then
    kept in the outbox, since nothing says the sidecar refused it for good.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        body: bytes = b"",
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error
        self.body = body
        self.key = key

    @property
    def code(self) -> str | None:
        """Alias of :attr:`error`, the sidecar's error code."""
        return self.error

    def __str__(self) -> str:
        where = f" [{self.key}]" if self.key else ""
        status = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{status}{self.message}{where}"


class EmitRejected(EmitError):
    """400, 413 or 415: the sidecar refused the record itself (malformed, checksum
    mismatch, too large). Never retried; the record is moved to ``outbox/rejected/``."""


class EmitConflict(EmitError):
    """409: a stale claim epoch, or the same (run, seq) with a different checksum.
    Never retried; the record is moved to ``outbox/rejected/``."""


class EmitUnauthorized(EmitError):
    """401 or 403: the token is missing, wrong or for another tenant. Never retried;
    the record stays in the outbox, so a replay with the right token delivers it."""


class EmitUnavailable(EmitError):
    """No durable acknowledgement within ``max_retry_seconds`` (429/502/503/504 or
    connection errors, retried with backoff). The record stays in the outbox."""


class EmitArgumentError(EmitError, ValueError):
    """emit() was called with invalid arguments; nothing was written or sent."""


class OutboxError(EmitError):
    """The record could not be written to the outbox, so it was not sent either."""
