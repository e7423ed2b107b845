"""A worker process for the chaos tests: emits checkpoints through the real CheckpointEmitter.

``python -m tests.chaos.emit_worker emit --endpoint URL --outbox DIR --runs 8 --seqs 50``
sends, per run and in seq order, one checkpoint after the other (runs in parallel), each
through the emitter's outbox, and prints ``ACK <run> <seq>`` when the sidecar answered 200.
A run whose checkpoint cannot be delivered (``EmitUnavailable``: the sidecar is gone)
prints ``UNACKED <run> <seq>`` and stops, as a workflow would; that record stays in the
outbox. ``replay --outbox DIR`` sends what an earlier process left there and prints
``REPLAYED <n>`` and ``LEFT <files>``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from checkpoint.codec import sha256_hex
from checkpoint.models import checkpoint_to_bytes
from instrumentation.emitter import CheckpointEmitter
from instrumentation.errors import EmitUnavailable
from tests.fixtures.sidecar import checkpoint_attributes, make_checkpoint


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _run(emitter: CheckpointEmitter, run_id: str, seqs: int, payload_bytes: int) -> None:
    for seq in range(seqs):
        cp = make_checkpoint(run_id, seq, payload_bytes=payload_bytes, note=f"{run_id}/{seq}")
        payload = checkpoint_to_bytes(cp)
        attrs = checkpoint_attributes(cp, payload)
        del attrs["flowpoint.payload"], attrs["flowpoint.sha256"]
        try:
            await emitter.emit(
                attrs, payload, payload_sha256=sha256_hex(payload), key=f"{run_id}:{seq:08d}"
            )
        except EmitUnavailable:
            _say(f"UNACKED {run_id} {seq}")
            return
        _say(f"ACK {run_id} {seq}")


async def _main(args: argparse.Namespace) -> int:
    emitter = CheckpointEmitter(
        args.endpoint,
        outbox_dir=args.outbox,
        timeout=args.timeout,
        max_retry_seconds=args.max_retry_seconds,
    )
    async with emitter:
        if args.mode == "replay":
            replayed = await emitter.replay_outbox()
            assert emitter.outbox is not None
            _say(f"REPLAYED {replayed}")
            _say(f"LEFT {len(emitter.outbox.pending())}")
            return 0
        runs = [f"{args.prefix}-{i:03d}" for i in range(args.runs)]
        await asyncio.gather(*(_run(emitter, r, args.seqs, args.payload_bytes) for r in runs))
        _say("DONE")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("emit", "replay"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seqs", type=int, default=50)
    parser.add_argument("--prefix", default="run")
    parser.add_argument("--payload-bytes", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--max-retry-seconds", type=float, default=1.0)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
