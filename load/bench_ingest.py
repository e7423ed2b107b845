"""The sidecar's CPU per checkpoint on its ingest path, in one process, without I/O.

``POST /v1/traces`` decodes the OTLP body, then for each checkpoint verifies the SHA-256,
parses and validates the payload and compresses it (``sidecar.ingest.prepare``). These are
timed here one stage at a time, on the payloads of the end-to-end benchmark (an agent's
state: tag-free JSON, the parser's fast road) and of the codec benchmark (type tags: the
reference road), so a change to the write path shows its effect without the noise of
three processes sharing two cores. The reference parse (``checkpoint_from_bytes``) is
timed beside the sidecar's, which must give the same checkpoint.

    python -m load.bench_ingest           # or: python -m load.bench --only ingest
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint.codec import sha256_hex
from checkpoint.models import FlowCheckpoint, checkpoint_from_bytes, checkpoint_to_bytes
from load import profiles
from load.bench_codec import Timing, agent_checkpoint, measure, render_table
from load.bench_sidecar import flow_checkpoint
from sidecar import otlp
from sidecar.ingest import parse_checkpoint, prepare

PrintFn = Callable[[str], Any]
SIZES: tuple[tuple[str, int], ...] = (
    ("1 KB", 1024),
    ("16 KB", 16 * 1024),
    ("256 KB", 256 * 1024),
    ("1 MB", 1024 * 1024),
)
SPANS_PER_REQUEST = 8  # what concurrent saves share at c=32 in the end-to-end benchmark


@dataclass(frozen=True)
class IngestResult:
    """One payload kind and size: microseconds per checkpoint for each stage."""

    payload: str
    label: str
    raw_size: int
    stages: dict[str, Timing]


def _body(cp: FlowCheckpoint, spans: int) -> bytes:
    """An OTLP request of ``spans`` checkpoint spans (one run each), as a worker sends it."""
    items = []
    for i in range(spans):
        one = cp.model_copy(update={"run_id": f"{cp.run_id}-{i}"})
        payload = checkpoint_to_bytes(one)
        items.append(
            profiles.checkpoint_span(
                one,
                payload,
                sha256_hex(payload),
                epoch=0,
                start_ns=time.time_ns(),
                trace_id=os.urandom(16),
                parent_id=os.urandom(8),
            )
        )
    return profiles.export_body(items, service_name="flowpoint-bench", pod="bench")


def bench_case(payload: str, label: str, cp: FlowCheckpoint, min_time: float) -> IngestResult:
    """Time each ingest stage for one checkpoint kind and size (per checkpoint)."""
    spans = SPANS_PER_REQUEST if len(checkpoint_to_bytes(cp)) <= 64 * 1024 else 1
    body = _body(cp, spans)
    decoded = otlp.decode_protobuf(body)
    span = decoded.checkpoints[0]
    raw = span.payload
    if parse_checkpoint(raw) != checkpoint_from_bytes(raw):  # what is timed must agree
        raise AssertionError(f"{payload} {label}: the sidecar's parse differs from the reference")
    decode = measure(lambda: otlp.decode_protobuf(body), min_time)
    stages = {
        "decode OTLP": Timing(median=decode.median / spans, ops=decode.ops),
        "sha256": measure(lambda: sha256_hex(raw), min_time),
        "parse (sidecar)": measure(lambda: parse_checkpoint(raw), min_time),
        "parse (reference)": measure(lambda: checkpoint_from_bytes(raw), min_time),
        "prepare (all)": measure(lambda: prepare(span, 3, 0), min_time),
    }
    return IngestResult(payload=payload, label=label, raw_size=len(raw), stages=stages)


def run(
    print_fn: PrintFn = print,
    *,
    quick: bool = False,
    min_time: float | None = None,
    sizes: Sequence[tuple[str, int]] = SIZES,
) -> list[IngestResult]:
    """Run the ingest benchmark, print its table, and return the measurements."""
    per_case = min_time if min_time is not None else (0.05 if quick else 0.2)
    results = []
    for label, size in sizes:
        results.append(bench_case("agent state", label, flow_checkpoint(size), per_case))
        results.append(bench_case("tagged values", label, agent_checkpoint(size), per_case))
    names = list(results[0].stages) if results else []
    rows = [[r.payload, r.label, *(f"{r.stages[n].micros:,.1f}" for n in names)] for r in results]
    print_fn(
        render_table(
            "sidecar ingest CPU per checkpoint, µs (median; 'prepare (all)' = sha256 + the "
            "sidecar's parse + checks + zstd)",
            ["payload", "size", *names],
            rows,
        )
    )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurements")
    args = parser.parse_args(argv)
    run(quick=args.quick)


if __name__ == "__main__":
    main()
