"""Fuzzing ``POST /v1/traces``: bad bodies get a 4xx with a JSON message and change nothing.

Every case is sent to the real sidecar (real aiohttp server, real PostgresStore) and the
store's fingerprint (row counts and digests of checkpoints, runs and inputs) is compared
before and after. The rules checked:

* a body that carries a bad checkpoint is refused with a 4xx (never a 5xx, never a 200),
  with ``{"error": code, "message": text}``, and nothing of the request is stored, not even
  a valid checkpoint sent beside the bad one;
* a body the sidecar may accept (random bytes that happen to be a valid empty export, a
  mutated export whose checkpoint span is no longer a checkpoint) never stores anything but
  the exact checkpoint its payload and SHA-256 certify;
* wrong content types are 415, bodies past the limit (also after gzip) are 413, and a body
  that is not what its Content-Encoding says is a 400.

Hypothesis runs derandomized (fixed seed) with bounded example counts; truncation is
exhaustive (every cut point of a valid export).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import gzip
import hashlib
import itertools
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import requests
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from checkpoint import codec
from checkpoint.ids import is_valid_id
from checkpoint.models import CheckpointStatus, FlowCheckpoint, checkpoint_to_bytes
from tests.fixtures.sidecar import SpanRecorder, checkpoint_attributes, make_checkpoint, otlp_body
from tests.fuzz.conftest import (
    CALL_TIMEOUT_S,
    FUZZ_MAX_BODY_BYTES,
    StoreSnapshot,
    ThreadedSidecar,
    post_checkpoints,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
INT64_MAX = 2**63 - 1
# A fixed creation time keeps payloads (and so Hypothesis' draws over them) reproducible.
CREATED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_ids = itertools.count()


def fresh_run(prefix: str) -> str:
    """A run id never used before in this module (deterministic across runs)."""
    # Fixed width: payload sizes (and so the draws over them) do not depend on the count.
    return f"fz-{prefix}-{next(_ids):08d}"


# -- building OTLP requests by hand (so wrong types are possible) ----------------------------


def any_value(value: Any) -> AnyValue:
    """An OTLP AnyValue holding ``value`` (None is the empty AnyValue)."""
    out = AnyValue()
    if value is None:
        pass
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list):
        out.array_value.CopyFrom(ArrayValue(values=[any_value(v) for v in value]))
    elif isinstance(value, dict):
        out.kvlist_value.CopyFrom(
            KeyValueList(values=[KeyValue(key=k, value=any_value(v)) for k, v in value.items()])
        )
    else:  # pragma: no cover - a bug in a strategy
        raise TypeError(f"no AnyValue for {value!r}")
    return out


def make_span(attrs: dict[str, AnyValue], name: str = "checkpoint.save", n: int = 1) -> Span:
    return Span(
        trace_id=n.to_bytes(16, "big"),
        span_id=n.to_bytes(8, "big"),
        name=name,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1_700_000_000_000_000_000 + n,
        end_time_unix_nano=1_700_000_000_000_000_000 + n + 1000,
        attributes=[KeyValue(key=k, value=v) for k, v in attrs.items()],
    )


def make_request(spans: list[Span]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=any_value("fuzz-worker"))]
                ),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="flowpoint"), spans=spans)],
            )
        ]
    )


def checkpoint_of(run_id: str, seq: int = 0, **kw: Any) -> FlowCheckpoint:
    """``make_checkpoint`` with a fixed ``created_at``."""
    return make_checkpoint(run_id, seq, **kw).model_copy(update={"created_at": CREATED_AT})


def valid_attrs(run_id: str, seq: int = 0, note: str = "") -> dict[str, AnyValue]:
    """The contract's attributes of a fresh, valid checkpoint."""
    cp = checkpoint_of(run_id, seq, note=note)
    return {k: any_value(v) for k, v in checkpoint_attributes(cp).items()}


def attrs_with_payload(doc: dict[str, Any], **overrides: Any) -> dict[str, AnyValue]:
    """Attributes for a payload built from the JSON ``doc``, consistent with it."""
    payload = codec.canonical_json(doc)
    values: dict[str, Any] = {
        "flowpoint.tenant_id": doc.get("tenant_id"),
        "flowpoint.flow_id": doc.get("flow_id"),
        "flowpoint.run_id": doc.get("run_id"),
        "flowpoint.seq": doc.get("seq"),
        "flowpoint.status": doc.get("status"),
        "flowpoint.schema_version": doc.get("schema_version"),
        "flowpoint.epoch": 0,
        "flowpoint.sha256": hashlib.sha256(payload).hexdigest(),
        "flowpoint.payload": payload,
    }
    values.update(overrides)
    return {k: any_value(v) for k, v in values.items()}


def to_otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The OTLP/JSON mapping of ``request`` (camelCase, ids in hex, bytes in base64)."""
    doc: dict[str, Any] = json_format.MessageToDict(request)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return doc


# -- talking to the sidecar --------------------------------------------------------------------


@dataclass
class Sent:
    response: requests.Response
    before: StoreSnapshot | None
    after: StoreSnapshot | None

    @property
    def status(self) -> int:
        return self.response.status_code

    def describe(self) -> str:
        return f"{self.status} {self.response.text[:300]!r}"


class Client:
    """Posts bodies to the fuzz sidecar and fingerprints the store around each request."""

    def __init__(self, sidecar: ThreadedSidecar) -> None:
        self.sidecar = sidecar
        self.session = requests.Session()

    def post(
        self,
        body: bytes,
        content_type: str | None = PROTOBUF,
        headers: dict[str, str] | None = None,
        *,
        fresh_connection: bool = False,
        fingerprint: bool = True,
    ) -> Sent:
        """POST ``body``; ``fingerprint=False`` skips the store snapshots (the caller compares
        the store around a whole series of requests instead)."""
        before = self.sidecar.snapshot() if fingerprint else None
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        # A body the server could not read ends its connection: send those on their own.
        http: Any = requests if fresh_connection else self.session
        if fresh_connection:
            hdrs["Connection"] = "close"
        resp = http.post(
            self.sidecar.url + "/v1/traces", data=body, headers=hdrs, timeout=CALL_TIMEOUT_S
        )
        if content_type is None:
            assert "Content-Type" not in resp.request.headers
        after = self.sidecar.snapshot() if fingerprint else None
        return Sent(resp, before, after)

    def stored(self, run_id: str) -> list[tuple[int, str]]:
        """``(seq, sha256)`` of every checkpoint of ``run_id`` in PostgreSQL."""

        async def read() -> list[tuple[int, str]]:
            conn = await asyncpg.connect(self.sidecar.dsn)
            try:
                rows = await conn.fetch(
                    "SELECT seq, sha256 FROM checkpoints WHERE run_id = $1 ORDER BY seq", run_id
                )
            finally:
                await conn.close()
            return [(int(r["seq"]), str(r["sha256"])) for r in rows]

        return self.sidecar.call(read())


def assert_refused(sent: Sent, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of ``statuses`` when given) with a JSON error, and the store untouched."""
    assert 400 <= sent.status < 500, f"expected a 4xx, got {sent.describe()}"
    if statuses:
        assert sent.status in statuses, f"expected one of {statuses}, got {sent.describe()}"
    assert sent.response.headers.get("Content-Type", "").startswith(JSON), sent.describe()
    body = sent.response.json()
    assert isinstance(body, dict), sent.describe()
    assert isinstance(body.get("error"), str) and body["error"], sent.describe()
    assert isinstance(body.get("message"), str) and body["message"], sent.describe()
    assert sent.after == sent.before, f"a refused request changed the store: {sent.describe()}"
    return body


def assert_accepted_nothing_or(sent: Sent, client: Client, run_id: str, sha: str) -> None:
    """The generic oracle: a 4xx that changed nothing, or a 200 that stored at most the
    one checkpoint the payload certifies (``run_id`` at seq 0 with ``sha``)."""
    assert sent.status < 500, f"server error: {sent.describe()}"
    if sent.status != 200:
        assert_refused(sent)
        return
    if sent.after == sent.before:
        return  # the export held no checkpoint any more (e.g. the span was renamed)
    assert client.stored(run_id) == [(0, sha)], f"stored something else: {sent.describe()}"
    assert sent.after is not None and sent.before is not None
    assert sent.after.checkpoints == sent.before.checkpoints + 1, sent.describe()


def exported_checkpoints(body: bytes, content_type: str) -> int | None:
    """How many checkpoint.save spans ``body`` holds per protobuf, None when it does not parse."""
    try:
        if content_type == JSON:
            request = ExportTraceServiceRequest()
            json_format.Parse(body, request, ignore_unknown_fields=True)
        else:
            request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError):
        return None
    return sum(
        1
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if span.name == "checkpoint.save"
    )


@pytest.fixture(scope="module")
def client(fuzz_sidecar: ThreadedSidecar) -> Iterator[Client]:
    """A client of the fuzz sidecar, whose store already holds a few checkpoints."""
    seeded = [make_checkpoint("fz-seed-a", s) for s in range(3)] + [
        make_checkpoint("fz-seed-b", 0, pending=["review"])
    ]
    resp = post_checkpoints(fuzz_sidecar.url, seeded)
    assert resp.status_code == 200, resp.text
    assert fuzz_sidecar.snapshot().checkpoints == 4
    c = Client(fuzz_sidecar)
    try:
        yield c
    finally:
        c.session.close()


# -- strategies -------------------------------------------------------------------------------

KEYS = (
    "flowpoint.tenant_id",
    "flowpoint.flow_id",
    "flowpoint.run_id",
    "flowpoint.seq",
    "flowpoint.status",
    "flowpoint.schema_version",
    "flowpoint.epoch",
    "flowpoint.sha256",
    "flowpoint.payload",
)
INT_KEYS = ("flowpoint.seq", "flowpoint.schema_version", "flowpoint.epoch")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=INT64_MAX),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
plain_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)
invalid_ids = st.one_of(
    st.sampled_from(["", "-lead", ".dot", "a..b", "a/b", "run id", "ünï", "a" * 129, "x\x00y"]),
    st.text(min_size=1, max_size=140).filter(lambda s: not is_valid_id(s)),
)
valid_ids = st.from_regex(r"\A[a-z][a-z0-9-]{2,20}\Z")
out_of_range_ints = st.one_of(
    st.integers(max_value=-1, min_value=-(2**63)),
    # Only a double can carry more than int64; an integral one counts as an int.
    st.integers(min_value=64, max_value=1000).map(lambda e: float(2**e)),
)
non_integral = st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda f: not float(f).is_integer()
)


def wrong_type_values(key: str) -> st.SearchStrategy[Any]:
    """Values of a type the contract does not allow for ``key``."""
    if key in INT_KEYS:
        return st.one_of(
            st.none(),
            st.booleans(),
            st.text(max_size=10),
            st.binary(max_size=10),
            non_integral,
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        )
    if key == "flowpoint.payload":
        return st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.lists(st.binary(max_size=5), max_size=2),
            st.dictionaries(st.text(max_size=3), st.binary(max_size=3), max_size=2),
        )
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.binary(max_size=10),
        st.lists(st.text(max_size=3), max_size=2),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    )


@st.composite
def bad_checkpoint_attrs(draw: st.DrawFn) -> tuple[str, dict[str, AnyValue]]:
    """Attributes of one checkpoint span that the sidecar must refuse, and what is wrong."""
    run_id = fresh_run("bad")
    attrs = valid_attrs(run_id)
    doc = json.loads(attrs["flowpoint.payload"].bytes_value)
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "wrong_type",
                "span_int_out_of_range",
                "span_id_invalid",
                "span_id_differs",
                "status_invalid",
                "status_differs",
                "seq_differs",
                "schema_version_differs",
                "sha_mismatch",
                "sha_malformed",
                "payload_damaged",
                "payload_not_checkpoint",
                "both_seq_out_of_range",
                "both_schema_version_unknown",
                "payload_field_invalid",
                "seq_conflict",
            ]
        )
    )
    if kind == "missing":
        del attrs[draw(st.sampled_from(KEYS))]
    elif kind == "wrong_type":
        key = draw(st.sampled_from(KEYS))
        attrs[key] = any_value(draw(wrong_type_values(key)))
    elif kind == "span_int_out_of_range":
        key = draw(st.sampled_from(INT_KEYS))
        attrs[key] = any_value(draw(out_of_range_ints))
    elif kind == "span_id_invalid":
        attrs[draw(st.sampled_from(KEYS[:3]))] = any_value(draw(invalid_ids))
    elif kind == "span_id_differs":
        key = draw(st.sampled_from(KEYS[:3]))
        other = draw(valid_ids)
        assume(other != attrs[key].string_value)
        attrs[key] = any_value(other)
    elif kind == "status_invalid":
        status = draw(st.text(max_size=20))
        assume(status not in {s.value for s in CheckpointStatus})
        attrs["flowpoint.status"] = any_value(status)
    elif kind == "status_differs":
        status = draw(st.sampled_from([s.value for s in CheckpointStatus if s.value != "active"]))
        attrs["flowpoint.status"] = any_value(status)
    elif kind == "seq_differs":
        attrs["flowpoint.seq"] = any_value(draw(st.integers(min_value=1, max_value=INT64_MAX)))
    elif kind == "schema_version_differs":
        version = draw(st.integers(min_value=2, max_value=INT64_MAX))
        attrs["flowpoint.schema_version"] = any_value(version)
    elif kind == "sha_mismatch":
        sha = draw(st.binary(min_size=32, max_size=32)).hex()
        assume(sha != attrs["flowpoint.sha256"].string_value)
        attrs["flowpoint.sha256"] = any_value(sha)
    elif kind == "sha_malformed":
        sha = draw(st.one_of(st.text(max_size=70), st.binary(max_size=40).map(bytes.hex)))
        assume(len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha))
        attrs["flowpoint.sha256"] = any_value(sha)
    elif kind == "payload_damaged":
        payload = bytearray(attrs["flowpoint.payload"].bytes_value)
        how = draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip":
            i = draw(st.integers(0, len(payload) - 1))
            payload[i] ^= draw(st.integers(1, 255))
        elif how == "truncate":
            del payload[draw(st.integers(0, len(payload) - 1)) :]
        else:
            payload += draw(st.binary(min_size=1, max_size=20))
        attrs["flowpoint.payload"] = any_value(bytes(payload))
    elif kind == "payload_not_checkpoint":
        # Bytes whose SHA-256 is right but which are no FlowCheckpoint.
        junk = draw(
            st.one_of(
                st.binary(max_size=200),
                plain_values.map(lambda v: json.dumps(v, default=repr).encode()),
                st.just(b"[" * 5000),
            )
        )
        attrs["flowpoint.payload"] = any_value(junk)
        attrs["flowpoint.sha256"] = any_value(hashlib.sha256(junk).hexdigest())
    elif kind == "both_seq_out_of_range":
        seq = draw(
            st.one_of(
                st.integers(min_value=-(2**63), max_value=-1),
                st.integers(min_value=64, max_value=200),
            )
        )
        value = seq if seq < 0 else 2**seq
        doc["seq"] = value
        attrs = attrs_with_payload(doc, **{"flowpoint.seq": value if seq < 0 else float(value)})
    elif kind == "both_schema_version_unknown":
        version = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=2)))
        version = max(min(version, INT64_MAX), -(2**63))
        doc["schema_version"] = version
        attrs = attrs_with_payload(doc)
    elif kind == "payload_field_invalid":
        field = draw(
            st.sampled_from(
                # (Unknown top-level fields are tolerated: FlowCheckpoint ignores them and the
                # exact bytes are stored, so "extra" is no refusal case.)
                ["tenant_id", "flow_id", "run_id", "node_states", "created_at", "missing"]
            )
        )
        if field == "missing":
            del doc[draw(st.sampled_from(["graph_fingerprint", "run_id", "seq", "node_states"]))]
        elif field == "created_at":
            # Naive, impossible or no date at all. (A number is a Unix time to pydantic.)
            doc["created_at"] = draw(
                st.sampled_from(["2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "yesterday", ""])
            )
        elif field == "node_states":
            doc["node_states"] = draw(
                st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()))
            )
        else:
            doc[field] = draw(invalid_ids)
        kind = f"{kind}:{field}"
        attrs = attrs_with_payload(
            doc,
            **{
                "flowpoint.tenant_id": "default",
                "flowpoint.flow_id": "flow-s",
                "flowpoint.run_id": run_id,
                "flowpoint.seq": 0,
                "flowpoint.status": "active",
                "flowpoint.schema_version": 1,
            },
        )
    elif kind == "seq_conflict":
        # The key of a stored checkpoint with other content.
        note = draw(st.text(min_size=1, max_size=8))
        attrs = valid_attrs("fz-seed-a", draw(st.integers(0, 2)), note=note)
    return kind, attrs


# -- the tests ----------------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=2048), content_type=st.sampled_from([PROTOBUF, JSON]))
def test_random_bytes_are_refused_or_hold_no_checkpoint(
    client: Client, body: bytes, content_type: str
) -> None:
    sent = client.post(body, content_type)
    assert sent.status < 500, sent.describe()
    if sent.status == 200:
        # Only a body that decodes to an export without checkpoints may pass.
        assert exported_checkpoints(body, content_type) == 0, sent.describe()
        assert sent.after == sent.before
    else:
        assert_refused(sent, 400)


@FUZZ
@given(
    bad=bad_checkpoint_attrs(),
    companion=st.sampled_from(["alone", "with_valid_checkpoint", "with_other_span"]),
    encoding=st.sampled_from([PROTOBUF, JSON]),
    payload_as_string=st.booleans(),
)
def test_bad_checkpoint_spans_are_refused_and_store_nothing(
    client: Client,
    bad: tuple[str, dict[str, AnyValue]],
    companion: str,
    encoding: str,
    payload_as_string: bool,
) -> None:
    kind, attrs = bad
    shown = {k: str(v).strip() for k, v in attrs.items() if k != "flowpoint.payload"}
    note(f"kind={kind} attrs={shown}")
    # Conflicts are found per record by the store: a valid checkpoint beside one is stored
    # (the request still answers 409), so that pairing is not a "changes nothing" case.
    assume(not (kind == "seq_conflict" and companion == "with_valid_checkpoint"))
    payload = attrs.get("flowpoint.payload")
    if (
        payload_as_string
        and payload is not None
        and payload.WhichOneof("value") == "bytes_value"
        and _is_utf8(payload.bytes_value)
    ):
        # SDKs without bytes attributes send the payload as a string: same rules.
        attrs = {**attrs, "flowpoint.payload": any_value(payload.bytes_value.decode("utf-8"))}
    spans = [make_span(attrs, n=1)]
    if companion == "with_valid_checkpoint":
        # A valid checkpoint in the same request must not be stored either.
        spans.insert(0, make_span(valid_attrs(fresh_run("companion")), n=2))
    elif companion == "with_other_span":
        spans.append(make_span({"http.route": any_value("/x")}, name="GET /x", n=3))
    request = make_request(spans)
    if encoding == JSON:
        body = json.dumps(to_otlp_json(request)).encode()
    else:
        body = request.SerializeToString()
    sent = client.post(body, encoding)
    expected = (409,) if kind == "seq_conflict" else (400,)
    assert_refused(sent, *expected)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _valid_export(run_id: str) -> tuple[bytes, str]:
    """A protobuf export from the OpenTelemetry SDK's own encoder: one valid checkpoint of
    ``run_id`` and one ordinary span; and the checkpoint's SHA-256."""
    cp = checkpoint_of(run_id, 0, payload_bytes=200)
    recorder = SpanRecorder()
    try:
        spans = [recorder.checkpoint_span(cp), recorder.span("GET /work", {"k": "v"})]
    finally:
        recorder.shutdown()
    return otlp_body(spans), hashlib.sha256(checkpoint_to_bytes(cp)).hexdigest()


def test_every_truncation_of_a_valid_protobuf_export_is_refused(client: Client) -> None:
    run_id = fresh_run("trunc-pb")
    body, sha = _valid_export(run_id)
    before = client.sidecar.snapshot()
    refused = 0
    for cut in range(1, len(body)):
        assert_refused(client.post(body[:cut], PROTOBUF, fingerprint=False), 400)
        refused += 1
    assert refused == len(body) - 1
    # A refused request cannot delete anything: one comparison covers the whole series.
    assert client.sidecar.snapshot() == before
    # The whole body is fine: the test could have seen a change.
    whole = client.post(body, PROTOBUF)
    assert whole.status == 200, whole.describe()
    assert client.stored(run_id) == [(0, sha)]


def test_every_truncation_of_a_valid_json_export_is_refused(client: Client) -> None:
    run_id = fresh_run("trunc-json")
    body, sha = _valid_export(run_id)
    text = json.dumps(to_otlp_json(ExportTraceServiceRequest.FromString(body))).encode()
    # Cut everywhere in the head and tail, and at a stride through the base64 payload.
    cuts = sorted(
        set(range(1, 400))
        | set(range(400, len(text) - 400, 7))
        | set(range(max(1, len(text) - 400), len(text)))
    )
    before = client.sidecar.snapshot()
    for cut in cuts:
        assert_refused(client.post(text[:cut], JSON, fingerprint=False), 400)
    assert client.sidecar.snapshot() == before
    whole = client.post(text, JSON)
    assert whole.status == 200, whole.describe()
    assert client.stored(run_id) == [(0, sha)]


def python_gunzip(data: bytes) -> bytes | None:
    """What a streaming gzip decoder (aiohttp's, zlib's) makes of ``data``: the bytes it
    inflates, or None when the stream is invalid. A stream cut short is no error."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data)
    except zlib.error:
        return None


@FUZZ
@given(k=st.integers(min_value=0, max_value=10**6))
def test_truncated_gzip_of_a_valid_export_never_stores_a_partial_body(
    client: Client, k: int
) -> None:
    run_id = fresh_run("trunc-gz")
    body, _ = _valid_export(run_id)
    packed = gzip.compress(body)
    cut = 1 + k % (len(packed) - 1)  # the packed length varies with the span timestamps
    note(f"cut {cut} of {len(packed)}")
    sent = client.post(packed[:cut], PROTOBUF, {"Content-Encoding": "gzip"}, fresh_connection=True)
    # Every cut, even one inside the trailer, is an incomplete stream: refused, nothing stored,
    # so the worker keeps the checkpoint in its outbox and sends it again.
    assert_refused(sent, 400)


# -- OTLP JSON ----------------------------------------------------------------------------------


def _json_nodes(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_nodes(v, (*path, i))


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(data=st.data())
def test_mutated_otlp_json_exports_store_nothing_but_the_certified_checkpoint(
    client: Client, data: st.DataObject
) -> None:
    run_id = fresh_run("json-mut")
    attrs = valid_attrs(run_id)
    sha = attrs["flowpoint.sha256"].string_value
    doc = to_otlp_json(make_request([make_span(attrs)]))
    mutated = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _json_nodes(mutated) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = mutated
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "stringify"]), label="action")
        if action == "delete":
            del parent[path[-1]]
        elif action == "stringify":
            parent[path[-1]] = json.dumps(parent[path[-1]])
        else:
            parent[path[-1]] = data.draw(json_values, label="value")
    body = json.dumps(mutated).encode()
    sent = client.post(body, JSON)
    assert_accepted_nothing_or(sent, client, run_id, sha)
    if sent.status == 200 and sent.after == sent.before:
        # Acknowledged without storing: only right when no checkpoint span is left.
        assert not _has_checkpoint_span(mutated), f"checkpoint dropped: {sent.describe()}"


def _has_checkpoint_span(doc: Any) -> bool:
    """Whether an OTLP JSON export still holds a span object named checkpoint.save."""

    def items(obj: Any, *names: str) -> list[Any]:
        if not isinstance(obj, dict):
            return []
        for name in names:
            value = obj.get(name)
            if isinstance(value, list):
                return value
        return []

    return any(
        isinstance(span, dict) and span.get("name") == "checkpoint.save"
        for rs in items(doc, "resourceSpans", "resource_spans")
        for ss in items(rs, "scopeSpans", "scope_spans")
        for span in items(ss, "spans")
    )


@FUZZ
@given(data=st.data())
def test_otlp_json_with_a_message_of_the_wrong_shape_is_refused(
    client: Client, data: st.DataObject
) -> None:
    doc = to_otlp_json(make_request([make_span(valid_attrs(fresh_run("json-shape")))]))
    # Every object in an OTLP JSON export is a message, every array a repeated message field.
    paths = [p for p in _json_nodes(doc) if p and isinstance(_at(doc, p), (dict, list))]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = _at(doc, path[:-1])
    if isinstance(parent[path[-1]], dict):
        wrong = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.lists(st.none()))
    else:
        wrong = st.one_of(
            st.text(max_size=5), st.integers(), st.booleans(), st.dictionaries(st.text(), st.none())
        )
    parent[path[-1]] = data.draw(wrong, label="wrong")
    body = assert_refused(client.post(json.dumps(doc).encode(), JSON), 400)
    assert body["error"] == "malformed_request", body


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@FUZZ
@given(doc=json_values, raw=st.one_of(st.none(), st.text(max_size=200)))
def test_arbitrary_json_documents_are_refused_or_hold_no_checkpoint(
    client: Client, doc: Any, raw: str | None
) -> None:
    body = (raw if raw is not None else json.dumps(doc)).encode("utf-8", "surrogatepass")
    sent = client.post(body, JSON)
    assert sent.status < 500, sent.describe()
    if sent.status == 200:
        assert sent.after == sent.before, sent.describe()
    else:
        assert_refused(sent, 400)


@pytest.mark.parametrize(
    "ids",
    [
        {"traceId": "zz" * 16},
        {"traceId": "0a" * 15},
        {"spanId": "not-hex!"},
        {"spanId": "00" * 9},
    ],
    ids=["trace-not-hex", "trace-short", "span-junk", "span-long"],
)
def test_otlp_json_with_malformed_ids_is_refused(client: Client, ids: dict[str, str]) -> None:
    doc = to_otlp_json(make_request([make_span(valid_attrs(fresh_run("json-ids")))]))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(ids)
    assert_refused(client.post(json.dumps(doc).encode(), JSON), 400)


def test_otlp_json_with_bad_base64_payload_is_refused(client: Client) -> None:
    doc = to_otlp_json(make_request([make_span(valid_attrs(fresh_run("json-b64")))]))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for attr in span["attributes"]:
        if attr["key"] == "flowpoint.payload":
            attr["value"] = {"bytesValue": "%%% not base64 %%%"}
    assert_refused(client.post(json.dumps(doc).encode(), JSON), 400)


# -- content types --------------------------------------------------------------------------

wrong_content_types = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "application/protobuf",
            "application/x-protobuf2",
            "application/grpc",
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonl",
            "text/json",
            "application/*",
            "*/*",
            "json",
            "",
        ]
    ),
    st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+-]{1,24}\Z"),
).filter(lambda ct: ct.split(";")[0].strip().lower() not in (PROTOBUF, JSON))


@FUZZ
@given(content_type=wrong_content_types, json_body=st.booleans())
def test_wrong_content_types_are_415(client: Client, content_type: str, json_body: bool) -> None:
    attrs = valid_attrs(fresh_run("ctype"))
    request = make_request([make_span(attrs)])
    body = json.dumps(to_otlp_json(request)).encode() if json_body else request.SerializeToString()
    body_ = assert_refused(client.post(body, content_type or None), 415)
    assert body_["error"] == "unsupported_media_type"


def test_content_type_that_lies_about_the_encoding_is_400(client: Client) -> None:
    request = make_request([make_span(valid_attrs(fresh_run("swap")))])
    assert_refused(client.post(request.SerializeToString(), JSON), 400)
    assert_refused(client.post(json.dumps(to_otlp_json(request)).encode(), PROTOBUF), 400)


# -- sizes, gzip bombs and Content-Encoding lies -----------------------------------------------


def _gzip(chunks: Iterator[bytes]) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(comp.compress(c) for c in chunks) + comp.flush()


def _zeros(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    block = b"\0" * chunk
    while total > 0:
        yield block[: min(chunk, total)]
        total -= chunk


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _padded_export(total: int) -> Iterator[bytes]:
    """A valid checkpoint export followed by one huge (valid) unknown protobuf field."""
    body, _ = _valid_export(fresh_run("bomb-valid"))
    yield body
    pad = total - len(body)
    # Field 15, wire type 2 (length-delimited): the tag, the varint length, then zeros.
    length = pad - 1 - len(_varint(pad))
    yield b"\x7a" + _varint(length)
    yield from _zeros(length)


BOMBS: dict[str, Callable[[], Iterator[bytes]]] = {
    "zeros-just-past-limit": lambda: _zeros(FUZZ_MAX_BODY_BYTES + 1),
    "zeros-64MiB": lambda: _zeros(64 << 20),
    "valid-export-padded-4MiB": lambda: _padded_export(4 << 20),
    "json-spaces-8MiB": lambda: iter([b"{" + b" " * (8 << 20) + b"}"]),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_gzip_bombs_are_413(client: Client, bomb: str) -> None:
    packed = _gzip(BOMBS[bomb]())
    assert len(packed) < FUZZ_MAX_BODY_BYTES // 4, "a bomb is a small body"
    content_type = JSON if bomb.startswith("json") else PROTOBUF
    sent = client.post(packed, content_type, {"Content-Encoding": "gzip"}, fresh_connection=True)
    body = assert_refused(sent, 413)
    assert body["error"] == "payload_too_large"


def test_body_past_the_limit_is_413(client: Client) -> None:
    body = assert_refused(client.post(b"\0" * (FUZZ_MAX_BODY_BYTES + 1), PROTOBUF), 413)
    assert body["error"] == "payload_too_large"


def test_gzip_export_inside_the_limit_is_accepted(client: Client) -> None:
    # The positive control of the bomb tests: compressed bodies inside the limit pass.
    run_id = fresh_run("gzip-ok")
    body, sha = _valid_export(run_id)
    sent = client.post(gzip.compress(body), PROTOBUF, {"Content-Encoding": "gzip"})
    assert sent.status == 200, sent.describe()
    assert client.stored(run_id) == [(0, sha)]


@FUZZ
@given(
    coding=st.sampled_from(["gzip", "GZIP", "Gzip"]),
    kind=st.sampled_from(["valid_export", "random", "damaged_gzip"]),
    junk=st.binary(min_size=1, max_size=512),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_content_encoding_lies_are_refused(
    client: Client, coding: str, kind: str, junk: bytes, flips: list[tuple[int, int]]
) -> None:
    run_id = fresh_run("lie")
    sha = ""
    if kind == "valid_export":
        body, sha = _valid_export(run_id)  # says gzip, is not
    elif kind == "damaged_gzip":
        export, sha = _valid_export(run_id)
        damaged = bytearray(gzip.compress(export))
        for at, xor in flips:
            damaged[at % len(damaged)] ^= xor
        body = bytes(damaged)
    else:
        body = junk
    sent = client.post(body, PROTOBUF, {"Content-Encoding": coding}, fresh_connection=True)
    inflated = python_gunzip(body)
    if inflated is None:
        body_ = assert_refused(sent, 400)
        assert body_["error"] == "bad_content_encoding", sent.describe()
    else:
        # A stream that decodes (a flipped bit in a stored block or the trailer, or a
        # junk prefix of one): whatever it inflates to must not store anything but the
        # certified checkpoint.
        assert_accepted_nothing_or(sent, client, run_id, sha)


@pytest.mark.parametrize(
    "coding", ["x-gzip", "compress", "snappy", "gzip, gzip", "identity2", "deflate"]
)
def test_unsupported_content_encodings_are_415(client: Client, coding: str) -> None:
    body, _ = _valid_export(fresh_run("coding"))
    packed = zlib.compress(body) if coding == "deflate" else gzip.compress(body)
    sent = client.post(packed, PROTOBUF, {"Content-Encoding": coding}, fresh_connection=True)
    # aiohttp may refuse a deflate body itself (a plain-text 400) when it arrives with the
    # headers; else the sidecar's 415.
    if coding == "deflate" and sent.status == 400:
        assert sent.after == sent.before
    else:
        body_ = assert_refused(sent, 415)
        assert body_["error"] == "unsupported_content_encoding"


@pytest.mark.parametrize(
    ("coding", "body_hex"),
    [
        # Raw-deflate junk that ends mid-stream: aiohttp 3.14 loses the error it raises at
        # EOF, so a handler reading it would wait forever when the body comes after the
        # headers. The sidecar refuses deflate before reading.
        ("deflate", "19e6"),
        ("deflate", "6cbbb7da05100e02"),
        ("br", ""),
        ("zstd", ""),
    ],
)
def test_encodings_that_stall_or_cannot_decode_are_4xx(
    client: Client, coding: str, body_hex: str
) -> None:
    body = bytes.fromhex(body_hex) if body_hex else _valid_export(fresh_run("codec"))[0]
    sent = client.post(body, PROTOBUF, {"Content-Encoding": coding}, fresh_connection=True)
    # A plain-text 400 when aiohttp refuses while parsing (before any handler runs: br and
    # zstd without their libraries), else the sidecar's JSON 415. Never a hang.
    assert sent.status in (400, 415), sent.describe()
    assert sent.after == sent.before
