"""The checkpoint emitter against a real aiohttp OTLP/HTTP server on 127.0.0.1.

The server decodes every request with opentelemetry-proto and records it;
each test scripts its answers. Nothing is mocked: the SDK, the encoder, the
HTTP client and server, and the outbox files are the real ones.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from instrumentation import (
    CheckpointEmitter,
    EmitConflict,
    EmitError,
    EmitRejected,
    EmitUnauthorized,
    EmitUnavailable,
    node_span,
    run_span,
    use_tracer_provider,
)
from tests.fixtures.otlp_recorder import (
    Received,
    Recorder,
    checkpoint,
    dead_url,
    emit,
    json_error,
    ok,
    outbox_files,
    rejected_files,
    start_server,
)

REPO = Path(__file__).resolve().parents[2]


# -- what arrives -------------------------------------------------------------------------


async def test_attributes_and_payload_arrive_exactly(
    server: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every knob that could cut attributes short is turned as low as it goes.
    for name in (
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    ):
        monkeypatch.setenv(name, "10" if "LENGTH" in name else "2")
    app_exporter = InMemorySpanExporter()
    app_provider = TracerProvider()  # the application's own tracing
    app_provider.add_span_processor(SimpleSpanProcessor(app_exporter))
    use_tracer_provider(app_provider)
    payload = os.urandom(256 * 1024) + b"\xff\xfe not utf-8"
    long_run_id = "run-" + "x" * 120
    args = checkpoint(long_run_id, 7, payload)
    emitter = CheckpointEmitter(server.url, outbox_dir=tmp_path, service_name="svc-test")
    try:
        with run_span("etl", long_run_id), node_span("fetch", "function") as node:
            ack = await emit(emitter, args)
            parent = node.get_span_context()
    finally:
        await emitter.aclose()
        use_tracer_provider(None)
        app_provider.shutdown()

    (got,) = server.received
    span = got.span
    assert span.name == "checkpoint.save"
    assert got.attrs == {
        **args["attributes"],
        "flowpoint.sha256": args["payload_sha256"],
        "flowpoint.payload": payload,
    }
    assert span.attributes[-1].value.WhichOneof("value") == "bytes_value"
    assert span.dropped_attributes_count == 0
    assert span.parent_span_id == parent.span_id.to_bytes(8, "big")
    assert span.trace_id == parent.trace_id.to_bytes(16, "big")
    assert got.resource["service.name"] == "svc-test"
    assert got.headers["Content-Type"] == "application/x-protobuf"
    assert ack.status == 200 and ack.attempts == 1 and ack.key == args["key"]
    assert ack.trace_id == span.trace_id.hex() and ack.span_id == span.span_id.hex()
    assert ack.elapsed > 0
    assert outbox_files(tmp_path) == []
    # The application's exporter saw its own spans, never the checkpoint (payloads/PII).
    assert [s.name for s in app_exporter.get_finished_spans()] == ["node fetch", "flow.run"]


@pytest.mark.parametrize(
    ("env", "value"), [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_SAMPLER", "always_off")]
)
async def test_telemetry_switches_do_not_stop_checkpoints(
    server: Recorder, monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    # The switch really is on: an ordinary SDK provider records nothing under it.
    plain = TracerProvider(shutdown_on_exit=False)
    assert not plain.get_tracer("probe").start_span("probe").is_recording()
    async with CheckpointEmitter(server.url) as emitter:
        ack = await emit(emitter, checkpoint("r-env", 1))
    assert ack.status == 200
    assert server.keys() == ["r-env:1"]
    assert server.received[0].attrs["flowpoint.payload"] == b'{"run":"r-env","seq":1}'


async def test_headers_from_the_environment_are_sent(
    server: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant-hint=acme")
    monkeypatch.setenv("FLOWPOINT_TOKEN", "secret-token")
    async with CheckpointEmitter(server.url) as emitter:
        await emit(emitter, checkpoint("r-h", 1))
    headers = server.received[0].headers
    assert headers["Authorization"] == "Bearer secret-token"
    assert headers["x-tenant-hint"] == "acme"


async def test_concurrent_emits_each_get_their_own_ack(server: Recorder, tmp_path: Path) -> None:
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        acks = await asyncio.gather(*(emit(emitter, checkpoint("r-c", i)) for i in range(1, 21)))
    assert [a.key for a in acks] == [f"r-c:{i}" for i in range(1, 21)]  # gather keeps order
    assert sorted(server.keys()) == sorted(a.key for a in acks)  # each sent exactly once
    assert len({a.span_id for a in acks}) == 20
    assert len(server.received) < 20  # the ones that found every slot busy shared requests
    assert outbox_files(tmp_path) == []


# -- the sidecar's answers ----------------------------------------------------------------


async def test_503_with_retry_after_then_200_is_acked_after_the_wait(
    server: Recorder, tmp_path: Path
) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        if rec.index == 0:
            return json_error(503, "store_unavailable", "not durable yet", **{"Retry-After": "1"})
        return ok()

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        ack = await emit(emitter, checkpoint("r-503", 1))
    assert ack.status == 200 and ack.attempts == 2
    first, second = server.received
    assert second.span.SerializeToString() == first.span.SerializeToString()  # same span again
    # Retry-After was honoured (a lower bound, so no flakiness on a slow machine).
    assert second.at - first.at >= 0.95
    assert outbox_files(tmp_path) == []


@pytest.mark.parametrize("status", [429, 502, 504])
async def test_other_transient_answers_are_retried(server: Recorder, status: int) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        return web.Response(status=status, text="busy") if rec.index < 2 else ok()

    server.responder = answer
    async with CheckpointEmitter(server.url) as emitter:
        ack = await emit(emitter, checkpoint("r-t", 1))
    assert ack.attempts == 3 and len(server.received) == 3


@pytest.mark.parametrize("status", [400, 413, 415])
async def test_bad_record_is_rejected_at_once_and_kept_for_inspection(
    server: Recorder, tmp_path: Path, status: int
) -> None:
    message = f"checksum mismatch for r-bad#1 ({status})"

    async def answer(rec: Received) -> web.StreamResponse:
        return json_error(status, "checksum_mismatch", message)

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        with pytest.raises(EmitRejected) as info:
            await emit(emitter, checkpoint("r-bad", 1))
    err = info.value
    assert (err.status, err.message, err.error, err.key) == (
        status,
        message,
        "checksum_mismatch",
        "r-bad:1",
    )
    assert json.loads(err.body)["message"] == message
    assert len(server.received) == 1  # never retried
    assert outbox_files(tmp_path) == []
    (moved,) = rejected_files(tmp_path)
    note = json.loads((tmp_path / "rejected" / f"{moved}.reason.json").read_text())
    assert note["status"] == status and message in note["reason"]


async def test_409_is_a_conflict_not_retried(server: Recorder, tmp_path: Path) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        return json_error(409, "stale_epoch", "epoch 1 is older than 2")

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        with pytest.raises(EmitConflict, match="epoch 1 is older than 2") as info:
            await emit(emitter, checkpoint("r-409", 3, **{"flowpoint.epoch": 1}))
    assert info.value.status == 409 and info.value.error == "stale_epoch"
    assert len(server.received) == 1
    assert outbox_files(tmp_path) == [] and len(rejected_files(tmp_path)) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorized_keeps_the_record(server: Recorder, tmp_path: Path, status: int) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        return json_error(status, "unauthorized", "unknown token")

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        with pytest.raises(EmitUnauthorized, match="unknown token"):
            await emit(emitter, checkpoint("r-401", 1))
    assert len(server.received) == 1
    assert len(outbox_files(tmp_path)) == 1 and rejected_files(tmp_path) == []


async def test_unexpected_answer_is_an_emit_error_and_keeps_the_record(
    server: Recorder, tmp_path: Path
) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        return web.Response(status=500, text="internal trouble")

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        with pytest.raises(EmitError, match="internal trouble") as info:
            await emit(emitter, checkpoint("r-500", 1))
    assert type(info.value) is EmitError and info.value.status == 500
    assert len(outbox_files(tmp_path)) == 1


async def test_partial_success_rejection_in_a_200_is_not_an_ack(
    server: Recorder, tmp_path: Path
) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        resp = ExportTraceServiceResponse()
        resp.partial_success.rejected_spans = 1
        resp.partial_success.error_message = "tenant mismatch"
        return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        with pytest.raises(EmitRejected, match="tenant mismatch"):
            await emit(emitter, checkpoint("r-ps", 1))
    assert len(rejected_files(tmp_path)) == 1


# -- unavailable sidecar, outbox and replay ------------------------------------------------


async def test_sidecar_down_then_replay_delivers(tmp_path: Path) -> None:
    args = checkpoint("r-down", 4, os.urandom(4096))
    emitter = CheckpointEmitter(dead_url(), outbox_dir=tmp_path, max_retry_seconds=0.6)
    try:
        with pytest.raises(EmitUnavailable) as info:
            await emit(emitter, args)
    finally:
        await emitter.aclose()
    assert info.value.status is None and "attempt" in info.value.message
    (kept,) = outbox_files(tmp_path)

    recorder = Recorder()
    runner = await start_server(recorder)
    try:
        async with CheckpointEmitter(recorder.url, outbox_dir=tmp_path) as fresh:
            assert await fresh.replay_outbox() == 1
            assert await fresh.replay_outbox() == 0
    finally:
        await runner.cleanup()
    (got,) = recorder.received
    assert got.attrs["flowpoint.payload"] == args["payload"]
    assert got.attrs["flowpoint.sha256"] == args["payload_sha256"]
    # The replayed span keeps the original start time (it is in the file name too).
    assert got.span.start_time_unix_nano == int(kept.split("-")[0])
    assert outbox_files(tmp_path) == [] and rejected_files(tmp_path) == []


async def test_503_until_the_budget_runs_out_keeps_the_record(
    server: Recorder, tmp_path: Path
) -> None:
    async def answer(rec: Received) -> web.StreamResponse:
        return json_error(503, "store_unavailable", "spool full", **{"Retry-After": "0.2"})

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path, max_retry_seconds=1.0) as em:
        with pytest.raises(EmitUnavailable, match="spool full") as info:
            await emit(em, checkpoint("r-full", 1))
    assert info.value.status == 503 and info.value.error == "store_unavailable"
    assert len(server.received) >= 2
    assert len(outbox_files(tmp_path)) == 1


async def test_replay_goes_in_run_then_seq_order_and_skips_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = CheckpointEmitter(dead_url(), outbox_dir=tmp_path, max_retry_seconds=0)
    try:
        for run_id, seq in [("r-b", 10), ("r-b", 2), ("r-a", 5), ("r-b", 9)]:
            with pytest.raises(EmitUnavailable):
                await emit(emitter, checkpoint(run_id, seq))
    finally:
        await emitter.aclose()
    files = outbox_files(tmp_path)
    assert len(files) == 4
    damaged = tmp_path / files[1]  # the second emit: r-b:2
    damaged.write_bytes(damaged.read_bytes()[:-3])

    recorder = Recorder()

    async def answer(rec: Received) -> web.StreamResponse:
        if rec.key == "r-b:9":
            return json_error(409, "seq_conflict", "different checksum for r-b#9")
        return ok()

    recorder.responder = answer
    runner = await start_server(recorder)
    try:
        async with CheckpointEmitter(recorder.url, outbox_dir=tmp_path) as fresh:
            with caplog.at_level(logging.WARNING):
                assert await fresh.replay_outbox() == 2
    finally:
        await runner.cleanup()
    assert recorder.keys() == ["r-a:5", "r-b:9", "r-b:10"]
    assert outbox_files(tmp_path) == []
    assert len(rejected_files(tmp_path)) == 2  # the damaged file and the conflict
    assert any("corrupt" in r.getMessage() for r in caplog.records)


async def test_replay_stops_when_the_sidecar_is_unavailable(tmp_path: Path) -> None:
    emitter = CheckpointEmitter(dead_url(), outbox_dir=tmp_path, max_retry_seconds=0)
    try:
        for seq in (1, 2):
            with pytest.raises(EmitUnavailable):
                await emit(emitter, checkpoint("r-s", seq))
        with pytest.raises(EmitUnavailable):
            await emitter.replay_outbox()
    finally:
        await emitter.aclose()
    assert len(outbox_files(tmp_path)) == 2


async def test_no_outbox_dir_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with CheckpointEmitter(dead_url(), max_retry_seconds=0) as emitter:
        with pytest.raises(EmitUnavailable):
            await emit(emitter, checkpoint("r-m", 1))
        assert await emitter.replay_outbox() == 0
    assert os.listdir(tmp_path) == []


def test_one_emitter_across_event_loops(tmp_path: Path) -> None:
    # run_sync callers run each call in a fresh loop: the emitter must follow.
    recorder = Recorder()
    emitter = CheckpointEmitter(dead_url(), outbox_dir=tmp_path, max_retry_seconds=0)

    async def once(seq: int) -> int:
        runner = await start_server(recorder)
        emitter.endpoint = recorder.url
        try:
            assert await emitter.replay_outbox() == 0
            ack = await emit(emitter, checkpoint("r-loop", seq))
        finally:
            await runner.cleanup()
        status: int = ack.status
        return status

    assert asyncio.run(once(1)) == 200
    assert asyncio.run(once(2)) == 200
    asyncio.run(emitter.aclose())
    assert recorder.keys() == ["r-loop:1", "r-loop:2"]


async def test_replay_skips_records_in_flight_and_cancel_keeps_them(
    server: Recorder, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def answer(rec: Received) -> web.StreamResponse:
        if rec.index == 0:
            await release.wait()
        return ok()

    server.responder = answer
    async with CheckpointEmitter(server.url, outbox_dir=tmp_path) as emitter:
        pending = asyncio.create_task(emit(emitter, checkpoint("r-f", 1)))
        await asyncio.wait_for(server.wait_count(1), timeout=30)
        assert await emitter.replay_outbox() == 0  # its own emit owns that record
        assert len(server.received) == 1
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        release.set()
        # Nobody was told it is saved, so it stays until a replay delivers it.
        assert len(outbox_files(tmp_path)) == 1
        assert await emitter.replay_outbox() == 1
    assert server.keys() == ["r-f:1", "r-f:1"]
    assert outbox_files(tmp_path) == []


async def test_enum_attributes_travel_as_plain_values(server: Recorder) -> None:
    class Status(str, enum.Enum):  # noqa: UP042 - the mixin whose str() is "Status.ACTIVE"
        ACTIVE = "active"

    class Level(enum.IntEnum):
        ONE = 1

    args = checkpoint("r-e", 1, **{"flowpoint.status": Status.ACTIVE, "x.level": Level.ONE})
    async with CheckpointEmitter(server.url) as emitter:
        await emit(emitter, args)
    attrs = server.received[0].attrs
    assert attrs["flowpoint.status"] == "active" and attrs["x.level"] == 1


# -- a worker killed mid-flight ------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from instrumentation import CheckpointEmitter

    async def main(url, outbox):
        # a request slot per checkpoint: the server answers (or not) each seq on its own
        emitter = CheckpointEmitter(url, outbox_dir=outbox, max_requests=6)

        async def one(seq):
            payload = (f"run w seq {seq} " * 200).encode()
            attrs = {"flowpoint.run_id": "w", "flowpoint.seq": seq}
            sha = hashlib.sha256(payload).hexdigest()
            await emitter.emit(attrs, payload, payload_sha256=sha, key=f"w:{seq}")
            print(f"acked {seq}", flush=True)

        await asyncio.gather(*(one(seq) for seq in range(1, 7)))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_sigkilled_worker_leaves_unacked_records_and_a_new_process_replays(
    server: Recorder, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def answer(rec: Received) -> web.StreamResponse:
        if rec.attrs["flowpoint.seq"] % 2 == 0:
            await release.wait()  # even seqs never get an answer before the kill
        return ok()

    server.responder = answer
    outbox = tmp_path / "outbox"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        server.url,
        str(outbox),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        acked: set[int] = set()
        assert proc.stdout is not None
        while len(acked) < 3:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if not line:
                stderr = await proc.stderr.read() if proc.stderr else b""
                pytest.fail(f"worker exited early: {stderr.decode()[-2000:]}")
            acked.add(int(line.split()[1]))
        assert acked == {1, 3, 5}
        # every even seq is on the wire, unanswered
        await asyncio.wait_for(server.wait_count(6), timeout=60)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        release.set()

    assert len(outbox_files(outbox)) == 3
    before = len(server.received)
    server.responder = None
    async with CheckpointEmitter(server.url, outbox_dir=outbox) as fresh:
        assert await fresh.replay_outbox() == 3
    replayed = [r.key for r in server.received[before:]]
    assert replayed == ["w:2", "w:4", "w:6"]
    delivered = {r.key for r in server.received if r.attrs["flowpoint.seq"] in acked}
    assert delivered | set(replayed) == {f"w:{i}" for i in range(1, 7)}
    for rec in server.received[before:]:
        seq = rec.attrs["flowpoint.seq"]
        payload = (f"run w seq {seq} " * 200).encode()
        assert rec.attrs["flowpoint.payload"] == payload
        assert rec.attrs["flowpoint.sha256"] == hashlib.sha256(payload).hexdigest()
    assert outbox_files(outbox) == []
