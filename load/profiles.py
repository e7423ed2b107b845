"""What the load suite sends: realistic checkpoints of agent runs, as OTLP protobuf exports.

A runtime pod drives several runs at once. Each run has a plan drawn from
:data:`RUN_KINDS`: an agent chat whose state grows to 1-16 KB (most runs), a retrieval
run that carries 64-256 KB of documents (some), or a bulk map over many items that
reaches about 1 MB (rare). Its checkpoints carry seq 1..N; the last one is ``completed``,
``failed`` or ``pending_input`` (a human must answer before the run can resume).

Payloads are built as :class:`~checkpoint.models.FlowCheckpoint` models and encoded by
:func:`~checkpoint.models.checkpoint_to_bytes`, so they are exactly what a real flow
emits and the sidecar accepts them. Spans follow the public wire contract (span
``checkpoint.save``, ``flowpoint.*`` attributes) and are serialized with
``opentelemetry-proto``, the same messages the OpenTelemetry SDK's exporter sends.

Nothing here imports Locust, so the sizes and bodies can be checked by plain tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from checkpoint.models import (
    CheckpointStatus,
    ErrorInfo,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    PendingInput,
    checkpoint_to_bytes,
)

__all__ = [
    "APPROVAL_SCHEMA",
    "KB",
    "MB",
    "RUN_KINDS",
    "Encoded",
    "RunKind",
    "RunState",
    "approval_answer",
    "build_checkpoint",
    "encode_save",
    "export_body",
    "new_run",
    "size_class",
    "telemetry_body",
]

KB: Final = 1024
MB: Final = 1024 * KB
SPAN_NAME: Final = "checkpoint.save"
SCOPE_NAME: Final = "flowpoint.checkpoint"
PROTOBUF: Final = "application/x-protobuf"

APPROVAL_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approved"],
}


@dataclass(frozen=True, slots=True)
class RunKind:
    """A family of runs: how likely, how large their state grows, how many saves."""

    name: str
    weight: float
    size_range: tuple[int, int]  # final state size in bytes (canonical JSON)
    saves_range: tuple[int, int]  # checkpoints per run, inclusive
    flow_id: str


# Per-run weights chosen so that, per *save*, ~95% are 1-16 KB, ~4-5% are 64-256 KB and
# ~0.3% are about 1 MB (small runs also save more often than bulk ones).
RUN_KINDS: Final[tuple[RunKind, ...]] = (
    RunKind("chat", 0.88, (1 * KB, 16 * KB), (8, 30), "support-agent"),
    RunKind("retrieval", 0.10, (64 * KB, 256 * KB), (4, 12), "research-rag"),
    RunKind("bulk", 0.02, (960 * KB, 1 * MB), (2, 4), "batch-enrich"),
)

# How a run ends: completed most of the time; some wait for a human, a few fail.
ENDINGS: Final[tuple[tuple[CheckpointStatus, float], ...]] = (
    (CheckpointStatus.COMPLETED, 0.80),
    (CheckpointStatus.PENDING_INPUT, 0.15),
    (CheckpointStatus.FAILED, 0.05),
)

_WORDS: Final = (
    "refund order policy customer approved shipping invoice account balance ticket escalate "
    "warehouse delivery tracking carrier damaged replacement warranty receipt subscription "
    "renewal discount coupon billing address payment declined retry verified identity "
    "summary search result document section clause contract liability appendix table "
    "revenue quarter forecast region product category supplier contract compliance audit"
).split()


def _corpus(seed: int = 20240605, size: int = 512) -> tuple[str, ...]:
    """Chat-like sentences: repetitive vocabulary, varied order (compresses like real text)."""
    rng = random.Random(seed)
    texts = []
    for i in range(size):
        n = rng.randint(25, 90)
        words = [rng.choice(_WORDS) for _ in range(n)]
        words.insert(rng.randrange(n), f"#{rng.randint(10000, 99999)}")
        texts.append(f"{' '.join(words).capitalize()}. (ref {i})")
    return tuple(texts)


CORPUS: Final = _corpus()


def _message(i: int, salt: int) -> dict[str, Any]:
    """The i-th message of an agent conversation (OpenAI chat format, plain dicts)."""
    text = CORPUS[(i * 7 + salt) % len(CORPUS)]
    if i == 0:
        return {"role": "system", "content": "You are a support agent. " + text}
    if i % 4 == 2:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{salt % 997}_{i}",
                    "name": "search" if i % 8 == 2 else "lookup_order",
                    "arguments": {"q": text[:60], "limit": 5},
                }
            ],
        }
    if i % 4 == 3:
        return {"role": "tool", "tool_call_id": f"call_{salt % 997}_{i - 1}", "content": text}
    return {"role": "assistant" if i % 2 else "user", "content": text}


def _approx_size(value: dict[str, Any]) -> int:
    # Cheap estimate of a message's canonical JSON length; exactness is not needed.
    total = 40
    for v in value.values():
        total += len(v) + 12 if isinstance(v, str) else 160
    return total


@dataclass(slots=True)
class RunState:
    """One run a pod drives: its plan and where it stands."""

    run_id: str
    kind: RunKind
    final_size: int
    saves: int
    ending: CheckpointStatus
    salt: int
    seq: int = 0
    epoch: int = 0
    status: CheckpointStatus = CheckpointStatus.ACTIVE
    claimed_by: str | None = None
    input_path: str | None = None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    _messages: list[dict[str, Any]] = field(default_factory=list)
    _messages_size: int = 0

    @property
    def finished(self) -> bool:
        """True once the run's last planned checkpoint is stored."""
        return self.status is not CheckpointStatus.ACTIVE

    def next_status(self) -> CheckpointStatus:
        """The status of the checkpoint with ``seq + 1``."""
        return self.ending if self.seq + 1 >= self.saves else CheckpointStatus.ACTIVE

    def size_at(self, seq: int) -> int:
        """The state size this run has reached at ``seq``: it grows as the agent loops."""
        start = min(self.final_size, 800)
        # A resumed run's closing checkpoint (past the plan) keeps the final size.
        return start + (self.final_size - start) * min(seq, self.saves) // max(1, self.saves)

    @property
    def messages_size(self) -> int:
        """About how many bytes of JSON the conversation so far takes."""
        return self._messages_size

    def messages_for(self, size: int) -> list[dict[str, Any]]:
        """The conversation, grown (append-only, like a real agent's) to about ``size`` bytes."""
        while self._messages_size < size:
            msg = _message(len(self._messages), self.salt)
            self._messages.append(msg)
            self._messages_size += _approx_size(msg)
        return self._messages


def new_run(rng: random.Random, run_id: str) -> RunState:
    """A run with a randomly drawn kind, final size, length and ending."""
    kind = rng.choices(RUN_KINDS, weights=[k.weight for k in RUN_KINDS])[0]
    statuses = [s for s, _ in ENDINGS]
    ending = rng.choices(statuses, weights=[w for _, w in ENDINGS])[0]
    return RunState(
        run_id=run_id,
        kind=kind,
        final_size=rng.randint(*kind.size_range),
        saves=rng.randint(*kind.saves_range),
        ending=ending,
        salt=rng.randrange(1 << 30),
    )


def _documents(run: RunState, size: int) -> list[dict[str, Any]]:
    """Retrieved chunks (retrieval runs) or per-item results (bulk runs) of about ``size``."""
    docs: list[dict[str, Any]] = []
    total = 0
    i = 0
    while total < size:
        text = " ".join(CORPUS[(run.salt + i * 13 + k) % len(CORPUS)] for k in range(3))
        docs.append(
            {"id": f"doc-{(run.salt + i) % 100000}", "score": round(1 / (i + 2), 4), "text": text}
        )
        total += len(text) + 60
        i += 1
    return docs


def build_checkpoint(
    run: RunState,
    seq: int,
    status: CheckpointStatus,
    *,
    tenant_id: str = "default",
    traceparent: str | None = None,
) -> FlowCheckpoint:
    """The checkpoint ``seq`` of ``run`` (its state sized by :meth:`RunState.size_at`)."""
    now = dt.datetime.now(dt.UTC)
    size = run.size_at(seq)
    nodes: dict[str, NodeState] = {
        "fetch": NodeState(
            node_id="fetch",
            node_type="FunctionNode",
            status=NodeStatus.SUCCEEDED,
            input={"ticket": run.salt % 100000},
            output={"customer": f"c-{run.salt % 9973}", "tier": "gold", "orders": [1, 2, 3]},
            attempts=1,
            started_at=run.started_at,
            finished_at=run.started_at,
        )
    }
    if run.kind.name == "chat":
        messages = run.messages_for(max(0, size - 900))
    else:
        # Bulk and retrieval runs keep a short conversation beside their documents.
        messages = run.messages_for(min(4 * KB, size // 8))
        docs = _documents(run, max(0, size - run.messages_size - 900))
        node_id = "retrieve" if run.kind.name == "retrieval" else "enrich"
        nodes[node_id] = NodeState(
            node_id=node_id,
            node_type="FunctionNode" if run.kind.name == "retrieval" else "Map",
            status=NodeStatus.SUCCEEDED if seq > 1 else NodeStatus.RUNNING,
            output={"documents": docs} if run.kind.name == "retrieval" else None,
            internal_state={} if run.kind.name == "retrieval" else {"done": docs},
            attempts=1,
            started_at=run.started_at,
        )
    agent_status = {
        CheckpointStatus.ACTIVE: NodeStatus.RUNNING,
        CheckpointStatus.COMPLETED: NodeStatus.SUCCEEDED,
        CheckpointStatus.FAILED: NodeStatus.FAILED,
        CheckpointStatus.PENDING_INPUT: NodeStatus.WAITING,
        CheckpointStatus.CANCELED: NodeStatus.SKIPPED,
    }[status]
    nodes["triage"] = NodeState(
        node_id="triage",
        node_type="Agent",
        status=agent_status,
        internal_state={"messages": messages, "loops": seq, "usage": {"tokens": 180 * seq}},
        output={"answer": CORPUS[run.salt % len(CORPUS)]}
        if status is CheckpointStatus.COMPLETED
        else None,
        error=ErrorInfo(type="ToolError", message="lookup_order timed out after 3 attempts")
        if status is CheckpointStatus.FAILED
        else None,
        attempts=1,
        started_at=run.started_at,
        finished_at=now if status is not CheckpointStatus.ACTIVE else None,
    )
    pending: list[PendingInput] = []
    if status is CheckpointStatus.PENDING_INPUT:
        path = run.input_path or f"triage/tools/approve#{seq}"
        run.input_path = path
        pending.append(
            PendingInput(
                path=path,
                prompt=f"Approve a refund of {run.salt % 500}.00 for ticket {run.salt % 100000}?",
                schema=APPROVAL_SCHEMA,
                metadata={"amount": run.salt % 500, "currency": "EUR"},
                requested_at=now,
            )
        )
    return FlowCheckpoint(
        tenant_id=tenant_id,
        flow_id=run.kind.flow_id,
        run_id=run.run_id,
        seq=seq,
        status=status,
        graph_fingerprint=f"fp-{run.kind.flow_id}-v3",
        node_states=nodes,
        original_input={"question": CORPUS[run.salt % len(CORPUS)][:120]},
        pending_inputs=pending,
        created_at=now,
        trace_context=traceparent,
        metadata={"pod": "load", "kind": run.kind.name},
    )


SIZE_CLASSES: Final = ((16 * KB, "<=16KB"), (64 * KB, "16-64KB"), (256 * KB, "64-256KB"))


def size_class(raw_size: int) -> str:
    """The bucket a payload size falls in, for the mix the load report prints."""
    for limit, label in SIZE_CLASSES:
        if raw_size <= limit:
            return label
    return ">256KB"


def approval_answer(rng: random.Random) -> dict[str, Any]:
    """A human's answer that satisfies :data:`APPROVAL_SCHEMA`."""
    approved = rng.random() < 0.8
    return {"approved": approved, "comment": "ok" if approved else "amount too high"}


# -- OTLP ----------------------------------------------------------------------------------


def _kv(key: str, value: str | int | bytes) -> KeyValue:
    if isinstance(value, bytes):
        return KeyValue(key=key, value=AnyValue(bytes_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export_body(
    spans: list[Span], *, service_name: str, pod: str, scope: str = SCOPE_NAME
) -> bytes:
    """An ``ExportTraceServiceRequest`` (OTLP/HTTP protobuf body) holding ``spans``."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        [
            _kv("service.name", service_name),
            _kv("k8s.pod.name", pod),
            _kv("telemetry.sdk.language", "python"),
        ]
    )
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.spans.extend(spans)
    body: bytes = request.SerializeToString()
    return body


@dataclass(frozen=True, slots=True)
class Encoded:
    """One checkpoint export, ready to POST."""

    body: bytes
    raw_size: int
    sha256: str
    trace_id: str


def checkpoint_span(
    cp: FlowCheckpoint,
    payload: bytes,
    sha256: str,
    *,
    epoch: int,
    start_ns: int,
    trace_id: bytes,
    parent_id: bytes,
) -> Span:
    """The ``checkpoint.save`` span of ``cp`` (its canonical ``payload``), wire contract."""
    return Span(
        trace_id=trace_id,
        span_id=os.urandom(8),
        parent_span_id=parent_id,
        name=SPAN_NAME,
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=time.time_ns(),
        attributes=[
            _kv("flowpoint.tenant_id", cp.tenant_id),
            _kv("flowpoint.flow_id", cp.flow_id),
            _kv("flowpoint.run_id", cp.run_id),
            _kv("flowpoint.seq", cp.seq),
            _kv("flowpoint.status", str(cp.status)),
            _kv("flowpoint.schema_version", cp.schema_version),
            _kv("flowpoint.epoch", epoch),
            _kv("flowpoint.sha256", sha256),
            _kv("flowpoint.payload", payload),
        ],
    )


def encode_save(
    run: RunState,
    seq: int,
    status: CheckpointStatus,
    *,
    epoch: int,
    pod: str,
    tenant_id: str = "default",
) -> Encoded:
    """The OTLP body of checkpoint ``seq`` of ``run`` (``checkpoint.save``, wire contract).

    The span starts now, before the payload is encoded, as a flow's span does: the sidecar
    measures save latency from the span's start.
    """
    start_ns = time.time_ns()
    trace_id = os.urandom(16)
    parent_id = os.urandom(8)
    traceparent = f"00-{trace_id.hex()}-{parent_id.hex()}-01"
    cp = build_checkpoint(run, seq, status, tenant_id=tenant_id, traceparent=traceparent)
    payload = checkpoint_to_bytes(cp)
    sha = hashlib.sha256(payload).hexdigest()
    span = checkpoint_span(
        cp, payload, sha, epoch=epoch, start_ns=start_ns, trace_id=trace_id, parent_id=parent_id
    )
    body = export_body([span], service_name="flowpoint-load-worker", pod=pod)
    return Encoded(body=body, raw_size=len(payload), sha256=sha, trace_id=trace_id.hex())


def telemetry_body(pod: str, rng: random.Random, spans: int = 8) -> bytes:
    """An export of ordinary spans (node and LLM calls): the pod's other telemetry."""
    trace_id = os.urandom(16)
    root = os.urandom(8)
    now = time.time_ns()
    out = [
        Span(
            trace_id=trace_id,
            span_id=root,
            name="flow.run",
            kind=Span.SpanKind.SPAN_KIND_INTERNAL,
            start_time_unix_nano=now - 2_000_000_000,
            end_time_unix_nano=now,
            attributes=[_kv("flow.id", "support-agent")],
        )
    ]
    for i in range(spans - 1):
        out.append(
            Span(
                trace_id=trace_id,
                span_id=os.urandom(8),
                parent_span_id=root,
                name="llm.chat" if i % 2 else "node.run",
                kind=Span.SpanKind.SPAN_KIND_CLIENT if i % 2 else Span.SpanKind.SPAN_KIND_INTERNAL,
                start_time_unix_nano=now - 1_900_000_000 + i * 200_000_000,
                end_time_unix_nano=now - 1_800_000_000 + i * 200_000_000,
                attributes=[
                    _kv("node.id", f"n{i}"),
                    _kv("gen_ai.usage.input_tokens", rng.randint(100, 4000)),
                ],
            )
        )
    return export_body(out, service_name="flowpoint-load-worker", pod=pod, scope="flows")
