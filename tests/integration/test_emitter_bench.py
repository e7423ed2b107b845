"""Emit latency against a real local OTLP/HTTP server, printed as p50/p99.

The server runs in its own process (an aiohttp app that reads the body and
answers 200), like a sidecar in the same pod. For each payload size it times:
a bare aiohttp POST of an equally large body (the HTTP round trip alone),
emit() without an outbox, and emit() with the outbox (with and without fsync).

    python -m tests.integration.test_emitter_bench            # full run, prints a table
    python -m pytest -q -s tests/integration/test_emitter_bench.py   # small run

The test asserts only that every emit was acknowledged and arrived; the
figures are printed, never asserted (2 shared cores).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from instrumentation import CheckpointEmitter

_SERVER = textwrap.dedent(
    """
    import asyncio
    from aiohttp import web

    count = 0

    async def traces(request):
        global count
        await request.read()
        count += 1
        return web.Response(status=200, headers={"X-Count": str(count)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)

    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@asynccontextmanager
async def bench_server() -> AsyncIterator[str]:
    """Start the 200-answering server in a subprocess; yields its URL; always stops it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if not line:
            err = await proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"bench server did not start: {err.decode()[-1000:]}")
        yield f"http://127.0.0.1:{int(line)}/v1/traces"
    finally:
        proc.kill()
        await proc.wait()


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1000, p99 * 1000


def _fresh(data: bytes) -> bytes:
    # A real payload is new bytes each time (fresh memory), never one object reused.
    return bytes(bytearray(data))


async def _raw_posts(url: str, body: bytes, n: int) -> list[float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            body = _fresh(body)
            t0 = time.perf_counter()
            async with session.post(
                url, data=body, headers={"Content-Type": "application/x-protobuf"}
            ) as resp:
                await resp.read()
                assert resp.status == 200
            samples.append(time.perf_counter() - t0)
    return samples


async def _emits(url: str, payload: bytes, n: int, outbox: Path | None, fsync: bool) -> list[float]:
    sha = hashlib.sha256(payload).hexdigest()
    samples = []
    async with CheckpointEmitter(url, outbox_dir=outbox, outbox_fsync=fsync) as emitter:
        for seq in range(1, n + 1):
            attrs: dict[str, str | int | bool] = {
                "flowpoint.run_id": "bench",
                "flowpoint.seq": seq,
                "flowpoint.epoch": 0,
            }
            payload = _fresh(payload)
            t0 = time.perf_counter()
            ack = await emitter.emit(attrs, payload, payload_sha256=sha, key=f"bench:{seq}")
            samples.append(time.perf_counter() - t0)
            assert ack.status == 200
    if outbox is not None:
        assert [name for name in os.listdir(outbox) if name.endswith(".rec")] == []
    return samples


async def run_bench(sizes: dict[int, int], outbox_root: Path) -> tuple[list[str], int]:
    """Time every mode for each payload size -> (table lines, requests the server counted)."""
    lines = [f"{'payload':>8} {'mode':<22} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}"]
    sent = 0
    async with bench_server() as url:
        for size, n in sizes.items():
            payload = os.urandom(size)
            warm = max(5, n // 10)
            await _emits(url, payload, warm, None, True)  # warm-up: imports, connections
            sent += warm
            modes = {
                "http round trip only": None,
                "emit, no outbox": (None, True),
                "emit, outbox no fsync": (outbox_root / f"nofsync-{size}", False),
                "emit, outbox + fsync": (outbox_root / f"fsync-{size}", True),
            }
            for mode, cfg in modes.items():
                if cfg is None:
                    # the same bytes a checkpoint request carries, without the emitter
                    samples = await _raw_posts(url, payload + b"\0" * 400, n)
                else:
                    samples = await _emits(url, payload, n, cfg[0], cfg[1])
                sent += n
                p50, p99 = _quantiles(samples)
                label = f"{size // 1024} KB" if size < 1 << 20 else f"{size >> 20} MB"
                lines.append(f"{label:>8} {mode:<22} {n:>5} {p50:>8.3f} {p99:>8.3f}")
        async with aiohttp.ClientSession() as session, session.post(url, data=b"") as resp:
            counted = int(resp.headers["X-Count"]) - 1
    assert counted == sent, (counted, sent)
    return lines, counted


async def test_emit_latency_is_printed(tmp_path: Path) -> None:
    lines, counted = await run_bench({1024: 150, 1 << 20: 15}, tmp_path)
    print("\n" + "\n".join(lines))
    assert counted > 0 and len(lines) == 1 + 2 * 4


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="flowpoint-bench-", dir=os.getcwd()) as tmp:
        table, _ = asyncio.run(run_bench({1024: 2000, 1 << 20: 200}, Path(tmp)))
    print("\n".join(table))
