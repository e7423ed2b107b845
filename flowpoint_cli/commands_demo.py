"""`flowpoint demo`: a workflow is killed mid-run and resumed from the sidecar.

The demo runs the sidecar (optionally) and the workflow as separate processes, as
they run in a pod: the worker checkpoints through OTLP, dies with SIGKILL in its
4th node, and a new worker process resumes the run from the sidecar without
re-running nodes 1-3.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flowpoint_cli import app

console = Console()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the sidecar at {url} was not ready after {timeout:.0f} s")


@contextmanager
def _sidecar(data_dir: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "sidecar.log").open("ab")
    cmd = [
        sys.executable,
        "-m",
        "flowpoint_cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir / "pg"),
        "--spool-dir",
        str(data_dir / "spool"),
        "--log-format",
        "text",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        console.print(f"[bold]sidecar[/bold] starting on {url} (embedded PostgreSQL in {data_dir})")
        _wait_ready(url, proc, timeout=120)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _worker(url: str, run_id: str, mode: str, marker: Path) -> tuple[int, list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "flowpoint_cli.demo_worker", url, run_id, mode, str(marker)]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, check=False)
    events = []
    for line in proc.stdout.decode().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    if proc.returncode not in (0, -signal.SIGKILL):
        console.print(proc.stderr.decode()[-2000:])
    return proc.returncode, events


def _one_demo(url: str, workdir: Path, quiet: bool = False) -> bool:
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    marker = workdir / run_id

    def show(text: str) -> None:
        if not quiet:
            console.print(text)

    show(f"\n[bold]1. worker A runs {run_id}[/bold] (checkpoints go to the sidecar as OTLP spans)")
    code_a, events_a = _worker(url, run_id, "run", marker)
    ran_a = [e["node"] for e in events_a if e["event"] == "node_started"]
    if code_a != -signal.SIGKILL:
        show(f"[red]worker A was expected to be killed, it exited with {code_a}[/red]")
        return False
    show(f"   worker A ran {', '.join(ran_a)} and was [red]killed with SIGKILL[/red] in 'review'")

    show("\n[bold]2. worker B resumes the run from the sidecar[/bold]")
    code_b, events_b = _worker(url, run_id, "resume", marker)
    finished = next((e for e in events_b if e["event"] == "run_finished"), None)
    if code_b != 0 or finished is None:
        show(f"[red]the resume failed (exit code {code_b})[/red]")
        return False
    ran_b = [e["node"] for e in events_b if e["event"] == "node_started"]

    table = Table("node", "worker A", "worker B")
    for node in ["fetch_ticket", "classify", "draft_reply", "review", "send"]:
        a = "[green]ran[/green]" if node in ran_a else "-"
        if node == "review" and node in ran_a:
            a = "[red]killed[/red]"
        b = "[green]ran[/green]" if node in ran_b else "[cyan]skipped (from checkpoint)[/cyan]"
        table.add_row(node, a, b)
    if not quiet:
        console.print(table)
    repeated = [n for n in ran_b if n in finished["skipped"]]
    show(
        f"   status [bold]{finished['status']}[/bold], last seq {finished['seq']}; "
        f"skipped {finished['skipped']}; re-executed completed nodes: {repeated or 'none'}"
    )
    return finished["status"] == "completed" and not repeated and "fetch_ticket" not in ran_b


@app.command()
def demo(
    sidecar: Annotated[
        str,
        typer.Option(envvar="FLOWPOINT_SIDECAR_URL", help="Sidecar URL (without --with-sidecar)."),
    ] = "http://127.0.0.1:4318",
    with_sidecar: Annotated[
        bool, typer.Option(help="Start a sidecar on an embedded PostgreSQL for the demo.")
    ] = False,
    data_dir: Annotated[
        Path, typer.Option(envvar="FLOWPOINT_DATA_DIR", help="Where --with-sidecar keeps data.")
    ] = Path(".flowpoint/demo"),
    forever: Annotated[
        bool, typer.Option(help="Repeat the demo (with new runs) until interrupted.")
    ] = False,
    pause: Annotated[float, typer.Option(help="Seconds between runs with --forever.")] = 5.0,
) -> None:
    """Kill a workflow mid-run and resume it from the sidecar; print what was skipped."""
    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowpoint-demo-") as tmp:
        workdir = Path(tmp)
        if with_sidecar:
            with _sidecar(data_dir) as url:
                ok = _loop(url, workdir, forever, pause)
        else:
            ok = _loop(sidecar.rstrip("/"), workdir, forever, pause)
    if not ok:
        raise typer.Exit(1)
    console.print("\n[green]demo finished: nothing completed was executed twice[/green]")


def _loop(url: str, workdir: Path, forever: bool, pause: float) -> bool:
    if not forever:
        return _one_demo(url, workdir)
    count = 0
    try:
        while True:
            count += 1
            ok = _one_demo(url, workdir, quiet=True)
            console.print(f"run {count}: {'ok' if ok else 'FAILED'}")
            time.sleep(pause)
    except KeyboardInterrupt:
        return True
