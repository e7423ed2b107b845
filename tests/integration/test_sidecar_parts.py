"""The sidecar's parts on their own: payload parsing, OTLP decoding, group commit,
settings, tokens, logs. No server here; the write path end to end is in the other files.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from checkpoint.codec import sha256_hex
from checkpoint.errors import (
    ConfigError,
    CorruptCheckpointError,
    FlowpointError,
    SeqConflictError,
    StoreUnavailableError,
)
from checkpoint.models import CheckpointStatus, checkpoint_from_bytes, checkpoint_to_bytes
from checkpoint.store import SealedCheckpoint
from sidecar import otlp
from sidecar.config import Settings, load_tokens
from sidecar.ingest import RunTracker, parse_checkpoint
from sidecar.logs import JsonFormatter, log_event
from sidecar.writer import GroupCommitWriter, WriteResult
from tests.fixtures.sidecar import SpanRecorder, make_checkpoint, otlp_body

# -- payload parsing ---------------------------------------------------------------------


def test_tag_free_payload_parses_like_the_reference() -> None:
    cp = make_checkpoint("run-p", 3).model_copy(update={"node_states": {}})
    raw = checkpoint_to_bytes(cp)
    assert b"$" not in raw  # the fast road applies
    assert parse_checkpoint(raw) == checkpoint_from_bytes(raw) == cp


def test_large_agent_payload_parses_like_the_reference() -> None:
    from load.bench_sidecar import flow_checkpoint

    raw = checkpoint_to_bytes(flow_checkpoint(256 * 1024))
    assert b"$" not in raw
    assert parse_checkpoint(raw) == checkpoint_from_bytes(raw)


@pytest.mark.parametrize(
    "value",
    ["2**70", "-(2**70)", "NaN", '"\\ud800"', "1e400", "-0", "1.5e308", "[[[[[[[[[]]]]]]]]]"],
)
def test_json_the_fast_decoder_refuses_or_bends_parses_like_the_reference(value: str) -> None:
    """Huge integers, NaN, lone surrogates, extreme numbers: exactly what json.loads makes."""
    cp = make_checkpoint("run-p", 7).model_copy(update={"node_states": {}})
    doc = json.loads(checkpoint_to_bytes(cp))
    doc["original_input"] = {"x": 0}
    literal = {"2**70": str(2**70), "-(2**70)": str(-(2**70))}.get(value, value)
    _parses_like_the_reference(
        json.dumps(doc).replace('{"x": 0}', '{"x": ' + literal + "}").encode()
    )


def _parses_like_the_reference(raw: bytes) -> None:
    """parse_checkpoint gives what checkpoint_from_bytes gives, or refuses what it refuses."""
    try:
        expected = checkpoint_from_bytes(raw)
    except CorruptCheckpointError:
        with pytest.raises(CorruptCheckpointError):
            parse_checkpoint(raw)
        return
    assert repr(parse_checkpoint(raw)) == repr(expected)  # repr: NaN != NaN


def test_a_byte_order_mark_or_duplicate_keys_parse_like_the_reference() -> None:
    cp = make_checkpoint("run-p", 8).model_copy(update={"node_states": {}})
    raw = checkpoint_to_bytes(cp)
    bom = b"\xef\xbb\xbf" + raw  # json.loads takes it, msgspec does not: the reference road
    assert parse_checkpoint(bom) == checkpoint_from_bytes(bom) == cp
    twice = raw[:-1] + b',"seq":9}'  # the last one wins, in both
    assert parse_checkpoint(twice) == checkpoint_from_bytes(twice)
    assert parse_checkpoint(twice).seq == 9


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_any_user_value_parses_like_the_reference(value: object) -> None:
    cp = make_checkpoint("run-p", 1).model_copy(update={"node_states": {}})
    doc = json.loads(checkpoint_to_bytes(cp))
    doc["original_input"] = value
    _parses_like_the_reference(json.dumps(doc, ensure_ascii=False).encode())


def test_tagged_payload_parses_like_the_reference() -> None:
    cp = make_checkpoint("run-p", 4, pending=["review"])  # bytes in an output: a tag
    raw = checkpoint_to_bytes(cp)
    assert b'"$t"' in raw
    parsed = parse_checkpoint(raw)
    assert parsed == checkpoint_from_bytes(raw) == cp
    assert parsed.node_states["fetch"].output["blob"] == b"\x00\xffbytes"


def test_escaped_tag_key_is_decoded_not_skipped() -> None:
    cp = make_checkpoint("run-p", 5).model_copy(update={"node_states": {}})
    doc = json.loads(checkpoint_to_bytes(cp))
    doc["original_input"] = {"\u0024t": "bytes", "v": base64.b64encode(b"hi").decode()}
    # json.dumps escapes nothing here: write the key with a \u escape by hand.
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).replace('"$t"', '"\\u0024t"')
    payload = raw.encode()
    assert b"$" not in payload and b"\\u0024" in payload
    assert parse_checkpoint(payload).original_input == b"hi"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"flow_id": "f"}',
        b"\xff\xfe",
    ],
)
def test_bad_payloads_raise_the_reference_error(payload: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        checkpoint_from_bytes(payload)
    with pytest.raises(CorruptCheckpointError):
        parse_checkpoint(payload)


def test_malformed_tag_is_refused() -> None:
    cp = make_checkpoint("run-p", 6).model_copy(update={"node_states": {}})
    doc = json.loads(checkpoint_to_bytes(cp))
    doc["original_input"] = {"$t": "bytes", "v": "!!not base64!!"}
    with pytest.raises(CorruptCheckpointError):
        parse_checkpoint(json.dumps(doc).encode())


# -- OTLP ------------------------------------------------------------------------------------


def test_checkpoint_span_fields_are_decoded() -> None:
    spans = SpanRecorder()
    cp = make_checkpoint("run-o", 2, tenant_id="acme")
    span = spans.checkpoint_span(cp, epoch=3)
    decoded = otlp.decode_protobuf(otlp_body([span, spans.span("other", {})]))
    assert decoded.other_spans == 1
    [got] = decoded.checkpoints
    payload = checkpoint_to_bytes(cp)
    assert (got.tenant_id, got.flow_id, got.run_id, got.seq, got.epoch) == (
        "acme",
        cp.flow_id,
        "run-o",
        2,
        3,
    )
    assert got.status is CheckpointStatus.ACTIVE and got.schema_version == cp.schema_version
    assert got.payload == payload and got.sha256 == sha256_hex(payload)
    assert got.trace_id == format(span.context.trace_id, "032x")
    assert got.span_id == format(span.context.span_id, "016x")
    assert got.start_time_unix_nano == span.start_time


def test_other_spans_request_drops_only_checkpoints() -> None:
    spans = SpanRecorder(service_name="svc-a")
    body = otlp_body([spans.span("a", {"k": 1}), spans.checkpoint_span(make_checkpoint("r", 0))])
    request = ExportTraceServiceRequest.FromString(body)
    out = otlp.other_spans_request(request)
    names = [s.name for rs in out.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert names == ["a"]
    resource = {kv.key: kv.value.string_value for kv in out.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "svc-a"
    only_checkpoints = otlp.other_spans_request(
        ExportTraceServiceRequest.FromString(
            otlp_body([spans.checkpoint_span(make_checkpoint("r", 1))])
        )
    )
    assert len(only_checkpoints.resource_spans) == 0


def test_json_export_with_snake_case_and_string_ints() -> None:
    cp = make_checkpoint("run-j", 9)
    payload = checkpoint_to_bytes(cp)
    attrs = [
        {"key": "flowpoint.tenant_id", "value": {"stringValue": "default"}},
        {"key": "flowpoint.flow_id", "value": {"stringValue": cp.flow_id}},
        {"key": "flowpoint.run_id", "value": {"stringValue": "run-j"}},
        {"key": "flowpoint.seq", "value": {"intValue": "9"}},
        {"key": "flowpoint.status", "value": {"stringValue": "active"}},
        {"key": "flowpoint.schema_version", "value": {"intValue": 1}},
        {"key": "flowpoint.epoch", "value": {"doubleValue": 0.0}},
        {"key": "flowpoint.sha256", "value": {"stringValue": sha256_hex(payload).upper()}},
        {"key": "flowpoint.payload", "value": {"bytesValue": base64.b64encode(payload).decode()}},
    ]
    doc = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                                "span_id": "b7ad6b7169203331",
                                "name": "checkpoint.save",
                                "start_time_unix_nano": "1700000000000000000",
                                "attributes": attrs,
                                "unknownField": {"ignored": True},
                            }
                        ]
                    }
                ]
            }
        ]
    }
    [got] = otlp.decode_json(json.dumps(doc).encode()).checkpoints
    assert got.seq == 9 and got.epoch == 0
    assert got.sha256 == sha256_hex(payload)  # normalized to lowercase
    assert got.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert got.start_time_unix_nano == 1_700_000_000_000_000_000
    assert got.payload == payload


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{not json", b'{"resourceSpans": 5}', b'{"resourceSpans": [{"scopeSpans": "x"}]}'],
)
def test_malformed_json_exports(body: bytes) -> None:
    with pytest.raises(otlp.MalformedRequestError):
        otlp.decode_json(body)


def test_string_payload_is_accepted_for_sdks_without_bytes() -> None:
    spans = SpanRecorder()
    cp = make_checkpoint("run-s", 1)
    payload = checkpoint_to_bytes(cp)
    span = spans.span(
        "checkpoint.save",
        {
            "flowpoint.tenant_id": "default",
            "flowpoint.flow_id": cp.flow_id,
            "flowpoint.run_id": "run-s",
            "flowpoint.seq": 1,
            "flowpoint.status": "active",
            "flowpoint.schema_version": 1,
            "flowpoint.epoch": 0,
            "flowpoint.sha256": sha256_hex(payload),
            "flowpoint.payload": payload.decode("utf-8"),
        },
    )
    [got] = otlp.decode_protobuf(otlp_body([span])).checkpoints
    assert got.payload == payload


# -- group commit ----------------------------------------------------------------------------


def _record(run_id: str, seq: int) -> SealedCheckpoint:
    return SealedCheckpoint(
        tenant_id="default",
        flow_id="f",
        run_id=run_id,
        seq=seq,
        status=CheckpointStatus.ACTIVE,
        schema_version=1,
        sha256="0" * 64,
        raw_size=1,
        blob=b"x",
        created_at=dt.datetime.now(dt.UTC),
    )


class GatedSink:
    """A sink whose commits wait for the test to open a gate; it records every batch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def write(self, batch: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]:
        self.batches.append([(r.run_id, r.seq) for r, _ in batch])
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return ["duplicate" if r.seq < 0 else "stored" for r, _ in batch]


async def test_a_lone_record_commits_at_once() -> None:
    sink = GatedSink()
    writer = GroupCommitWriter(sink, max_batch=8, max_wait=5.0, max_inflight=2)
    writer.start()
    try:
        [fut] = writer.submit([(_record("a", 1), 0, None)])
        # No waiting for company: a 5 s max_wait would time the test out.
        assert await asyncio.wait_for(fut, 2) == "stored"
        assert sink.batches == [[("a", 1)]]
    finally:
        await writer.close()


async def test_records_arriving_during_a_commit_share_the_next_batch() -> None:
    sink = GatedSink()
    sink.gate.clear()
    writer = GroupCommitWriter(sink, max_batch=4, max_wait=0.01, max_inflight=1)
    writer.start()
    try:
        first = writer.submit([(_record("a", 1), 0, None)])
        await sink.started.wait()
        later = writer.submit([(_record(f"r{i}", 1), 0, None) for i in range(6)])
        sink.gate.set()
        results = await asyncio.gather(*first, *later)
        assert results == ["stored"] * 7
        # Bounded by max_batch, in arrival order.
        assert sink.batches == [
            [("a", 1)],
            [("r0", 1), ("r1", 1), ("r2", 1), ("r3", 1)],
            [("r4", 1), ("r5", 1)],
        ]
    finally:
        await writer.close()


async def test_per_item_errors_and_failed_batches_reach_each_submitter() -> None:
    class MixedSink:
        async def write(self, batch: Sequence[tuple[SealedCheckpoint, int]]) -> list[WriteResult]:
            return [SeqConflictError("taken") if r.seq == 2 else "stored" for r, _ in batch]

    writer = GroupCommitWriter(MixedSink(), max_batch=8, max_wait=0.0)
    writer.start()
    try:
        futures = writer.submit([(_record("a", 1), 0, None), (_record("a", 2), 0, None)])
        ok, conflict = await asyncio.gather(*futures)
        assert ok == "stored" and isinstance(conflict, SeqConflictError)
    finally:
        await writer.close()

    sink = GatedSink()
    sink.fail = StoreUnavailableError("db down")
    writer = GroupCommitWriter(sink, max_batch=8, max_wait=0.0)
    writer.start()
    try:
        results = await asyncio.gather(*writer.submit([(_record("b", 1), 0, None)] * 3))
        assert all(isinstance(r, StoreUnavailableError) for r in results)
        sink.fail = RuntimeError("driver bug")
        [bug] = await asyncio.gather(*writer.submit([(_record("c", 1), 0, None)]))
        assert isinstance(bug, StoreUnavailableError) and "driver bug" in str(bug)
    finally:
        await writer.close()


async def test_close_commits_what_is_queued_then_refuses() -> None:
    sink = GatedSink()
    sink.gate.clear()
    writer = GroupCommitWriter(sink, max_batch=2, max_wait=0.0, max_inflight=1)
    writer.start()
    futures = writer.submit([(_record("q", i), 0, None) for i in range(5)])
    await sink.started.wait()
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0.01)
    with pytest.raises(StoreUnavailableError):
        writer.submit([(_record("late", 1), 0, None)])
    sink.gate.set()
    await closing
    assert [f.result() for f in futures] == ["stored"] * 5
    assert sum(len(b) for b in sink.batches) == 5


async def test_observer_sees_each_batch_before_its_futures_resolve() -> None:
    seen: list[int] = []
    sink = GatedSink()
    futures_holder: list[Any] = []

    def observer(items: Any, results: Any, started: float, seconds: float) -> None:
        assert not any(f.done() for f in futures_holder)
        assert seconds >= 0
        seen.append(len(items))

    writer = GroupCommitWriter(sink, max_batch=8, max_wait=0.0, observer=observer)
    writer.start()
    try:
        futures_holder.extend(writer.submit([(_record("o", i), 0, None) for i in range(3)]))
        await asyncio.gather(*futures_holder)
        assert seen == [3]
    finally:
        await writer.close()


def test_run_tracker_counts_gaps_and_status_changes() -> None:
    runs = RunTracker(capacity=2)
    assert runs.observe("a", 1, "active") == (True, True, False)
    assert runs.observe("a", 2, "active") == (True, False, False)
    assert runs.observe("a", 4, "pending_input") == (True, True, True)
    assert runs.observe("a", 3, "active") == (False, False, False)  # late: not newest
    runs.observe("b", 1, "active")
    runs.observe("c", 1, "active")  # evicts "a" (least recently used)
    assert len(runs) == 2
    assert runs.observe("a", 9, "active") == (True, True, False)  # no baseline: no gap


# -- settings, tokens, logs ---------------------------------------------------------------


def test_settings_defaults_and_validation() -> None:
    s = Settings()
    assert (s.host, s.port, s.max_body_bytes, s.max_batch, s.max_batch_wait_ms) == (
        "127.0.0.1",
        4318,
        64 * 1024 * 1024,
        128,
        2.0,
    )
    assert (s.compression_level, s.offload_bytes) == (3, 64 * 1024)
    assert Settings(forward_otlp="http://127.0.0.1:4319").forward_otlp == (
        "http://127.0.0.1:4319/v1/traces"
    )
    assert Settings(forward_otlp="http://c:4318/custom").forward_otlp == "http://c:4318/custom"
    assert Settings.build(log_level="debug", port=None).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="database_url"):
        Settings.build(database_url="mysql://x")
    with pytest.raises(ConfigError, match="port"):
        Settings.build(port=70000)
    with pytest.raises(ConfigError, match="forward_otlp"):
        Settings.build(forward_otlp="ftp://x")


def test_tokens_file_formats(tmp_path: Path) -> None:
    text = tmp_path / "tokens.txt"
    text.write_text("# comment\ntok-aaaaaaaa acme  # trailing\n\ntok-bbbbbbbb globex\n")
    assert load_tokens(text) == {"tok-aaaaaaaa": "acme", "tok-bbbbbbbb": "globex"}
    js = tmp_path / "tokens.json"
    js.write_text(json.dumps({"tok-cccccccc": "initech"}))
    assert load_tokens(js) == {"tok-cccccccc": "initech"}
    for bad, message in (
        ("tok-only\n", "expected"),
        ("tok-x bad/tenant\n", "tenant_id"),
        ('{"tok": 5}', "map token strings"),
        ("# nothing\n", "no token"),
    ):
        path = tmp_path / "bad"
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_tokens(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(tmp_path / "missing")


def test_json_log_lines_carry_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("flowpoint.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        log_event(logger, logging.INFO, "checkpoint stored", run_id="r", seq=3, trace_id=None)
        log_event(logger, logging.DEBUG - 1, "invisible")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "checkpoint stored" and first["level"] == "info"
    assert (first["run_id"], first["seq"]) == ("r", 3)
    assert "trace_id" not in first  # None fields are left out
    assert first["ts"].endswith("+00:00")
    assert second["event"] == "failed" and "ValueError: boom" in second["exception"]


def test_errors_are_flowpoint_errors() -> None:
    assert issubclass(otlp.OtlpError, FlowpointError)
    assert issubclass(otlp.InvalidCheckpointSpanError, otlp.OtlpError)
