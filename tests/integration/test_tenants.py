"""Tenant isolation across every route of a real sidecar with a tokens file.

The routes are taken from the application's own router: every route under ``/v1/runs``,
``/v1/traces`` and ``/v1/maintenance`` must have an entry in ``ROUTES`` below (a new route
without one fails the test), and for each of them:

* no token, a malformed header or an unknown token is a 401, even with a bad body (the
  token is checked before anything else);
* another tenant's token is a 404 for a run it does not own, and changes nothing;
* the owner's token works.

``POST /v1/traces`` refuses a checkpoint span naming another tenant than the token's, and
a span of the right tenant aimed at another tenant's run id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from checkpoint import CheckpointStatus
from sidecar.auth import is_protected
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar import (
    InprocSidecar,
    SidecarProcess,
    SpanRecorder,
    otlp_body,
    start_inproc_sidecar,
    stop_inproc_sidecar,
)

OWNER = {"Authorization": "Bearer tok-globex"}
OTHER = {"Authorization": "Bearer tok-acme"}
BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dG9rLWdsb2JleDp4"},
    {"Authorization": "Bearer tok-nobody"},
    {"Authorization": "tok-globex"},
]
RUN = "run-globex"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@dataclass
class State:
    """What the owner's calls learn on the way (the claim epoch)."""

    epoch: int = 0
    seen: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """How to call one route: its URL, a valid body, and what the owner gets."""

    order: int
    path: str
    body: Callable[[State], Any] | None
    ok: int
    foreign: int = 404  # what another tenant's token gets


def _lease(_: State) -> dict[str, Any]:
    return {"worker_id": "worker-1", "lease_seconds": 30}


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/runs"): Route(0, "/v1/runs", None, 200, foreign=200),
    ("GET", "/v1/runs/{run_id}"): Route(1, f"/v1/runs/{RUN}", None, 200),
    ("GET", "/v1/runs/{run_id}/checkpoints"): Route(2, f"/v1/runs/{RUN}/checkpoints", None, 200),
    ("GET", "/v1/runs/{run_id}/checkpoints/latest"): Route(
        3, f"/v1/runs/{RUN}/checkpoints/latest", None, 200
    ),
    ("GET", "/v1/runs/{run_id}/checkpoints/{seq}"): Route(
        4, f"/v1/runs/{RUN}/checkpoints/1", None, 200
    ),
    ("POST", "/v1/runs/{run_id}/claim"): Route(5, f"/v1/runs/{RUN}/claim", _lease, 200),
    ("POST", "/v1/runs/{run_id}/claim/renew"): Route(
        6,
        f"/v1/runs/{RUN}/claim/renew",
        lambda s: {"worker_id": "worker-1", "epoch": s.epoch, "lease_seconds": 30},
        200,
    ),
    ("POST", "/v1/runs/{run_id}/claim/release"): Route(
        7,
        f"/v1/runs/{RUN}/claim/release",
        lambda s: {"worker_id": "worker-1", "epoch": s.epoch},
        200,
    ),
    ("GET", "/v1/runs/{run_id}/inputs"): Route(8, f"/v1/runs/{RUN}/inputs", None, 200),
    ("POST", "/v1/runs/{run_id}/inputs"): Route(
        9, f"/v1/runs/{RUN}/inputs", lambda s: {"path": "review", "answer": {"ok": True}}, 202
    ),
    ("POST", "/v1/runs/{run_id}/inputs/consume"): Route(
        10, f"/v1/runs/{RUN}/inputs/consume", lambda s: {"paths": ["review"]}, 200
    ),
    ("GET", "/v1/runs/{run_id}/events"): Route(11, f"/v1/runs/{RUN}/events", None, 200),
    ("POST", "/v1/runs/{run_id}/prune"): Route(
        12, f"/v1/runs/{RUN}/prune", lambda s: {"max_checkpoints": 2}, 200
    ),
    ("DELETE", "/v1/runs/{run_id}"): Route(13, f"/v1/runs/{RUN}", None, 204),
    # Expiry spans every tenant: no token may trigger it (an operator runs it tokenless).
    ("POST", "/v1/maintenance/expire"): Route(
        14,
        "/v1/maintenance/expire",
        lambda s: {"older_than": "2000-01-01T00:00:00Z"},
        403,
        foreign=403,
    ),
    # Checked separately below (bodies are OTLP, not JSON).
    ("POST", "/v1/traces"): Route(15, "/v1/traces", None, 200, foreign=400),
}


@pytest.fixture
async def sidecar(pg_dsn: str, tmp_path: Path) -> AsyncIterator[InprocSidecar]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# token tenant\ntok-acme acme\ntok-globex globex\n")
    running = await start_inproc_sidecar(pg_dsn, tokens_file=tokens)
    try:
        store = running.store
        for seq in range(4):
            await store.put(
                checkpoint(RUN, seq, tenant_id="globex", pending=["review"] if seq == 3 else ())
            )
        await store.put(checkpoint("run-acme", 0, tenant_id="acme"))
        yield running
    finally:
        await stop_inproc_sidecar(running)


def _protected_routes(sidecar: InprocSidecar) -> set[tuple[str, str]]:
    found = set()
    for route in sidecar.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if is_protected(canonical):
            found.add((route.method, canonical))
    return found


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    data: bytes | None = None,
) -> tuple[int, str]:
    kwargs: dict[str, Any] = {"headers": headers}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["json"] = body
    async with http.request(method, path, **kwargs) as resp:
        if resp.content_type == "text/event-stream":
            return resp.status, ""  # an open stream: the status line is the answer
        return resp.status, await resp.text()


async def _snapshot(sidecar: InprocSidecar) -> tuple[Any, ...]:
    store = sidecar.store
    run = await store.get_run(RUN)
    assert run is not None
    seqs = [c.seq for c in await store.list_checkpoints(RUN)]
    inputs = await store.list_inputs(RUN, include_consumed=True)
    return (run.latest_seq, run.epoch, run.claim, seqs, [(i.path, i.consumed) for i in inputs])


async def test_every_protected_route_is_covered(sidecar: InprocSidecar) -> None:
    found = _protected_routes(sidecar)
    assert found, "no protected route found: is the app wired?"
    assert found == set(ROUTES), (
        f"routes without a tenant test: {sorted(found - set(ROUTES))}; "
        f"stale entries: {sorted(set(ROUTES) - found)}"
    )


async def test_no_valid_token_is_401_on_every_route(sidecar: InprocSidecar) -> None:
    before = await _snapshot(sidecar)
    async with aiohttp.ClientSession(base_url=sidecar.url) as http:
        for (method, _), route in sorted(ROUTES.items(), key=lambda kv: kv[1].order):
            for headers in BAD_AUTH:
                body = route.body(State()) if route.body is not None else None
                status, text = await _call(http, method, route.path, headers, body)
                assert status == 401, (method, route.path, headers, status, text)
                assert '"unauthorized"' in text
                # a body the handler would refuse (415/422) still gets the 401 first
                status, _ = await _call(
                    http,
                    method,
                    route.path,
                    {**headers, "Content-Type": "text/plain"},
                    None,
                    data=b"\x00not json",
                )
                assert status == 401, (method, route.path, headers, "bad body")
    assert await _snapshot(sidecar) == before


async def test_another_tenants_run_is_404_and_untouched(sidecar: InprocSidecar) -> None:
    before = await _snapshot(sidecar)
    async with aiohttp.ClientSession(base_url=sidecar.url) as http:
        for (method, canonical), route in sorted(ROUTES.items(), key=lambda kv: kv[1].order):
            if canonical == "/v1/traces":
                continue
            body = route.body(State(epoch=1)) if route.body is not None else None
            status, text = await _call(http, method, route.path, OTHER, body)
            assert status == route.foreign, (method, route.path, status, text)
            if status == 404:
                assert '"run_not_found"' in text and "globex" not in text.replace(RUN, "")
            if canonical == "/v1/runs":
                listed = [r["run_id"] for r in (await _json(text))["runs"]]
                assert listed == ["run-acme"]
        # asking for the other tenant's listing by name is refused, not answered empty
        status, _ = await _call(http, "GET", "/v1/runs?tenant_id=globex", OTHER)
        assert status == 403
        # an unknown run and a hidden one answer alike
        status, text = await _call(http, "GET", "/v1/runs/run-nobody", OTHER)
        assert status == 404 and '"run_not_found"' in text
    assert await _snapshot(sidecar) == before


async def _json(text: str) -> Any:
    import json

    return json.loads(text)


async def test_the_owner_can_use_every_route(sidecar: InprocSidecar) -> None:
    state = State()
    async with aiohttp.ClientSession(base_url=sidecar.url) as http:
        for (method, canonical), route in sorted(ROUTES.items(), key=lambda kv: kv[1].order):
            if canonical == "/v1/traces":
                continue
            body = route.body(state) if route.body is not None else None
            status, text = await _call(http, method, route.path, OWNER, body)
            assert status == route.ok, (method, route.path, status, text)
            if canonical == "/v1/runs/{run_id}/claim":
                state.epoch = (await _json(text))["epoch"]
            if canonical == "/v1/runs":
                assert [r["run_id"] for r in (await _json(text))["runs"]] == [RUN]
    assert await sidecar.store.get_run(RUN) is None  # the DELETE went through
    assert await sidecar.store.get_run("run-acme") is not None


def _body(*cps: Any) -> bytes:
    recorder = SpanRecorder()
    try:
        return otlp_body([recorder.checkpoint_span(cp) for cp in cps])
    finally:
        recorder.shutdown()


async def test_traces_are_fenced_by_tenant(sidecar: InprocSidecar) -> None:
    store = sidecar.store
    async with aiohttp.ClientSession(base_url=sidecar.url) as http:
        # a span naming another tenant than the token's
        spoof = _body(checkpoint("run-new", 0, tenant_id="globex"))
        status, text = await _call(http, "POST", "/v1/traces", {**PROTOBUF, **OTHER}, data=spoof)
        assert status == 400 and '"tenant_mismatch"' in text, text
        # one foreign span spoils the whole request: nothing of it is stored
        mixed = _body(
            checkpoint("run-mixed", 0, tenant_id="acme"),
            checkpoint("run-mixed-2", 0, tenant_id="globex"),
        )
        status, text = await _call(http, "POST", "/v1/traces", {**PROTOBUF, **OTHER}, data=mixed)
        assert status == 400 and '"tenant_mismatch"' in text
        # the right tenant in the span, but another tenant's run id
        hijack = _body(checkpoint(RUN, 9, tenant_id="acme"))
        status, text = await _call(http, "POST", "/v1/traces", {**PROTOBUF, **OTHER}, data=hijack)
        assert status == 400 and '"tenant_mismatch"' in text, text
        # no token at all
        own = _body(checkpoint("run-acme", 1, tenant_id="acme"))
        status, _ = await _call(http, "POST", "/v1/traces", PROTOBUF, data=own)
        assert status == 401
        # and the owner's own write works
        status, text = await _call(http, "POST", "/v1/traces", {**PROTOBUF, **OTHER}, data=own)
        assert status == 200, text
    for run_id in ("run-new", "run-mixed", "run-mixed-2"):
        assert await store.get_run(run_id) is None
    run = await store.get_run(RUN)
    assert run is not None and run.latest_seq == 3 and run.tenant_id == "globex"
    acme = await store.get_run("run-acme")
    assert acme is not None and acme.latest_seq == 1


async def test_open_routes_stay_open(sidecar: InprocSidecar) -> None:
    async with aiohttp.ClientSession(base_url=sidecar.url) as http:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            status, _ = await _call(http, "GET", path, {})
            assert status == 200, path


async def test_tokens_file_on_the_serve_command(
    pg_dsn: str,
    tmp_path: Path,
    launch_sidecar: Callable[..., Awaitable[SidecarProcess]],
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tok-acme": "acme", "tok-globex": "globex"}')
    process = await launch_sidecar(pg_dsn, "--tokens-file", str(tokens))
    async with aiohttp.ClientSession(base_url=process.url) as http:
        status, _ = await _call(
            http, "POST", "/v1/traces", PROTOBUF, data=_body(checkpoint("r1", 0, tenant_id="acme"))
        )
        assert status == 401
        status, _ = await _call(
            http,
            "POST",
            "/v1/traces",
            {**PROTOBUF, **OTHER},
            data=_body(
                checkpoint(
                    "r1",
                    0,
                    tenant_id="acme",
                    status=CheckpointStatus.ACTIVE,
                    created_at=dt.datetime.now(dt.UTC),
                )
            ),
        )
        assert status == 200
        status, _ = await _call(http, "GET", "/v1/runs/r1", OTHER)
        assert status == 200
        status, text = await _call(http, "GET", "/v1/runs/r1", OWNER)
        assert status == 404 and '"run_not_found"' in text
        status, _ = await _call(http, "GET", "/v1/runs/r1", {})
        assert status == 401
