"""The Locust load suite: its payloads pass the sidecar's checks, and ``make load`` works.

The end-to-end tests run ``python -m load.run_load`` exactly as ``make load`` does (a real
``flowpoint serve`` subprocess on this test's PostgreSQL database, a real headless Locust),
only shorter. Latency is not asserted here: the machine is shared and has 2 cores. The
save-p99 SLO is what ``make load`` itself checks; these tests prove the run completes
without unexpected failures, reports a save p99, writes its reports, stops what it started,
and that an SLO miss turns into a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from checkpoint.models import CheckpointStatus
from load import profiles
from load.run_load import main as run_load_main
from load.run_load import parse_duration
from sidecar import otlp
from sidecar.ingest import prepare

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 180.0


# -- the profile's payloads --------------------------------------------------------------


@pytest.mark.parametrize("kind", profiles.RUN_KINDS, ids=lambda k: k.name)
def test_every_checkpoint_of_a_run_passes_the_sidecars_checks(kind: profiles.RunKind) -> None:
    run = profiles.RunState(
        run_id=f"smoke-{kind.name}",
        kind=kind,
        final_size=kind.size_range[1],
        saves=3,
        ending=CheckpointStatus.PENDING_INPUT,
        salt=4242,
    )
    sizes = []
    for seq in (1, 2, 3):
        status = run.next_status()
        enc = profiles.encode_save(run, seq, status, epoch=2, pod="pod-smoke")
        decoded = otlp.decode_protobuf(enc.body)
        assert decoded.other_spans == 0
        [span] = decoded.checkpoints
        assert (span.run_id, span.seq, span.status, span.epoch) == (run.run_id, seq, status, 2)
        assert span.trace_id == enc.trace_id
        assert span.start_time_unix_nano > 0
        # The sidecar's own verification: checksum, payload parse, attributes vs payload.
        prepared = prepare(span, 3, time.time_ns())
        assert prepared.record.sha256 == enc.sha256
        assert prepared.record.raw_size == enc.raw_size
        run.seq, run.status = seq, status
        sizes.append(enc.raw_size)
    assert sizes == sorted(sizes), "a run's state grows as the agent loops"
    assert kind.size_range[0] * 0.8 <= sizes[-1] <= kind.size_range[1] * 1.1
    assert [p.path for p in prepared.pending_inputs] == [run.input_path]


def test_telemetry_exports_hold_no_checkpoint() -> None:
    decoded = otlp.decode_protobuf(profiles.telemetry_body("pod-smoke", random.Random(1)))
    assert decoded.checkpoints == []
    assert decoded.other_spans == 8


def test_payload_mix_is_mostly_small_some_medium_rarely_one_megabyte() -> None:
    rng = random.Random(7)
    saves: Counter[str] = Counter()
    endings: Counter[CheckpointStatus] = Counter()
    for i in range(20_000):
        run = profiles.new_run(rng, f"r{i}")
        saves[run.kind.name] += run.saves
        endings[run.ending] += 1
    total = sum(saves.values())
    assert saves["chat"] / total > 0.9
    assert 0.02 < saves["retrieval"] / total < 0.08
    assert 0.001 < saves["bulk"] / total < 0.01
    assert endings[CheckpointStatus.PENDING_INPUT] > 0 and endings[CheckpointStatus.FAILED] > 0


def test_size_classes() -> None:
    kb = profiles.KB
    assert [profiles.size_class(n) for n in (1, 16 * kb, 16 * kb + 1, 200 * kb, 2**20)] == [
        "<=16KB",
        "<=16KB",
        "16-64KB",
        "64-256KB",
        ">256KB",
    ]


# -- run_load's options -----------------------------------------------------------------------


def test_durations_parse_like_locusts() -> None:
    assert [parse_duration(t) for t in ("30", "30s", "2m", "1h30m", "1m5s")] == [
        30.0,
        30.0,
        120.0,
        5400.0,
        65.0,
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "http://10.0.0.8:4318"], "loopback"),
        (["--target", "http://example.com"], "loopback"),
        (["--run-time", "2h"], "--run-time"),
        (["--users", "0"], "--users"),
        (["--slo-save-p99-ms", "0"], "--slo-save-p99-ms"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_load_main(argv) == 2
    assert message in capsys.readouterr().err


# -- make load, shortened ----------------------------------------------------------------------


def _run_load(*args: str) -> tuple[int, str]:
    """``python -m load.run_load ARGS`` in its own process group; (exit code, output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "load.run_load", *args],
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # run_load stops its sidecar and Locust on SIGTERM
        try:
            out, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"run_load ran past {RUN_TIMEOUT_S}s:\n{out.decode(errors='replace')[-4000:]}")
    finally:
        # Whatever happened, nothing it started may outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out.decode(errors="replace")


def _stats(reports: Path) -> dict[str, dict[str, str]]:
    path = reports / "flowpoint_stats.csv"
    assert path.exists(), f"no Locust CSV in {reports}: {sorted(os.listdir(reports))}"
    with open(path, newline="", encoding="utf-8") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _sidecar_url(output: str) -> str:
    match = re.search(r"sidecar ready at (http://127\.0\.0\.1:\d+)", output)
    assert match, f"run_load did not say where its sidecar was:\n{output[-3000:]}"
    return match.group(1)


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


@pytest.mark.slow
def test_short_load_passes_without_unexpected_failures(pg_dsn: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code, output = _run_load(
        "--users",
        "5",
        "--run-time",
        "8s",
        "--database-url",
        pg_dsn,
        "--reports-dir",
        str(reports),
        "--seed",
        "11",
        # Latency is make load's business, not this test's: only errors may fail it here.
        "--slo-save-p99-ms",
        "600000",
    )
    assert code == 0, output[-5000:]

    stats = _stats(reports)
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 0, output[-3000:]
    assert int(total["Failure Count"]) == 0, (reports / "flowpoint_failures.csv").read_text()
    saves = stats["POST /v1/traces"]
    assert int(saves["Request Count"]) > 0
    save_p99 = float(saves["99%"])  # the figure the SLO is about is there, and numeric
    assert save_p99 > 0
    assert {"GET /v1/runs/{run_id}/checkpoints/latest", "GET /v1/runs/{run_id}"} <= set(stats)
    assert not any("/ld" in name for name in stats), "requests must be named by route pattern"

    verdict = json.loads((reports / "slo.json").read_text())
    assert verdict["passed"] is True
    assert verdict["failures"] == 0 and verdict["task_exceptions"] == 0
    assert verdict["save_requests"] >= int(saves["Request Count"])
    assert sum(verdict["payload_mix"].values()) > 0
    assert (reports / "flowpoint.html").stat().st_size > 0
    summary = (reports / "summary.txt").read_text()
    assert "SLO PASSED" in summary and "POST /v1/traces" in summary
    assert "SLO PASSED" in output
    assert not _listening(_sidecar_url(output)), "run_load left its sidecar running"


@pytest.mark.slow
def test_a_missed_slo_fails_the_run(pg_dsn: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    code, output = _run_load(
        "--users",
        "2",
        "--run-time",
        "4s",
        "--database-url",
        pg_dsn,
        "--reports-dir",
        str(reports),
        # No durable save answers within a microsecond.
        "--slo-save-p99-ms",
        "0.001",
    )
    assert code == 1, output[-5000:]
    verdict = json.loads((reports / "slo.json").read_text())
    assert verdict["passed"] is False
    assert verdict["checks"]["save_p99"] is False
    assert verdict["checks"]["error_ratio"] is True, verdict
    assert "SLO FAILED" in output
    assert not _listening(_sidecar_url(output))
