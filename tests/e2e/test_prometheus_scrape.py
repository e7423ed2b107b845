"""A real Prometheus scrapes a real sidecar under load; the dashboard and alerts must work.

The sidecar is a ``flowpoint serve`` subprocess on PostgreSQL (``sidecar_process``);
Prometheus (Debian package) scrapes it every second with ``dashboards/alerts.yml`` loaded.
A background task sends checkpoint spans encoded by the OpenTelemetry SDK (with a
duplicate, a seq conflict, a seq gap and a bad checksum), resumes runs and makes claims
collide, until every panel query of the overview dashboard returns data. Then every alert
and recording rule expression must parse and evaluate, every rule must be healthy, the
checksum alert must fire and the sidecar-down alert must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.fixtures.prometheus import (
    DASHBOARDS_DIR,
    SIDECAR_JOB,
    PanelQuery,
    PrometheusServer,
    StartPrometheus,
    grafana_to_promql,
    load_dashboard,
    panel_queries,
    rule_expressions,
    variable_queries,
)
from tests.fixtures.sidecar import SidecarProcess, SpanRecorder, make_checkpoint, otlp_body

pytestmark = pytest.mark.slow

PROTOBUF = {"Content-Type": "application/x-protobuf"}
DATA_DEADLINE_S = 90.0


@dataclass
class LoadStats:
    """What the load generator saw (status codes by kind of request)."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    rounds: int = 0

    def add(self, kind: str, status: int) -> None:
        self.statuses.setdefault(kind, []).append(status)


class Load:
    """Checkpoint traffic against one sidecar: saves, replays, rejects, resumes, claims."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.spans = SpanRecorder()
        self.stats = LoadStats()

    async def post(self, kind: str, spans: list[Any]) -> int:
        async with self.session.post(
            f"{self.url}/v1/traces", data=otlp_body(spans), headers=PROTOBUF
        ) as resp:
            await resp.read()
        self.stats.add(kind, resp.status)
        return resp.status

    async def get(self, kind: str, path: str) -> int:
        async with self.session.get(f"{self.url}{path}") as resp:
            await resp.read()
        self.stats.add(kind, resp.status)
        return resp.status

    async def claim(self, run_id: str, worker: str) -> int:
        async with self.session.post(
            f"{self.url}/v1/runs/{run_id}/claim", json={"worker_id": worker, "lease_seconds": 60}
        ) as resp:
            await resp.read()
        self.stats.add("claim", resp.status)
        return resp.status

    async def one_round(self) -> None:
        """One burst of every kind of traffic the dashboard has a panel for."""
        tag = uuid.uuid4().hex[:10]
        runs = [f"prom-{tag}-{i}" for i in range(6)]

        async def save_run(run_id: str) -> None:
            for seq in (1, 2):
                cp = make_checkpoint(run_id, seq, flow_id="prom-e2e", payload_bytes=2048)
                await self.post("save", [self.spans.checkpoint_span(cp)])

        await asyncio.gather(*(save_run(r) for r in runs))
        # A batch of several checkpoints in one request (group commit).
        batch = [
            self.spans.checkpoint_span(make_checkpoint(f"prom-{tag}-batch-{i}", 1))
            for i in range(8)
        ]
        await self.post("save", batch)

        first = runs[0]
        replay = make_checkpoint(first, 3, flow_id="prom-e2e")
        span = self.spans.checkpoint_span(replay)
        await self.post("save", [span])
        await self.post("duplicate", [span])
        other = make_checkpoint(first, 3, flow_id="prom-e2e", note="different bytes")
        await self.post("conflict", [self.spans.checkpoint_span(other)])
        await self.post(
            "gap", [self.spans.checkpoint_span(make_checkpoint(first, 6, flow_id="prom-e2e"))]
        )
        bad = make_checkpoint(runs[1], 3, flow_id="prom-e2e")
        await self.post("checksum", [self.spans.checkpoint_span(bad, sha256="0" * 64)])

        await asyncio.gather(
            *(self.get("resume", f"/v1/runs/{r}/checkpoints/latest") for r in runs),
            self.get("resume", f"/v1/runs/{runs[2]}/checkpoints/1"),
            self.get("list", "/v1/runs?limit=5"),
        )
        await self.claim(runs[3], "worker-a")
        await self.claim(runs[3], "worker-b")
        self.stats.rounds += 1

    async def run_forever(self, pause: float = 0.3) -> None:
        while True:
            await self.one_round()
            await asyncio.sleep(pause)


@pytest.fixture
async def load_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _panel_status(prom: PrometheusServer, query: PanelQuery) -> tuple[int, int]:
    """(samples returned, finite samples) for one panel query."""
    samples = await prom.query(query.promql)
    finite = [s for s in samples if math.isfinite(float(s["value"][1]))]
    return len(samples), len(finite)


async def test_prometheus_scrapes_sidecar_and_every_panel_and_rule_works(
    sidecar_process: SidecarProcess,
    start_prometheus: StartPrometheus,
    load_session: aiohttp.ClientSession,
) -> None:
    target = f"127.0.0.1:{sidecar_process.port}"
    prom = await start_prometheus([target], rule_files=[DASHBOARDS_DIR / "alerts.yml"])

    async def target_up() -> bool:
        result = await prom.query(f'up{{job="{SIDECAR_JOB}"}} == 1')
        return len(result) == 1

    await prom.wait_for(target_up, "Prometheus to scrape the sidecar (up == 1)")

    dashboard = load_dashboard()
    queries = panel_queries(dashboard)
    assert len(queries) >= 20

    load = Load(sidecar_process.url, load_session)
    await load.one_round()
    # The traffic had the effects the panels show; fail early with the codes if not.
    statuses = load.stats.statuses
    assert set(statuses["save"]) == {200}, statuses
    assert statuses["duplicate"] == [200], statuses
    assert statuses["conflict"][0] in (400, 409), statuses
    assert statuses["checksum"] == [400], statuses
    assert set(statuses["resume"]) == {200}, statuses
    assert statuses["claim"] == [200, 409], statuses

    loader = asyncio.create_task(load.run_forever())
    missing: dict[str, tuple[int, int]] = {}
    try:

        async def every_panel_has_data() -> bool:
            missing.clear()
            finite_by_panel: dict[int, int] = {}
            for query in queries:
                total, finite = await _panel_status(prom, query)
                finite_by_panel[query.panel_id] = finite_by_panel.get(query.panel_id, 0) + finite
                if total == 0:
                    missing[f"{query.title} [{query.ref_id}]"] = (total, finite)
            # A panel whose every query is NaN (no rate yet) shows nothing useful either.
            for query in queries:
                if finite_by_panel[query.panel_id] == 0:
                    missing.setdefault(f"{query.title} (no finite value)", (0, 0))
            return not missing

        try:
            await prom.wait_for(
                every_panel_has_data, "every dashboard panel to return data", DATA_DEADLINE_S
            )
        except pytest.fail.Exception:
            pytest.fail(f"panels without data: {sorted(missing)}; load: {load.stats.rounds} rounds")

        # The SLO rules need the le="0.1" bucket of the save-latency histogram.
        bucket = await prom.query(
            f'flowpoint_checkpoint_save_seconds_bucket{{job="{SIDECAR_JOB}", le="0.1"}}'
        )
        assert len(bucket) == 1 and float(bucket[0]["value"][1]) > 0

        # The dashboard's variable lists this sidecar.
        for name, (selector, label) in variable_queries(dashboard).items():
            values = {s["metric"].get(label) for s in await prom.query(selector)}
            assert target in values, (name, values)

        # Every rule expression parses and evaluates; every loaded rule is healthy.
        for expr in rule_expressions().values():
            await prom.format_query(expr)
            await prom.query(expr)

        async def rules_evaluated() -> bool:
            groups = (await prom.api("rules"))["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == len(rule_expressions()) and all(
                r.get("lastEvaluation", "").startswith("20") for r in rules
            )

        await prom.wait_for(rules_evaluated, "every rule to be evaluated once")
        groups = (await prom.api("rules"))["groups"]
        unhealthy = {
            r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"
        }
        assert not unhealthy

        async def slo_ratio_recorded() -> bool:
            ratio = await prom.query("flowpoint:checkpoint_save_slow:ratio_rate5m")
            return len(ratio) == 1 and math.isfinite(float(ratio[0]["value"][1]))

        await prom.wait_for(slo_ratio_recorded, "the SLO error ratio to be recorded")

        async def checksum_alert_fires() -> bool:
            alerts = (await prom.api("alerts"))["alerts"]
            return any(
                a["labels"]["alertname"] == "FlowpointChecksumFailure" and a["state"] == "firing"
                for a in alerts
            )

        await prom.wait_for(checksum_alert_fires, "FlowpointChecksumFailure to fire")
        active = {a["labels"]["alertname"] for a in (await prom.api("alerts"))["alerts"]}
        assert "FlowpointSidecarDown" not in active
        assert "FlowpointBreakerOpen" not in active
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        load.spans.shutdown()


async def test_panel_queries_use_only_known_grafana_variables() -> None:
    # No server needed: an unknown variable (a typo such as $__rate_intreval) raises here
    # instead of silently matching nothing in Grafana.
    for query in panel_queries(load_dashboard()):
        assert "$" not in grafana_to_promql(query.expr), query
    with pytest.raises(KeyError):
        grafana_to_promql("rate(x[$__rate_intreval])")
