"""Per-run event fan-out for the Server-Sent Events stream.

Writers (the ingest's commit step, the input API) call :meth:`EventBroker.publish`, which
never blocks and never awaits: each subscriber has a bounded queue, and a subscriber whose
queue is full is dropped. A dropped subscriber gets one final ``stream_overflow`` event (its
client reconnects and receives the current state first, so it is never left behind) instead
of slowing down the write path.

Event names of the public contract: ``checkpoint_created``, ``status_changed``,
``input_requested``, ``input_received``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CHECKPOINT_CREATED",
    "INPUT_RECEIVED",
    "INPUT_REQUESTED",
    "STATUS_CHANGED",
    "STREAM_CLOSED",
    "STREAM_OVERFLOW",
    "Event",
    "EventBroker",
    "Subscription",
]

CHECKPOINT_CREATED: Final = "checkpoint_created"
STATUS_CHANGED: Final = "status_changed"
INPUT_REQUESTED: Final = "input_requested"
INPUT_RECEIVED: Final = "input_received"
# Not run events: they end a subscription and tell the client why.
STREAM_OVERFLOW: Final = "stream_overflow"
STREAM_CLOSED: Final = "stream_closed"


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a run. ``id`` grows across the whole broker (the SSE ``id:`` field)."""

    id: int
    run_id: str
    event: str
    data: dict[str, Any]


@dataclass(eq=False, slots=True)
class Subscription:
    """A subscriber's queue. Iterate it to receive events; it ends after a final event."""

    run_id: str
    maxsize: int
    _queue: deque[Event] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    @property
    def closed(self) -> bool:
        """True once the subscription got its final event (or was closed)."""
        return self._closed

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; False (and nothing queued) when the queue is full."""
        if self._closed:
            return True
        if len(self._queue) >= self.maxsize:
            return False
        self._queue.append(event)
        self._wakeup.set()
        return True

    def _finish(self, event: Event, *, discard_pending: bool) -> None:
        # An overflowing subscriber is behind anyway: its pending events are dropped so the
        # final event reaches the client at once, and the client resyncs on reconnect.
        if self._closed:
            return
        if discard_pending:
            self._queue.clear()
        self._queue.append(event)
        self._closed = True
        self._wakeup.set()

    def pending(self) -> int:
        """How many events wait to be read."""
        return len(self._queue)

    async def get(self) -> Event | None:
        """The next event; None after the final event has been read."""
        while not self._queue:
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class EventBroker:
    """Fan-out of run events to SSE subscribers, with bounded per-subscriber queues.

    >>> broker = EventBroker()
    >>> broker.publish("run-1", "status_changed", {"run_id": "run-1", "status": "active"})
    """

    def __init__(self, queue_size: int = 256) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self._ids = itertools.count(1)
        self.dropped_total = 0
        self.published_total = 0
        self._closed = False

    def next_id(self) -> int:
        """A fresh event id (also used for the snapshot events sent on connect)."""
        return next(self._ids)

    def make_event(self, run_id: str, event: str, data: dict[str, Any]) -> Event:
        """Build an event with a fresh id, without publishing it."""
        return Event(id=self.next_id(), run_id=run_id, event=event, data=data)

    def subscribe(self, run_id: str) -> Subscription:
        """Start receiving ``run_id``'s events; call :meth:`unsubscribe` when done."""
        sub = Subscription(run_id=run_id, maxsize=self.queue_size)
        if self._closed:
            sub._finish(
                self.make_event(run_id, STREAM_CLOSED, {"reason": "shutdown"}),
                discard_pending=False,
            )
            return sub
        self._subscribers.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``. Safe to call twice."""
        subs = self._subscribers.get(sub.run_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subscribers[sub.run_id]

    def subscriber_count(self, run_id: str | None = None) -> int:
        """Live subscribers of ``run_id`` (of every run when None)."""
        if run_id is not None:
            return len(self._subscribers.get(run_id, ()))
        return sum(len(s) for s in self._subscribers.values())

    def publish(self, run_id: str, event: str, data: dict[str, Any]) -> None:
        """Deliver an event to ``run_id``'s subscribers. Never blocks the caller."""
        subs = self._subscribers.get(run_id)
        self.published_total += 1
        if not subs:
            return
        item = self.make_event(run_id, event, data)
        for sub in list(subs):
            if not sub._offer(item):
                self.dropped_total += 1
                subs.discard(sub)
                sub._finish(
                    self.make_event(
                        run_id,
                        STREAM_OVERFLOW,
                        {"run_id": run_id, "reason": "subscriber too slow; reconnect"},
                    ),
                    discard_pending=True,
                )
        if not subs:
            self._subscribers.pop(run_id, None)

    def close(self) -> None:
        """End every subscription with a ``stream_closed`` event (on shutdown)."""
        self._closed = True
        for run_id, subs in list(self._subscribers.items()):
            for sub in subs:
                sub._finish(
                    self.make_event(run_id, STREAM_CLOSED, {"reason": "shutdown"}),
                    discard_pending=False,
                )
        self._subscribers.clear()
