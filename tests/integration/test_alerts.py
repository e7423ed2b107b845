"""Alert rules and the Prometheus config: promtool checks and unit tests, and their coverage.

``promtool test rules dashboards/alerts_test.yml`` runs the unit tests of every alert; the
tests here also check that each alert has a case that fires and a healthy case that does
not, that every alert documents itself, and that the unit tests fail when a rule breaks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import DASHBOARDS_DIR, SIDECAR_JOB

ALERTS = DASHBOARDS_DIR / "alerts.yml"
ALERTS_TEST = DASHBOARDS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = DASHBOARDS_DIR / "prometheus.yml"

REQUIRED_ALERTS = {
    "FlowpointSaveLatencyBurnRateFast",
    "FlowpointSaveLatencyBurnRateSlow",
    "FlowpointBreakerOpen",
    "FlowpointSpoolGrowing",
    "FlowpointSpoolOld",
    "FlowpointSeqGap",
    "FlowpointChecksumFailure",
    "FlowpointSidecarDown",
}


def _promtool(promtool_bin: str, *args: str, cwd: Path = DASHBOARDS_DIR) -> tuple[int, str]:
    result = subprocess.run(
        [promtool_bin, *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(promtool_bin: str) -> None:
    code, out = _promtool(promtool_bin, "check", "rules", str(ALERTS))
    assert code == 0, out
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass(promtool_bin: str) -> None:
    code, out = _promtool(promtool_bin, "test", "rules", str(ALERTS_TEST))
    assert code == 0, out
    assert "SUCCESS" in out


def test_prometheus_config_is_valid_and_scrapes_the_sidecar_job(promtool_bin: str) -> None:
    code, out = _promtool(promtool_bin, "check", "config", str(PROMETHEUS_CONFIG))
    assert code == 0, out
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SIDECAR_JOB]
    assert job["static_configs"][0]["targets"] == ["sidecar:4318"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_every_required_alert_exists_and_documents_itself() -> None:
    rules = _alert_rules()
    assert REQUIRED_ALERTS <= set(rules), REQUIRED_ALERTS - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "").strip()) > 20, (name, key)


def test_slo_burn_rate_uses_the_100ms_bucket_and_two_windows() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    records = {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    for window in ("5m", "30m", "1h", "6h"):
        expr = records[f"flowpoint:checkpoint_save_slow:ratio_rate{window}"]
        assert 'le="0.1"' in expr and f"[{window}]" in expr
    rules = _alert_rules()
    fast = rules["FlowpointSaveLatencyBurnRateFast"]["expr"]
    assert "ratio_rate1h > (14.4 * 0.01)" in fast and "ratio_rate5m > (14.4 * 0.01)" in fast
    slow = rules["FlowpointSaveLatencyBurnRateSlow"]["expr"]
    assert "ratio_rate6h > (6 * 0.01)" in slow and "ratio_rate30m > (6 * 0.01)" in slow


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alert_rules())
    assert alerts - fires == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a healthy (not firing) test"


# Each mutation breaks one alert the way a careless edit would; its unit tests must notice.
MUTATIONS = [
    (
        "FlowpointSaveLatencyBurnRateFast",
        "ratio_rate1h > (14.4 * 0.01)",
        "ratio_rate1h > (1.44 * 0.01)",
    ),
    ("FlowpointSaveLatencyBurnRateSlow", "ratio_rate6h > (6 * 0.01)", "ratio_rate6h > (60 * 0.01)"),
    (
        "FlowpointBreakerOpen",
        'flowpoint_breaker_state{job="flowpoint-sidecar"} == 2',
        'flowpoint_breaker_state{job="flowpoint-sidecar"} >= 1',
    ),
    ("FlowpointSpoolGrowing", "deriv(flowpoint_spool_records", "-deriv(flowpoint_spool_records"),
    (
        "FlowpointSpoolOld",
        'flowpoint_spool_oldest_age_seconds{job="flowpoint-sidecar"} > 300',
        'flowpoint_spool_oldest_age_seconds{job="flowpoint-sidecar"} > 3000',
    ),
    (
        "FlowpointSeqGap",
        'flowpoint_seq_gaps_total{job="flowpoint-sidecar"} > 0\n',
        'flowpoint_seq_gaps_total{job="flowpoint-sidecar"} > 1\n',
    ),
    ("FlowpointChecksumFailure", 'reason="checksum"}[10m]', 'reason="malformed"}[10m]'),
    (
        "FlowpointCheckpointRefused",
        'reason="refused_by_store"}[10m]',
        'reason="checksum"}[10m]',
    ),
    ("FlowpointDeadLetter", 'result="dead_letter"}[10m]) > 0', 'result="dead_letter"}[10m]) > 5'),
    (
        "FlowpointSidecarDown",
        'up{job="flowpoint-sidecar"} == 0',
        'up{job="flowpoint-sidecar"} == 1',
    ),
]


@pytest.mark.parametrize(("alert", "before", "after"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_unit_tests_fail_when_a_rule_breaks(
    promtool_bin: str, tmp_path: Path, alert: str, before: str, after: str
) -> None:
    source = ALERTS.read_text()
    assert source.count(before) == 1, alert
    (tmp_path / "alerts.yml").write_text(source.replace(before, after))
    # Only this alert's unit tests: enough to show they catch the break, and quick.
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    tests["tests"] = [
        case
        for case in tests["tests"]
        if any(check["alertname"] == alert for check in case["alert_rule_test"])
    ]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    code, out = _promtool(promtool_bin, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert code != 0, f"breaking {alert} went unnoticed"
    assert f"alertname: {alert}" in out
