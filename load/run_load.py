"""``make load``: a short headless Locust run against a local sidecar, with SLO thresholds.

1. Starts ``flowpoint serve`` on a free 127.0.0.1 port: embedded PostgreSQL (fsync on) in a
   fresh temp data dir, or the database in ``--database-url`` / ``FLOWPOINT_DATABASE_URL``.
   ``--target URL`` uses a sidecar that is already running instead (loopback only).
2. Runs ``load/locustfile.py`` headless (default 20 users for 30 s), writing
   ``<reports>/flowpoint_stats.csv`` (and the other Locust CSVs), ``flowpoint.html`` and
   ``slo.json`` into ``reports/load/``.
3. Prints a summary: users, request rate, p50/p95/p99 per endpoint, failures, CPU used by
   Locust, the sidecar and PostgreSQL, the sidecar's own view of save latency and batching
   (from ``/metrics``), and the SLO verdict; also saved as ``summary.txt``.
4. Stops everything and exits with Locust's exit code (0 only when the SLO held).

    python -m load.run_load                          # 20 users, 30 s
    python -m load.run_load --users 50 --run-time 2m
    FLOWPOINT_LOAD_USERS=5 FLOWPOINT_LOAD_RUN_TIME=10s python -m load.run_load
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "flowpoint"
SAVE_NAME = "POST /v1/traces"
MAX_RUN_SECONDS = 3600.0
READY_TIMEOUT_S = 120.0
TICKS = os.sysconf("SC_CLK_TCK")

PrintFn = Callable[[str], Any]


class LoadError(Exception):
    """The load run could not be set up (bad option, sidecar did not start...)."""


# -- options ------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a Locust-style duration: ``30``, ``30s``, ``2m``, ``1h30m``, ``1m30s``."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", raw)
    if not raw or parts is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h)")
    h, m, s = (int(g) if g else 0 for g in parts.groups())
    return float(h * 3600 + m * 60 + s)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FLOWPOINT_LOAD_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load.run_load",
        description="Run the Locust load profile against a local Flowpoint sidecar, with SLOs.",
    )
    parser.add_argument(
        "--users", type=int, default=int(_env("USERS", "20")), help="pods to simulate"
    )
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=None,
        help="users started per second (default: all at once)",
    )
    parser.add_argument(
        "--run-time",
        type=parse_duration,
        default=parse_duration(_env("RUN_TIME", "30s")),
        help="how long to load (30s, 2m, ...; at most 1h)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("FLOWPOINT_DATABASE_URL") or None,
        help="PostgreSQL for the sidecar (default: embedded, in a temp dir)",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="an already running sidecar on a loopback address (no sidecar is started)",
    )
    parser.add_argument(
        "--reports-dir",
        type=Path,
        default=Path(_env("REPORTS", str(REPO_ROOT / "reports" / "load"))),
        help="where CSV, HTML, slo.json, summary.txt and the sidecar log go",
    )
    parser.add_argument(
        "--slo-save-p99-ms",
        type=float,
        default=float(_env("SLO_SAVE_P99_MS", "100")),
        help="SLO: p99 of checkpoint saves under this many ms",
    )
    parser.add_argument(
        "--slo-error-ratio",
        type=float,
        default=float(_env("SLO_ERROR_RATIO", "0.01")),
        help="SLO: unexpected failures under this share of requests",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed the profile's choices")
    parser.add_argument(
        "--think-min-ms", type=float, default=None, help="pods' shortest pause between steps"
    )
    parser.add_argument(
        "--think-max-ms", type=float, default=None, help="pods' longest pause between steps"
    )
    parser.add_argument("--runs-per-pod", type=int, default=None, help="runs each pod drives")
    parser.add_argument(
        "--sidecar-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra option for `flowpoint serve` (repeatable, e.g. --sidecar-arg=--max-batch=64)",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the embedded PostgreSQL data dir"
    )
    parser.add_argument(
        "--probe-disk",
        action="store_true",
        default=_env("PROBE_DISK", "") not in ("", "0", "false"),
        help="time an 8 KiB fdatasync every 50 ms beside the database during the load "
        "(shows whether slow commits come from the disk)",
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.users < 1:
        raise LoadError("--users must be at least 1")
    if not 0 < args.run_time <= MAX_RUN_SECONDS:
        raise LoadError(f"--run-time must be between 1s and {MAX_RUN_SECONDS:.0f}s")
    if args.slo_save_p99_ms <= 0 or not 0 < args.slo_error_ratio <= 1:
        raise LoadError("--slo-save-p99-ms must be > 0 and --slo-error-ratio in (0, 1]")
    if args.target is not None:
        require_loopback(args.target)


def require_loopback(url: str) -> str:
    """``url`` when it is http(s) on a loopback host; else :class:`LoadError`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise LoadError(f"--target must be an http(s) URL, got {url!r}")
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback:
        raise LoadError(f"--target must be a loopback address (127.0.0.1, ::1), got {host!r}")
    return url.rstrip("/")


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, SIGKILL if needed. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@dataclass
class Sidecar:
    """A ``flowpoint serve`` subprocess (or a running target when ``proc`` is None)."""

    url: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    data_dir: Path | None = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def postmaster_pid(self) -> int | None:
        """The embedded PostgreSQL's postmaster pid (None with an external database)."""
        if self.data_dir is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid_file = self.data_dir / "postgres" / "postmaster.pid"
            return int(pid_file.read_text().splitlines()[0])
        return None


@contextlib.contextmanager
def local_sidecar(
    database_url: str | None, reports: Path, extra: Sequence[str], keep_data: bool
) -> Iterator[Sidecar]:
    """A ready sidecar subprocess on 127.0.0.1; stopped (and its temp dir removed) on exit."""
    base = Path(tempfile.mkdtemp(prefix="flowpoint-load-"))
    base.chmod(0o755)  # as root the embedded PostgreSQL runs as nobody and must reach it
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "flowpoint_cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(base / "data"),
        *extra,
    ]
    if database_url:
        cmd += ["--database-url", database_url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FLOWPOINT_PORT", None)
    log_path = reports / "sidecar.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    sidecar = Sidecar(
        url=f"http://127.0.0.1:{port}",
        proc=proc,
        log_path=log_path,
        data_dir=None if database_url else base / "data",
    )
    try:
        wait_ready(sidecar)
        yield sidecar
    finally:
        stop_process(proc)
        if keep_data:
            print(f"kept the sidecar's data dir: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def wait_ready(sidecar: Sidecar, limit: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + limit
    while True:
        if sidecar.proc is not None and sidecar.proc.poll() is not None:
            raise LoadError(
                f"the sidecar exited with {sidecar.proc.returncode} before it was ready:\n"
                f"{sidecar.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if _get(sidecar.url + "/readyz")[0] == 200:
                return
        if time.monotonic() > deadline:
            raise LoadError(f"the sidecar was not ready in {limit:.0f}s:\n{sidecar.log_tail()}")
        time.sleep(0.1)


# -- CPU accounting -------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process; 0.0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of the postmaster and its live children (backends, WAL writer...)."""
    if postmaster is None:
        return 0.0
    total = proc_cpu(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == postmaster:
            total += proc_cpu(int(entry))
    return total


@dataclass
class CpuMeter:
    """CPU used by Locust, the sidecar and PostgreSQL during the load, in cores busy.

    Sampled while Locust runs (its counters vanish when it exits); the window starts a few
    seconds in, once Locust has imported itself and spawned its users.
    """

    sources: dict[str, Callable[[], float]]
    settle_s: float = 3.0
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append((time.monotonic(), {k: f() for k, f in self.sources.items()}))

    @property
    def window(self) -> tuple[float, dict[str, float]]:
        """(seconds, CPU seconds per source) between the settled sample and the last one."""
        if len(self.samples) < 2:
            return 0.0, {}
        t0 = self.samples[0][0]
        first = next((s for s in self.samples[:-1] if s[0] - t0 >= self.settle_s), self.samples[0])
        last = self.samples[-1]
        return last[0] - first[0], {k: last[1][k] - first[1][k] for k in last[1]}


class DiskProbe:
    """Times an 8 KiB write + fdatasync every ``interval`` s in ``folder`` (a thread).

    PostgreSQL flushes its WAL the same way on every commit, so a slow fsync here while
    the load runs explains slow commits there.
    """

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        self.folder = folder
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        fd, name = tempfile.mkstemp(prefix=".fsync-probe-", dir=self.folder)
        block = os.urandom(8192)
        try:
            i = 0
            while not self._stop.wait(self.interval):
                os.pwrite(fd, block, (i % 128) * 8192)
                t0 = time.perf_counter()
                os.fdatasync(fd)
                self.latencies.append(time.perf_counter() - t0)
                i += 1
        finally:
            os.close(fd)
            os.unlink(name)

    def __str__(self) -> str:
        data = sorted(self.latencies)
        if not data:
            return "no samples"

        def pct(q: float) -> float:
            return data[min(len(data) - 1, int(q * len(data)))] * 1000

        slow = sum(1 for d in data if d > 0.05)
        return (
            f"{len(data)} fsyncs of 8 KiB in {self.folder}: p50 {pct(0.5):.2f} / p99 "
            f"{pct(0.99):.1f} / max {data[-1] * 1000:.0f} ms, {slow} over 50 ms"
        )


# -- reports ------------------------------------------------------------------------------------


def read_stats(csv_path: Path) -> list[dict[str, str]]:
    """The rows of Locust's ``*_stats.csv`` (one per endpoint, then ``Aggregated``)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def scrape_metrics(url: str) -> dict[str, Any]:
    """The sidecar's view: save latency quantiles, outcomes and batch sizes from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        status, text = _get(url + "/metrics", timeout=5.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    buckets: list[tuple[float, float]] = []
    stages: dict[str, list[tuple[float, float]]] = {}
    out: dict[str, Any] = {"outcomes": {}, "stage_p99_ms": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "flowpoint_checkpoint_save_seconds_bucket":
                buckets.append((float(s.labels["le"]), float(s.value)))
            elif s.name == "flowpoint_checkpoint_stage_seconds_bucket":
                stage = s.labels.get("stage", "")
                stages.setdefault(stage, []).append((float(s.labels["le"]), float(s.value)))
            elif s.name == "flowpoint_checkpoints_total":
                out["outcomes"][s.labels.get("outcome", "")] = int(s.value)
            elif s.name == "flowpoint_commit_batch_size_sum":
                out["batch_sum"] = float(s.value)
            elif s.name == "flowpoint_commit_batch_size_count":
                out["batch_count"] = float(s.value)
            elif s.name == "flowpoint_seq_gaps_total":
                out["seq_gaps"] = int(s.value)
    buckets.sort()
    for q in (0.5, 0.95, 0.99):
        out[f"save_p{round(q * 100)}_ms"] = histogram_quantile(q, buckets) * 1000
    for stage, series in stages.items():
        series.sort()
        out["stage_p99_ms"][stage] = histogram_quantile(0.99, series) * 1000
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative ``(le, count)`` buckets."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            width = count - prev_count
            frac = (rank - prev_count) / width if width else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return prev_le


def format_summary(
    rows: list[dict[str, str]],
    *,
    users: int,
    run_time: float,
    slo: dict[str, Any] | None,
    cpu: CpuMeter | None,
    sidecar_view: dict[str, Any],
    exit_code: int,
    command: str,
    disk: DiskProbe | None = None,
    load_before: float = math.nan,
) -> str:
    """The human-readable summary printed at the end (and saved as summary.txt)."""
    lines = [
        f"command: {command}",
        f"users: {users}, run time: {run_time:.0f}s, machine: {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after",
    ]
    header = (
        f"{'endpoint':<44}{'reqs':>7}{'fails':>7}{'req/s':>8}{'p50':>7}{'p95':>7}{'p99':>7}"
        f"{'max':>8}  (ms)"
    )
    lines += ["", header, "-" * len(header)]
    for row in rows:
        name = row.get("Name", "")
        label = "Aggregated" if name == "Aggregated" else name
        if name == "Aggregated":
            lines.append("-" * len(header))
        lines.append(
            f"{label:<44}{int(_num(row.get('Request Count'))):>7}"
            f"{int(_num(row.get('Failure Count'))):>7}{_num(row.get('Requests/s')):>8.1f}"
            f"{_num(row.get('50%')):>7.0f}{_num(row.get('95%')):>7.0f}{_num(row.get('99%')):>7.0f}"
            f"{_num(row.get('Max Response Time')):>8.0f}"
        )
    seconds, used = cpu.window if cpu is not None else (0.0, {})
    if seconds > 0:
        busy = ", ".join(f"{k} {v / seconds:.2f}" for k, v in used.items())
        lines += ["", f"CPU, cores busy over {seconds:.0f}s: {busy}"]
    if sidecar_view:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(sidecar_view["outcomes"].items()))
        batch = (
            sidecar_view["batch_sum"] / sidecar_view["batch_count"]
            if sidecar_view.get("batch_count")
            else math.nan
        )
        lines.append(
            "sidecar /metrics: save latency (span start -> durable) p50 "
            f"{sidecar_view['save_p50_ms']:.1f} / p95 {sidecar_view['save_p95_ms']:.1f} / "
            f"p99 {sidecar_view['save_p99_ms']:.1f} ms; checkpoints {outcomes}; "
            f"avg commit batch {batch:.2f}; seq gaps {sidecar_view.get('seq_gaps', 0)}"
        )
        stage_p99 = sidecar_view.get("stage_p99_ms", {})
        if stage_p99:
            lines.append(
                "sidecar stage p99 (ms): "
                + ", ".join(f"{k} {v:.1f}" for k, v in stage_p99.items() if not math.isnan(v))
            )
    if disk is not None:
        lines.append(f"disk fsync probe during the load: {disk}")
    if slo is not None and slo.get("payload_mix"):
        mix = slo["payload_mix"]
        total = sum(mix.values()) or 1
        order = ("<=16KB", "16-64KB", "64-256KB", ">256KB")
        lines.append(
            "stored payloads by size: "
            + ", ".join(f"{k} {mix.get(k, 0)} ({mix.get(k, 0) / total:.1%})" for k in order)
            + f"; largest {slo.get('largest_payload_bytes', 0) / 1024:.0f} KiB"
        )
    lines.append("")
    if slo is not None:
        p99 = slo.get("save_p99_ms")
        ratio = slo.get("error_ratio")
        lines.append(
            f"SLO {'PASSED' if slo['passed'] else 'FAILED'}: save p99 "
            f"{'n/a' if p99 is None else f'{p99:.0f}'} ms (< {slo['save_p99_limit_ms']:.0f}), "
            f"unexpected failures {slo['failures']}/{slo['requests']} = "
            f"{'n/a' if ratio is None else f'{ratio:.3%}'} (< {slo['error_ratio_limit']:.2%})"
            + (f", task exceptions {slo['task_exceptions']}" if slo.get("task_exceptions") else "")
        )
    else:
        lines.append("SLO: no verdict (Locust did not write slo.json)")
    lines.append(f"exit code: {exit_code}")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------


def locust_command(args: argparse.Namespace, host: str, reports: Path) -> list[str]:
    spawn = args.spawn_rate if args.spawn_rate is not None else float(args.users)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        f"{spawn:g}",
        "--run-time",
        f"{args.run_time:.0f}s",
        "--host",
        host,
        "--csv",
        str(reports / CSV_PREFIX),
        "--html",
        str(reports / f"{CSV_PREFIX}.html"),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--slo-save-p99-ms",
        f"{args.slo_save_p99_ms:g}",
        "--slo-error-ratio",
        f"{args.slo_error_ratio:g}",
        "--slo-report",
        str(reports / "slo.json"),
    ]
    for flag, value in (
        ("--load-seed", args.seed),
        ("--think-min-ms", args.think_min_ms),
        ("--think-max-ms", args.think_max_ms),
        ("--runs-per-pod", args.runs_per_pod),
    ):
        if value is not None:
            cmd += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return cmd


def run_locust(cmd: list[str], limit: float, meter: CpuMeter | None) -> int:
    """Run Locust (output passed through) within ``limit`` seconds; its exit code."""
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    if meter is not None:
        meter.sources["locust"] = lambda: proc_cpu(proc.pid)
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                print(f"Locust ran past {limit:.0f}s: stopping it", file=sys.stderr)
                stop_process(proc, timeout=20)
                return 124
            if meter is not None:
                meter.sample()
            time.sleep(0.5)
    finally:
        if proc.poll() is None:  # interrupted: never leave it running
            stop_process(proc, timeout=20)
    return int(proc.returncode)


def execute(args: argparse.Namespace, print_fn: PrintFn = print) -> int:
    """Set up, load, report, tear down. Returns the exit code."""
    _check_args(args)
    if importlib.util.find_spec("locust") is None:
        raise LoadError("Locust is not installed: pip install 'locust==2.47.*'")
    reports: Path = args.reports_dir.resolve()
    reports.mkdir(parents=True, exist_ok=True)
    for old in reports.glob(f"{CSV_PREFIX}*"):
        old.unlink()
    (reports / "slo.json").unlink(missing_ok=True)
    command = "python -m load.run_load " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if args.target is not None:
            sidecar = Sidecar(url=require_loopback(args.target))
            wait_ready(sidecar, limit=10)
        else:
            print_fn(
                "starting a local sidecar"
                + (" (embedded PostgreSQL)" if not args.database_url else "")
            )
            sidecar = stack.enter_context(
                local_sidecar(args.database_url, reports, args.sidecar_arg, args.keep_data)
            )
        print_fn(
            f"sidecar ready at {sidecar.url}; loading with {args.users} users for "
            f"{args.run_time:.0f}s"
        )
        meter = _meter(sidecar)
        cmd = locust_command(args, sidecar.url, reports)
        probe = None
        if args.probe_disk:
            probe = DiskProbe(sidecar.data_dir.parent if sidecar.data_dir else reports)
            probe.start()
        try:
            code = run_locust(cmd, args.run_time + 120.0, meter)
        finally:
            if probe is not None:
                probe.stop()
        view = scrape_metrics(sidecar.url)
    stats_path = reports / f"{CSV_PREFIX}_stats.csv"
    rows = read_stats(stats_path) if stats_path.exists() else []
    slo_path = reports / "slo.json"
    slo = json.loads(slo_path.read_text()) if slo_path.exists() else None
    summary = format_summary(
        rows,
        users=args.users,
        run_time=args.run_time,
        slo=slo,
        cpu=meter,
        sidecar_view=view,
        exit_code=code,
        command=command,
        disk=probe,
        load_before=load_before,
    )
    (reports / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    print_fn("")
    print_fn(summary)
    print_fn(f"reports: {reports}")
    return code


def _meter(sidecar: Sidecar) -> CpuMeter | None:
    if sidecar.proc is None:
        return None
    sidecar_pid = sidecar.proc.pid
    postmaster = sidecar.postmaster_pid()
    sources: dict[str, Callable[[], float]] = {"sidecar": lambda: proc_cpu(sidecar_pid)}
    if postmaster is not None:
        sources["postgres"] = lambda: postgres_cpu(postmaster)
    return CpuMeter(sources=sources)


def _terminated(signum: int, _frame: Any) -> None:
    # Unwind through the finally blocks, so Locust and the sidecar are stopped too.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m load.run_load`` (and ``make load``)."""
    args = build_parser().parse_args(argv)
    try:
        return execute(args)
    except LoadError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
