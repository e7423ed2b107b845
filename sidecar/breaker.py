"""A circuit breaker around the database.

States (the ``breaker_state`` gauge uses these numbers):

* ``closed`` (0): calls go through. ``failure_threshold`` consecutive failures (an error of
  the store, or a call that did not answer within ``call_timeout``, so a hung database
  counts) open it.
* ``open`` (2): calls are refused at once (:class:`BreakerOpenError`) for ``cooldown``
  seconds, so a dead database costs nothing per request and the caller falls back (the
  sidecar spools).
* ``half_open`` (1): after the cooldown, one probe call at a time is let through; its
  success closes the breaker, its failure opens it again for another cooldown.

The breaker holds no task of its own: the drainer (or the next write) makes the probes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from checkpoint.errors import StoreError, StoreUnavailableError

__all__ = ["BreakerOpenError", "BreakerState", "CircuitBreaker"]

log = logging.getLogger("flowpoint.sidecar.breaker")

T = TypeVar("T")


class BreakerState(enum.IntEnum):
    """The breaker's state; the value is what the ``breaker_state`` gauge exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """``closed``, ``half_open`` or ``open``."""
        return self.name.lower()


class BreakerOpenError(StoreUnavailableError):
    """The breaker is open: the database is not tried until the cooldown has passed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What ``/readyz`` shows of the breaker."""

    state: str
    consecutive_failures: int
    failure_threshold: int
    opened_for_seconds: float | None
    retry_in_seconds: float
    last_error: str | None
    opens: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.failure_threshold,
            "opened_for_seconds": self.opened_for_seconds,
            "retry_in_seconds": self.retry_in_seconds,
            "last_error": self.last_error,
            "opens": self.opens,
        }


# Errors that say "the database did not do it": a store error, a timeout, a socket error.
_FAILURES: tuple[type[BaseException], ...] = (StoreError, TimeoutError, OSError)


class CircuitBreaker:
    """Closed -> open after consecutive failures -> half-open probes -> closed.

    ``on_change(state)`` is called on every transition (the sidecar sets its gauge and
    logs there). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        cooldown: float = 5.0,
        call_timeout: float = 2.0,
        on_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "database",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown <= 0 or call_timeout <= 0:
            raise ValueError("cooldown and call_timeout must be > 0 seconds")
        self.failure_threshold = failure_threshold
        self.cooldown = float(cooldown)
        self.call_timeout = float(call_timeout)
        self.name = name
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._last_error: str | None = None
        self._closed_event = asyncio.Event()
        self._closed_event.set()
        self.opens = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cooldown has passed reads half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def is_open(self) -> bool:
        """True while calls are refused outright (open and still cooling down)."""
        return self.state is BreakerState.OPEN

    def retry_after(self) -> float:
        """Seconds until a call may be tried (0 when closed, or half-open with no probe)."""
        state = self.state
        if state is BreakerState.OPEN:
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))
        if state is BreakerState.HALF_OPEN and self._probing:
            return min(self.call_timeout, self.cooldown)
        return 0.0

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        return BreakerSnapshot(
            state=state.label,
            consecutive_failures=self._failures,
            failure_threshold=self.failure_threshold,
            opened_for_seconds=(
                round(self._clock() - self._opened_at, 3)
                if state is not BreakerState.CLOSED
                else None
            ),
            retry_in_seconds=round(self.retry_after(), 3),
            last_error=self._last_error,
            opens=self.opens,
        )

    async def wait_closed(self) -> None:
        """Return once the breaker is closed."""
        await self._closed_event.wait()

    # -- calls -----------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Ask to make one call: True when it may go ahead.

        Closed: always. Half-open: only the first caller (the probe) until its outcome is
        recorded. Open: never. A True answer must be followed by exactly one of
        :meth:`record_success`, :meth:`record_failure` or :meth:`release`.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """The database answered: reset the failure count, close a half-open breaker."""
        self._probing = False
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self, error: BaseException | str | None = None) -> None:
        """The database failed or did not answer in time."""
        self._probing = False
        if error is not None:
            self._last_error = (
                error
                if isinstance(error, str)
                else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            )
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self.opens += 1
            self._set(BreakerState.OPEN)
        elif self._state is BreakerState.OPEN:
            self._opened_at = self._clock()  # a late failure of a call made while closed

    def release(self) -> None:
        """Give a permission back without an outcome (the call failed for another reason)."""
        self._probing = False

    async def call(self, fn: Callable[[], Awaitable[T]], *, within: float | None = None) -> T:
        """Run ``fn()`` through the breaker, within ``within`` seconds (default ``call_timeout``).

        Raises :class:`BreakerOpenError` without calling when the breaker refuses; a store
        error, a timeout or an ``OSError`` is recorded as a failure and re-raised (a timeout
        as :class:`StoreUnavailableError`); any other exception is re-raised unrecorded.
        """
        if not self.acquire():
            wait = self.retry_after()
            raise BreakerOpenError(
                f"the circuit breaker for the {self.name} is {self.state.label} "
                f"(last error: {self._last_error or 'none'}); retry in {wait:.1f}s",
                wait,
            )
        limit = self.call_timeout if within is None else within
        try:
            # asyncio.timeout, not wait_for: no extra task per commit on Python 3.11.
            async with asyncio.timeout(limit):
                result = await fn()
        except TimeoutError as exc:
            self.record_failure(f"no answer within {limit:g}s")
            raise StoreUnavailableError(
                f"the {self.name} did not answer within {limit:g}s (commit timeout)"
            ) from exc
        except _FAILURES as exc:
            self.record_failure(exc)
            raise
        except BaseException:
            self.release()
            raise
        self.record_success()
        return result

    # -- internals -------------------------------------------------------------------------

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        if state is BreakerState.CLOSED:
            self._closed_event.set()
        else:
            self._closed_event.clear()
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(
            level,
            "circuit breaker %s -> %s (failures: %d, last error: %s)",
            previous.label,
            state.label,
            self._failures,
            self._last_error,
        )
        if self._on_change is not None:
            try:
                self._on_change(state)
            except Exception:
                log.exception("breaker on_change callback failed")
