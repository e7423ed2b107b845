"""Concurrent checkpoints share requests, yet every emit() gets its own, true answer.

Against the recording OTLP/HTTP server of test_emitter_sidecar (real aiohttp on
127.0.0.1). Each test holds the first request open so the next emits find every
slot busy and queue; releasing it sends the queued ones together.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from instrumentation import CheckpointEmitter, EmitConflict, EmitRejected, EmitUnavailable
from tests.fixtures.otlp_recorder import (
    Received,
    Recorder,
    checkpoint,
    emit,
    json_error,
    ok,
    outbox_files,
    rejected_files,
)

Answer = Callable[[Received], Awaitable[web.StreamResponse]]


def held_first(then: Answer) -> tuple[asyncio.Event, Answer]:
    """An answer that keeps request 0 open until the event is set, then answers ``then``."""
    release = asyncio.Event()

    async def answer(rec: Received) -> web.StreamResponse:
        if rec.index == 0:
            await release.wait()
        return await then(rec)

    return release, answer


async def _ok(rec: Received) -> web.StreamResponse:
    return ok()


async def queue_behind_first(
    server: Recorder, emitter: CheckpointEmitter, release: asyncio.Event, seqs: range
) -> list[Any]:
    """Emit seqs[0] (held by the server), then the rest while it is held, then release."""
    first = asyncio.ensure_future(emit(emitter, checkpoint("r-s", seqs[0])))
    await asyncio.wait_for(server.wait_count(1), timeout=30)
    rest = [asyncio.ensure_future(emit(emitter, checkpoint("r-s", seq))) for seq in seqs[1:]]
    await asyncio.sleep(0.05)  # they are queued now: no request slot is free
    assert len(server.received) == 1
    release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


async def test_waiting_checkpoints_share_one_request_and_each_gets_its_ack(
    server: Recorder, tmp_path: Path
) -> None:
    release, server.responder = held_first(_ok)
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path, max_requests=1) as emitter:
        acks = await queue_behind_first(server, emitter, release, range(1, 11))
    assert [len(r.spans) for r in server.received] == [1, 9]
    assert [a.key for a in acks] == [f"r-s:{i}" for i in range(1, 11)]
    assert all(a.status == 200 and a.attempts == 1 for a in acks)
    assert len({a.span_id for a in acks}) == 10
    # once each (the outbox writes finish in any order, so the queue's order varies)
    assert sorted(server.keys()) == sorted(f"r-s:{i}" for i in range(1, 11))
    assert outbox_files(tmp_path) == []


async def test_batch_limits_split_the_waiting_checkpoints(server: Recorder) -> None:
    release, server.responder = held_first(_ok)
    async with CheckpointEmitter(
        server.url, max_requests=1, max_batch_spans=3, max_batch_bytes=10_000
    ) as emitter:
        first = asyncio.ensure_future(emit(emitter, checkpoint("r-l", 1)))
        await asyncio.wait_for(server.wait_count(1), timeout=30)
        sizes = [100, 100, 100, 100, 6_000, 6_000, 100]
        rest = [
            asyncio.ensure_future(emit(emitter, checkpoint("r-l", i, b"x" * size)))
            for i, size in enumerate(sizes, start=2)
        ]
        await asyncio.sleep(0.05)
        release.set()
        acks = await asyncio.gather(first, *rest)
    assert len(acks) == 8
    # 3 spans at most; 10 kB of payload at most (a payload alone may be larger)
    assert [len(r.spans) for r in server.received] == [1, 3, 2, 2]
    assert server.keys() == [f"r-l:{i}" for i in range(1, 9)]


async def test_per_span_outcomes_reach_their_own_emit(server: Recorder) -> None:
    async def outcomes(rec: Received) -> web.StreamResponse:
        resp = ok()
        seqs = [int(Received.key_of(s).split(":")[1]) for s in rec.spans]
        resp.headers["Flowpoint-Outcome"] = ",".join(
            "duplicate" if seq % 2 else "stored" for seq in seqs
        )
        return resp

    release, server.responder = held_first(outcomes)
    async with CheckpointEmitter(server.url, max_requests=1) as emitter:
        acks = await queue_behind_first(server, emitter, release, range(1, 7))
    assert len(server.received[1].spans) == 5
    for ack in acks:
        seq = int(ack.key.split(":")[1])
        assert ack.headers["Flowpoint-Outcome"] == ("duplicate" if seq % 2 else "stored")


async def test_a_refused_shared_request_is_sorted_out_one_by_one(
    server: Recorder, tmp_path: Path
) -> None:
    """409 for a request of many: each is sent alone; only the culprit is refused."""

    async def refuse_seq_4(rec: Received) -> web.StreamResponse:
        if any(Received.key_of(s) == "r-s:4" for s in rec.spans):
            return json_error(409, "stale_epoch", "epoch 0 is older than 1")
        return ok()

    release, server.responder = held_first(refuse_seq_4)
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path, max_requests=1) as emitter:
        results = await queue_behind_first(server, emitter, release, range(1, 7))
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], EmitConflict)
    assert refused[0].key == "r-s:4" and refused[0].error == "stale_epoch"
    assert [r.key for r in results if not isinstance(r, BaseException)] == [
        f"r-s:{i}" for i in (1, 2, 3, 5, 6)
    ]
    # request 1 carried 2..6 and was refused; then each of them went alone
    assert [len(r.spans) for r in server.received] == [1, 5, 1, 1, 1, 1, 1]
    assert outbox_files(tmp_path) == [] and len(rejected_files(tmp_path)) == 1


async def test_a_bad_checkpoint_in_a_shared_request_does_not_sink_the_others(
    server: Recorder,
) -> None:
    async def checksum(rec: Received) -> web.StreamResponse:
        for span in rec.spans:
            payload = {kv.key: kv.value for kv in span.attributes}["flowpoint.payload"]
            if payload.bytes_value == b"bad":
                return json_error(400, "checksum_mismatch", "the payload's SHA-256 differs")
        return ok()

    release, server.responder = held_first(checksum)
    async with CheckpointEmitter(server.url, max_requests=1) as emitter:
        first = asyncio.ensure_future(emit(emitter, checkpoint("r-b", 1)))
        await asyncio.wait_for(server.wait_count(1), timeout=30)
        bad = checkpoint("r-b", 2)
        bad["payload"] = b"bad"  # the hash no longer matches (as the server will "see")
        bad["payload_sha256"] = hashlib.sha256(b"bad").hexdigest()
        rest = [asyncio.ensure_future(emit(emitter, bad))] + [
            asyncio.ensure_future(emit(emitter, checkpoint("r-b", i))) for i in (3, 4)
        ]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert isinstance(results[1], EmitRejected) and results[1].key == "r-b:2"
    assert [r.key for r in results if not isinstance(r, BaseException)] == [
        "r-b:1",
        "r-b:3",
        "r-b:4",
    ]


async def test_a_shared_request_is_retried_whole_on_503(server: Recorder) -> None:
    async def busy_once(rec: Received) -> web.StreamResponse:
        if rec.index == 1:
            return json_error(503, "unavailable", "try again", **{"Retry-After": "0"})
        return ok()

    release, server.responder = held_first(busy_once)
    async with CheckpointEmitter(server.url, max_requests=1) as emitter:
        acks = await queue_behind_first(server, emitter, release, range(1, 6))
    assert [len(r.spans) for r in server.received] == [1, 4, 4]
    assert [a.attempts for a in acks] == [1, 2, 2, 2, 2]


async def test_a_shared_request_never_acknowledged_fails_each_emit_with_its_key(
    server: Recorder, tmp_path: Path
) -> None:
    async def down(rec: Received) -> web.StreamResponse:
        return json_error(503, "unavailable", "database down", **{"Retry-After": "0"})

    release, server.responder = held_first(down)
    async with CheckpointEmitter(
        server.url, outbox_dir=tmp_path, max_requests=1, max_retry_seconds=0.3
    ) as emitter:
        results = await queue_behind_first(server, emitter, release, range(1, 5))
    assert all(isinstance(r, EmitUnavailable) for r in results)
    assert [r.key for r in results] == [f"r-s:{i}" for i in range(1, 5)]
    assert len(outbox_files(tmp_path)) == 4  # all kept for a replay
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as fresh:
        server.responder = None
        assert await fresh.replay_outbox() == 4
    assert outbox_files(tmp_path) == []


async def test_a_cancelled_waiting_emit_is_not_sent_and_stays_in_the_outbox(
    server: Recorder, tmp_path: Path
) -> None:
    release, server.responder = held_first(_ok)
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path, max_requests=1) as emitter:
        first = asyncio.ensure_future(emit(emitter, checkpoint("r-x", 1)))
        await asyncio.wait_for(server.wait_count(1), timeout=30)
        waiting = asyncio.ensure_future(emit(emitter, checkpoint("r-x", 2)))
        other = asyncio.ensure_future(emit(emitter, checkpoint("r-x", 3)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        await first
        await other
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert server.keys() == ["r-x:1", "r-x:3"]
        assert len(outbox_files(tmp_path)) == 1  # nobody was told it is saved
        assert await emitter.replay_outbox() == 1
    assert server.keys() == ["r-x:1", "r-x:3", "r-x:2"]


async def test_close_waits_for_shared_requests_under_way(server: Recorder) -> None:
    release, server.responder = held_first(_ok)
    emitter = CheckpointEmitter(server.url, max_requests=1)
    first = asyncio.ensure_future(emit(emitter, checkpoint("r-c", 1)))
    await asyncio.wait_for(server.wait_count(1), timeout=30)
    rest = [asyncio.ensure_future(emit(emitter, checkpoint("r-c", i))) for i in (2, 3)]
    await asyncio.sleep(0.05)
    release.set()
    await first
    await emitter.aclose()
    acks = await asyncio.gather(*rest)
    assert [a.key for a in acks] == ["r-c:2", "r-c:3"]
