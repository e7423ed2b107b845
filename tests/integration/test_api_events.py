"""Resume API: the per-run Server-Sent Events stream and the event broker behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from checkpoint import PendingInput
from checkpoint.stores.sidecar import SidecarStore
from sidecar.events import EventBroker
from sidecar.keys import EVENTS_KEY
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar_store import RunningSidecar

GUARD_SECONDS = 20  # a hang guard only: nothing here asserts on time


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream body (ignores comments such as pings)."""
    fields: dict[str, list[str]] = {}
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if fields:
                data = "\n".join(fields.get("data", []))
                yield SseEvent(
                    id=fields.get("id", [None])[0],
                    event=fields.get("event", ["message"])[0],
                    data=json.loads(data) if data else None,
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


async def next_event(stream: AsyncIterator[SseEvent]) -> SseEvent:
    async with asyncio.timeout(GUARD_SECONDS):
        return await anext(stream)


async def test_stream_sends_current_state_then_live_events_in_order(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession, sidecar_store: SidecarStore
) -> None:
    first = checkpoint("run-1", 0, pending=["review"])
    first.pending_inputs[0] = PendingInput(
        path="review", prompt="Approve?", schema={"type": "boolean"}
    )
    assert await sidecar_store.put(first) == "stored"

    async with http.get("v1/runs/run-1/events") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        stream = sse_events(resp)
        status = await next_event(stream)
        assert status.event == "status_changed"
        assert status.data == {
            "run_id": "run-1",
            "status": "pending_input",
            "seq": 0,
            "snapshot": True,
        }
        requested = await next_event(stream)
        assert requested.event == "input_requested"
        assert (requested.data["path"], requested.data["prompt"]) == ("review", "Approve?")
        assert requested.data["schema"] == {"type": "boolean"}

        # live: a checkpoint through the OTLP ingest, then an answer through the API
        second = checkpoint("run-1", 1, pending=["review"])
        second.pending_inputs[0] = first.pending_inputs[0]
        assert await sidecar_store.put(second) == "stored"
        async with http.post("v1/runs/run-1/inputs", json={"path": "review", "answer": True}) as r:
            assert r.status == 202

        live: list[SseEvent] = []
        while not any(e.event == "input_received" for e in live):
            live.append(await next_event(stream))
    names = [e.event for e in live]
    assert "checkpoint_created" in names
    assert names.index("checkpoint_created") < names.index("input_received")
    created = live[names.index("checkpoint_created")]
    assert (created.data["run_id"], created.data["seq"], created.data["status"]) == (
        "run-1",
        1,
        "pending_input",
    )
    received = live[names.index("input_received")]
    assert (received.data["run_id"], received.data["path"]) == ("run-1", "review")
    ids = [int(e.id) for e in [status, requested, *live] if e.id is not None]
    assert len(ids) == 2 + len(live)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # a client that reconnects gets the current state first: never behind
    await sidecar_store.put(checkpoint("run-1", 2), epoch=0)
    async with http.get("v1/runs/run-1/events") as resp:
        stream = sse_events(resp)
        again = await next_event(stream)
    assert again.event == "status_changed"
    assert (again.data["status"], again.data["seq"]) == ("active", 2)
    assert int(again.id or 0) > ids[-1]


async def test_stream_of_unknown_or_malformed_run(http: aiohttp.ClientSession) -> None:
    async with http.get("v1/runs/nope/events") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "run_not_found"
    async with http.get("v1/runs/a..b/events") as resp:
        assert resp.status == 400


async def test_streams_end_with_a_final_event_on_shutdown(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await sidecar_app.store.put(checkpoint("run-1", 0))
    broker = sidecar_app.app[EVENTS_KEY]
    async with http.get("v1/runs/run-1/events") as resp:
        stream = sse_events(resp)
        assert (await next_event(stream)).event == "status_changed"
        broker.close()
        final = await next_event(stream)
        assert final.event == "stream_closed"
        async with asyncio.timeout(GUARD_SECONDS):
            rest = [e async for e in stream]
    assert rest == []
    assert broker.subscriber_count() == 0


async def test_broker_drops_a_slow_subscriber_with_a_final_event() -> None:
    broker = EventBroker(queue_size=3)
    slow = broker.subscribe("run-1")
    fast = broker.subscribe("run-1")
    other = broker.subscribe("run-2")
    received: list[int] = []

    async def drain() -> None:
        async for event in fast:
            received.append(event.data["i"])
            if event.data["i"] == 9:
                return

    reader = asyncio.create_task(drain())
    for i in range(10):
        broker.publish("run-1", "checkpoint_created", {"i": i})  # never blocks
        await asyncio.sleep(0)  # let the fast reader run, as the event loop would
    await asyncio.wait_for(reader, GUARD_SECONDS)
    assert received == list(range(10))

    # the slow one never read: it was dropped with one final event, pending ones discarded
    events = [e async for e in slow]
    assert [e.event for e in events] == ["stream_overflow"]
    assert events[0].data["run_id"] == "run-1"
    assert slow.closed
    assert broker.dropped_total == 1
    assert broker.subscriber_count("run-1") == 1
    assert broker.subscriber_count("run-2") == 1
    assert other.pending() == 0

    broker.unsubscribe(fast)
    broker.unsubscribe(fast)  # twice is harmless
    assert broker.subscriber_count("run-1") == 0
    broker.close()
    assert [e.event for e in [e async for e in other]] == ["stream_closed"]
    late = broker.subscribe("run-3")
    assert [e.event for e in [e async for e in late]] == ["stream_closed"]
