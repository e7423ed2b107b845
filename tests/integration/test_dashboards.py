"""The Grafana dashboard and its provisioning: lint, ids, datasource, contract metrics.

The lint loads the JSON with ``grafana-foundation-sdk`` (Grafana's own generated models)
and re-encodes it: the SDK silently drops keys it does not know, so any key of the file
that is missing or different after the round trip is a typo or an unknown option. Every
query is parsed by ``promtool`` (offline); tests/e2e/test_prometheus_scrape.py runs them
against a real Prometheus scraping a real sidecar.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import (
    DASHBOARDS_DIR,
    GRAFANA_VARIABLES,
    grafana_to_promql,
    iter_panels,
    load_dashboard,
    panel_queries,
    rule_expressions,
    unavailable,
    variable_queries,
)

DATASOURCE_UID = "flowpoint-prometheus"
DASHBOARD_UID = "flowpoint-overview"
PROVISIONING = DASHBOARDS_DIR / "provisioning"

# The metric names of the public contract (DESIGN.md), prefix flowpoint_.
CONTRACT_METRICS = {
    "flowpoint_checkpoint_save_seconds",
    "flowpoint_checkpoint_stage_seconds",
    "flowpoint_checkpoint_payload_bytes",
    "flowpoint_checkpoints_total",
    "flowpoint_checkpoint_rejected_total",
    "flowpoint_commit_batch_size",
    "flowpoint_seq_gaps_total",
    "flowpoint_breaker_state",
    "flowpoint_spool_bytes",
    "flowpoint_spool_records",
    "flowpoint_spool_oldest_age_seconds",
    "flowpoint_spool_replayed_total",
    "flowpoint_resume_seconds",
    "flowpoint_claim_conflicts_total",
    "flowpoint_http_request_seconds",
}
_METRIC = re.compile(r"\bflowpoint_[a-z0-9_]+")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def _metric_names(expr: str) -> set[str]:
    return {_HISTOGRAM_SUFFIX.sub("", m) for m in _METRIC.findall(expr)}


def _round_trip_diff(original: Any, encoded: Any, path: str = "$") -> list[str]:
    """Where ``encoded`` lost or changed something of ``original`` (added defaults are fine)."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [f"{path}: became {type(encoded).__name__}"]
        problems = []
        for key, value in original.items():
            if key not in encoded:
                problems.append(f"{path}.{key}: unknown key (dropped by the SDK)")
            else:
                problems += _round_trip_diff(value, encoded[key], f"{path}.{key}")
        return problems
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(original) != len(encoded):
            return [f"{path}: list changed"]
        problems = []
        for i, (a, b) in enumerate(zip(original, encoded, strict=True)):
            problems += _round_trip_diff(a, b, f"{path}[{i}]")
        return problems
    return [] if original == encoded else [f"{path}: {original!r} became {encoded!r}"]


def _sdk_round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        unavailable(
            "grafana-foundation-sdk is not installed "
            "(pip install 'grafana-foundation-sdk==1769699998!10.1.0')"
        )

    register_default_plugins()
    encoded: dict[str, Any] = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    return encoded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_round_trips_through_grafana_sdk_without_unknown_keys(
    dashboard: dict[str, Any],
) -> None:
    assert _round_trip_diff(dashboard, _sdk_round_trip(dashboard)) == []


def test_lint_catches_a_misspelled_key(dashboard: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(dashboard))
    panel = next(p for p in broken["panels"] if p["type"] == "timeseries")
    panel["targets"][0]["legendFormt"] = panel["targets"][0].pop("legendFormat")
    panel["fieldConfig"]["defaults"]["custom"]["lineWidht"] = 2
    problems = _round_trip_diff(broken, _sdk_round_trip(broken))
    assert any("legendFormt" in p for p in problems), problems
    assert any("lineWidht" in p for p in problems), problems


def test_dashboard_identity_and_unique_panel_ids(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == DASHBOARD_UID
    assert dashboard["title"]
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_panels_fit_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells[(x, y)])
                cells[(x, y)] = panel["id"]


def _provisioned_prometheus() -> dict[str, Any]:
    sources: list[dict[str, Any]] = []
    for path in sorted((PROVISIONING / "datasources").glob("*.yml")):
        sources += yaml.safe_load(path.read_text())["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1, prometheus
    return prometheus[0]


def test_every_query_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    source = _provisioned_prometheus()
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": DATASOURCE_UID}
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, (panel["title"], target["refId"])
    for var in dashboard["templating"]["list"]:
        assert var["datasource"] == expected, var["name"]


def test_dashboard_provider_loads_the_folder_compose_mounts() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "flowpoint.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    compose = yaml.safe_load((DASHBOARDS_DIR.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards/flowpoint-overview.json:{folder}/flowpoint-overview.json:ro" in mounts
    assert "./dashboards/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_save_latency_panel_shows_the_100ms_slo_line(dashboard: dict[str, Any]) -> None:
    panel = next(p for p in iter_panels(dashboard) if p["title"] == "Save latency")
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "line+area", "dashed")
    steps = defaults["thresholds"]["steps"]
    assert {"color": "red", "value": 0.1} in steps
    exprs = [t["expr"] for t in panel["targets"]]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile},")
            and "flowpoint_checkpoint_save_seconds_bucket" in e
            and "[$__rate_interval]" in e
            for e in exprs
        ), quantile


def test_dashboard_covers_every_contract_metric_and_names_no_other(
    dashboard: dict[str, Any],
) -> None:
    used: set[str] = set()
    for query in panel_queries(dashboard):
        names = _metric_names(query.expr)
        assert names <= CONTRACT_METRICS, (query.title, names - CONTRACT_METRICS)
        used |= names
    assert used == CONTRACT_METRICS, CONTRACT_METRICS - used


def test_rules_name_only_contract_metrics() -> None:
    for name, expr in rule_expressions().items():
        assert _metric_names(expr) <= CONTRACT_METRICS, name


def test_issue_panels_are_present(dashboard: dict[str, Any]) -> None:
    titles = {p["title"] for p in iter_panels(dashboard)}
    for title in (
        "Save latency",
        "Throughput by outcome",
        "Rejects by reason",
        "Payload size: raw vs stored",
        "Compression ratio",
        "Commit batch size",
        "Breaker state",
        "Spool depth",
        "Spool oldest age",
        "Seq gaps",
        "Resume latency",
        "Claim conflicts",
        "HTTP requests by route and code",
    ):
        assert title in titles, title


def test_every_panel_query_and_variable_parses_with_promtool(
    dashboard: dict[str, Any], promtool_bin: str, tmp_path: Path
) -> None:
    # promtool parses every expression of a rules file: one recording rule per query.
    rules = [
        {"record": f"dashboard:panel_{q.panel_id}_{q.ref_id}", "expr": q.promql}
        for q in panel_queries(dashboard)
    ]
    rules += [
        {"record": f"dashboard:variable_{name}", "expr": selector}
        for name, (selector, _label) in variable_queries(dashboard).items()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool_bin, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_queries_filter_on_the_sidecar_job_and_instance(dashboard: dict[str, Any]) -> None:
    assert set(variable_queries(dashboard)) == {"instance"}
    assert "instance" in GRAFANA_VARIABLES
    for query in panel_queries(dashboard):
        bare = re.findall(r"\bflowpoint_[a-z0-9_]+(?![a-z0-9_{])", query.expr)
        assert not bare, (query.title, bare)
        for selector in re.findall(r"flowpoint_[a-z0-9_]+\{([^}]*)\}", query.expr):
            assert 'job="flowpoint-sidecar"' in selector, query.title
            assert 'instance=~"$instance"' in selector, query.title
        assert "$" not in grafana_to_promql(query.expr)
