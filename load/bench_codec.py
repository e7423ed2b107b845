"""Codec throughput: a FlowCheckpoint to sealed bytes and back, at 1 KB, 64 KB and 1 MB.

The payloads are agent-like and deterministic (``random.Random(seed)``): an Agent node
holding a chat history with tool calls and tool outputs, a Map node's finished iterations
(int keys, so codec ``map`` tags), base64-ish strings and raw ``bytes`` blobs, numbers,
datetimes and UUIDs. Two round trips are timed, each the way the product runs them:

* encode+seal: ``checkpoint_to_bytes`` (canonical JSON, the SHA-256 input) then
  ``codec.seal`` (SHA-256 + zstd), what a save costs the worker and the sidecar together;
* open+decode: ``codec.open_sealed`` (zstd + SHA-256 check) then ``checkpoint_from_bytes``,
  what a resume costs.

The stages table adds what the flow runtime pays when the largest node changes (an agent
after a loop): ``node_state_to_bytes`` of that node alone, the rest of the checkpoint being
joined from bytes it already holds (its MB/s are over the whole checkpoint's size too).

Each case repeats for about ``min_time`` seconds after a warm-up; the median of the
single-operation times is reported, with throughput over the raw (uncompressed) size.

    python -m load.bench_codec            # or: python -m load.bench --only codec
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from checkpoint import codec
from checkpoint.models import (
    CheckpointStatus,
    FlowCheckpoint,
    NodeState,
    NodeStatus,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    node_state_to_bytes,
)

PrintFn = Callable[[str], Any]

KB = 1024
SIZES: tuple[tuple[str, int], ...] = (("1 KB", KB), ("64 KB", 64 * KB), ("1 MB", 1024 * KB))
SEED = 20260101
_WORDS = (
    "refund order policy customer approved shipping invoice warehouse delayed carrier "
    "tracking damaged replacement credit account billing address receipt escalate agent "
    "summary priority ticket request eligible window days return label"
).split()
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- payloads


class _Pieces:
    """Deterministic agent-like fragments, sized relative to the target payload."""

    def __init__(self, rng: random.Random, scale: int) -> None:
        self.rng = rng
        self.scale = scale  # typical characters per text fragment
        self.calls = 0

    def text(self, words: int | None = None) -> str:
        count = words or self.rng.randint(max(3, self.scale // 14), max(4, self.scale // 6))
        return " ".join(self.rng.choice(_WORDS) for _ in range(count))

    def b64(self, size: int) -> str:
        return base64.b64encode(self.rng.randbytes(size)).decode("ascii")

    def user(self) -> dict[str, Any]:
        return {"role": "user", "content": self.text()}

    def tool_turn(self) -> list[dict[str, Any]]:
        self.calls += 1
        call_id = f"call_{self.calls}_0"
        order = self.rng.randint(10_000, 99_999)
        call = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "name": self.rng.choice(["lookup_order", "search_policy", "refund"]),
                    "arguments": {"order_id": order, "query": self.text(6)},
                }
            ],
        }
        result = {
            "order_id": order,
            "total": round(self.rng.uniform(5, 900), 2),
            "items": [
                {"sku": f"SKU-{self.rng.randint(1000, 9999)}", "qty": self.rng.randint(1, 4)}
                for _ in range(self.rng.randint(1, 4))
            ],
            "notes": self.text(),
            "attachment": self.b64(max(16, self.scale // 4)),
        }
        output = {"role": "tool", "tool_call_id": call_id, "content": result}
        return [call, output]

    def answer(self) -> dict[str, Any]:
        return {"role": "assistant", "content": self.text(), "tool_calls": []}

    def map_result(self) -> dict[str, Any]:
        return {
            "summary": self.text(),
            "score": self.rng.random(),
            "doc_id": uuid.UUID(int=self.rng.getrandbits(128)),
            "at": _EPOCH + dt.timedelta(seconds=self.rng.randint(0, 86_400 * 30)),
            "thumbnail": self.rng.randbytes(max(8, self.scale // 8)),
        }


def agent_checkpoint(target: int, seed: int = SEED) -> FlowCheckpoint:
    """A FlowCheckpoint whose canonical JSON is ``target`` bytes or a little more."""
    rng = random.Random(seed)
    pieces = _Pieces(rng, scale=max(48, min(2400, target // 24)))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a refunds agent. Use the tools, then answer."},
        pieces.user(),
    ]
    iterations: dict[int, Any] = {}
    documents: list[str] = []

    def build() -> FlowCheckpoint:
        nodes = {
            "triage": NodeState(
                node_id="triage",
                node_type="Agent",
                status=NodeStatus.RUNNING,
                internal_state={"messages": messages, "loop": pieces.calls},
                attempts=1,
                started_at=_EPOCH,
            )
        }
        # The other nodes appear once they hold something, so the 1 KB case stays small.
        if documents:
            nodes["fetch"] = NodeState(
                node_id="fetch",
                node_type="FunctionNode",
                status=NodeStatus.SUCCEEDED,
                output={"documents": documents},
                attempts=1,
                started_at=_EPOCH,
                finished_at=_EPOCH + dt.timedelta(seconds=2),
            )
        if iterations:
            nodes["summaries"] = NodeState(
                node_id="summaries",
                node_type="Map",
                status=NodeStatus.RUNNING,
                internal_state={"completed_iterations": iterations, "total": 10_000},
                attempts=1,
            )
        return FlowCheckpoint(
            tenant_id="bench",
            flow_id="support-triage",
            run_id=f"bench-{seed}",
            seq=len(messages),
            status=CheckpointStatus.ACTIVE,
            graph_fingerprint="sha256:" + "ab" * 32,
            created_at=_EPOCH,
            original_input={"ticket": 4711, "question": messages[1]["content"]},
            node_states=nodes,
            metadata={"worker": "bench-1", "started": _EPOCH},
        )

    size = len(checkpoint_to_bytes(build()))
    turn = 0
    while size < target:
        # Sizes are summed per fragment (no re-encoding of the growing whole): the final
        # size is measured exactly once at the end.
        kind = turn % 5
        if kind in (0, 3):
            added: Any = pieces.tool_turn()
            messages.extend(added)
        elif kind == 1:
            added = pieces.map_result()
            iterations[len(iterations)] = added
        elif kind == 2:
            added = pieces.answer()
            messages.append(added)
        else:
            added = pieces.b64(max(24, pieces.scale // 2))
            documents.append(added)
        size += len(codec.encode(added)) + 2
        turn += 1
    return build()


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Median seconds per operation over ``ops`` repetitions."""

    median: float
    ops: int

    @property
    def micros(self) -> float:
        return self.median * 1e6

    def mb_per_s(self, size: int) -> float:
        return size / self.median / 1e6 if self.median > 0 else float("inf")


@dataclass(frozen=True)
class CodecResult:
    """One payload size: sizes, the two round trips, and their stages."""

    label: str
    raw_size: int
    stored_size: int
    encode_seal: Timing
    open_decode: Timing
    stages: dict[str, Timing]

    @property
    def ratio(self) -> float:
        return self.raw_size / self.stored_size


def measure(fn: Callable[[], object], min_time: float, min_ops: int = 5) -> Timing:
    """Time ``fn`` one call at a time for about ``min_time`` seconds; median of the calls."""
    fn()  # warm-up: caches, allocator, lazily built pydantic serializers
    samples: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(samples) < min_ops or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(median=statistics.median(samples), ops=len(samples))


def bench_payload(label: str, target: int, min_time: float) -> CodecResult:
    """Measure one payload size."""
    cp = agent_checkpoint(target)
    raw = checkpoint_to_bytes(cp)
    sealed = codec.seal(raw)
    # Guard the figures: what is timed must round-trip.
    if checkpoint_from_bytes(codec.open_sealed(sealed.blob, sealed.sha256)) != cp:
        raise AssertionError(f"{label}: the benchmark payload does not round-trip")

    def encode_seal() -> None:
        codec.seal(checkpoint_to_bytes(cp))

    def open_decode() -> None:
        checkpoint_from_bytes(codec.open_sealed(sealed.blob, sealed.sha256))

    largest = max(cp.node_states.values(), key=lambda s: len(node_state_to_bytes(s)))
    stage_time = max(0.05, min_time / 3)
    stages = {
        "checkpoint_to_bytes": measure(lambda: checkpoint_to_bytes(cp), stage_time),
        "seal (sha256+zstd)": measure(lambda: codec.seal(raw), stage_time),
        "open_sealed (zstd+sha256)": measure(
            lambda: codec.open_sealed(sealed.blob, sealed.sha256), stage_time
        ),
        "checkpoint_from_bytes": measure(lambda: checkpoint_from_bytes(raw), stage_time),
        "largest node re-encoded": measure(lambda: node_state_to_bytes(largest), stage_time),
    }
    return CodecResult(
        label=label,
        raw_size=len(raw),
        stored_size=sealed.stored_size,
        encode_seal=measure(encode_seal, min_time),
        open_decode=measure(open_decode, min_time),
        stages=stages,
    )


# --------------------------------------------------------------------------- report


def _size(n: int) -> str:
    return f"{n / KB:,.1f} KiB" if n < 1024 * KB else f"{n / (1024 * KB):,.2f} MiB"


def _tables(
    results: Sequence[CodecResult],
) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    main_head = [
        "payload",
        "raw",
        "stored",
        "ratio",
        "encode+seal µs/op",
        "encode+seal MB/s",
        "open+decode µs/op",
        "open+decode MB/s",
    ]
    main_rows = [
        [
            r.label,
            _size(r.raw_size),
            _size(r.stored_size),
            f"{r.ratio:.1f}x",
            f"{r.encode_seal.micros:,.0f}",
            f"{r.encode_seal.mb_per_s(r.raw_size):,.1f}",
            f"{r.open_decode.micros:,.0f}",
            f"{r.open_decode.mb_per_s(r.raw_size):,.1f}",
        ]
        for r in results
    ]
    stage_names = list(results[0].stages) if results else []
    stage_head = ["payload", *(f"{name} µs (MB/s)" for name in stage_names)]
    stage_rows = [
        [
            r.label,
            *(
                f"{r.stages[n].micros:,.0f} ({r.stages[n].mb_per_s(r.raw_size):,.0f})"
                for n in stage_names
            ),
        ]
        for r in results
    ]
    return main_head, main_rows, stage_head, stage_rows


def render_table(title: str, head: list[str], rows: list[list[str]]) -> str:
    """A rich table as text (a plain one without rich), for the benchmark reports."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the figures matter more than the frame
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        return "\n".join(lines)
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(head):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue().rstrip()


def run(
    print_fn: PrintFn = print,
    *,
    quick: bool = False,
    min_time: float | None = None,
    sizes: Sequence[tuple[str, int]] = SIZES,
) -> list[CodecResult]:
    """Run the codec benchmark, print its tables, and return the measurements."""
    per_case = min_time if min_time is not None else (0.1 if quick else 0.3)
    results: list[CodecResult] = []
    for label, target in sizes:
        results.append(bench_payload(label, target, per_case))
    main_head, main_rows, stage_head, stage_rows = _tables(results)
    print_fn(
        render_table(
            f"codec round trips (median of ~{per_case:g} s per case; MB/s over raw bytes)",
            main_head,
            main_rows,
        )
    )
    print_fn(render_table("stages", stage_head, stage_rows))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 0.1 s per case")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per case")
    args = parser.parse_args(argv)
    run(quick=args.quick, min_time=args.min_time)


if __name__ == "__main__":
    main()
