"""Redacted fields never reach the sidecar, checked on the wire.

A flow configured with ``redact=["api_key", "password"]`` writes through a
:class:`SidecarStore` to a real sidecar (real PostgreSQL), through a recording HTTP proxy
on 127.0.0.1 that keeps every byte the sidecar receives. The secrets sit everywhere a
flow puts user data: the run input, node outputs, mid-node state, a pending input's
metadata and the human's answer. None of them may appear in any request body (as sent,
or gunzipped), nor in any stored payload; the values next to them still do, so the
capture is known to see the checkpoints.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from checkpoint import CheckpointConfig, CheckpointStatus, codec
from checkpoint.stores import SidecarStore
from flows import Flow, FunctionNode
from flows.redact import REDACTED
from tests.fixtures.sidecar import InprocSidecar, start_inproc_sidecar, stop_inproc_sidecar

SECRETS = {
    "input": "sk-live-INPUT-7f3a9c",
    "input_nested": "pw-NESTED-51be2d",
    "output": "sk-live-OUTPUT-c0ffee",
    "state": "pw-STATE-9d8e7f",
    "pending_metadata": "pw-PENDING-META-4242",
    "answer": "pw-ANSWER-abcdef",
}
VISIBLE = "visible-user-ann-5150"  # stored as is: proves the capture sees payloads
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Capture:
    """Everything the recording proxy forwarded to the sidecar."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def bodies(self) -> list[bytes]:
        """Each request body as received, and its gunzipped form when it was gzip."""
        out = []
        for _, _, headers, body in self.requests:
            out.append(body)
            if headers.get("content-encoding", "").lower() == "gzip" and body:
                out.append(gzip.decompress(body))
        return out


async def _recording_proxy(target: str, capture: Capture) -> TestServer:
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()  # raw: the app's client_max_size caps nothing here
        headers = {k.lower(): v for k, v in request.headers.items()}
        capture.requests.append((request.method, request.path_qs, headers, body))
        upstream_headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session.request(
            request.method, target + request.path_qs, data=body, headers=upstream_headers
        ) as upstream:
            payload = await upstream.read()
            reply_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            }
            return web.Response(status=upstream.status, body=payload, headers=reply_headers)

    # The proxy's own body limit must not refuse what the sidecar would take.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)

    async def close_session(_: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close_session)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def wire(pg_dsn: str) -> AsyncIterator[tuple[InprocSidecar, Capture, str]]:
    sidecar = await start_inproc_sidecar(pg_dsn)
    capture = Capture()
    proxy = await _recording_proxy(sidecar.url, capture)
    try:
        yield sidecar, capture, str(proxy.make_url("")).rstrip("/")
    finally:
        await proxy.close()
        await stop_inproc_sidecar(sidecar)


def _flow(store: SidecarStore) -> Flow:
    def fetch(inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "user": inputs["input"]["user"],
            "auth": {"API_KEY": SECRETS["output"], "scheme": "bearer"},
            "rows": [1, 2, 3],
        }

    async def review(inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await ctx.save_state({"progress": 1, "password": SECRETS["state"]})
        answer = ctx.interrupt(
            "approve the load?",
            schema={"type": "object", "properties": {"approved": {"type": "boolean"}}},
            metadata={"channel": "slack", "password": SECRETS["pending_metadata"]},
        )
        return {"approved": answer["approved"], "rows": len(inputs["fetch"]["rows"])}

    return Flow(
        id="wire",
        nodes=[
            FunctionNode(id="fetch", fn=fetch),
            FunctionNode(id="review", fn=review, depends=["fetch"]),
        ],
        checkpoint=CheckpointConfig(enabled=True, store=store, redact=["api_key", "password"]),
    )


async def test_redacted_values_never_reach_the_sidecar(
    wire: tuple[InprocSidecar, Capture, str], pg_dsn: str
) -> None:
    sidecar, capture, proxy_url = wire
    store = SidecarStore(proxy_url, timeout=10.0)
    try:
        flow = _flow(store)
        first = await flow.run(
            {
                "user": VISIBLE,
                "api_key": SECRETS["input"],
                "creds": [{"Password": SECRETS["input_nested"]}],
            },
            run_id="wire-1",
        )
        assert first.status is CheckpointStatus.PENDING_INPUT
        [pending] = first.pending_inputs
        answer = {"approved": True, "password": SECRETS["answer"]}
        done = await flow.resume("wire-1", inputs={pending.path: answer})
        assert done.status is CheckpointStatus.COMPLETED
        assert done.output == {"review": {"approved": True, "rows": 3}}
    finally:
        await store.close()

    traces = [r for r in capture.requests if r[0] == "POST" and r[1].startswith("/v1/traces")]
    assert len(traces) >= 5, [r[:2] for r in capture.requests]
    bodies = capture.bodies()
    wire_bytes = b"".join(bodies)
    assert VISIBLE.encode() in wire_bytes and REDACTED.encode() in wire_bytes
    for name, secret in SECRETS.items():
        for body in bodies:
            assert secret.encode() not in body, f"secret {name!r} reached the sidecar"

    # ... and nothing of them was stored either.
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT seq, payload, sha256 FROM checkpoints ORDER BY seq")
    finally:
        await conn.close()
    assert len(rows) == len(traces)
    for row in rows:
        raw = codec.open_sealed(bytes(row["payload"]), row["sha256"])
        for name, secret in SECRETS.items():
            assert secret.encode() not in raw, f"secret {name!r} stored at seq {row['seq']}"
    latest = await sidecar.store.get("wire-1")
    assert latest is not None
    assert latest.original_input["api_key"] == REDACTED
    assert latest.original_input["creds"] == [{"Password": REDACTED}]
    assert latest.node_states["fetch"].output["auth"] == {"API_KEY": REDACTED, "scheme": "bearer"}
