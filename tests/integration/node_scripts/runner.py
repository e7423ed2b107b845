"""Starting the node scripts from tests: always stopped, even when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _command(script: str, args: tuple[str, ...]) -> list[str]:
    target = script if script.endswith(".py") else str(HERE / f"{script}.py")
    return [sys.executable, target, *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def run_script(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (a node script name or a path) to its end; kill it if it overstays."""
    proc = subprocess.Popen(
        _command(script, args),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def background(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Start ``script`` in the background; it is killed on exit if still running."""
    proc = subprocess.Popen(
        _command(script, args),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def result_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line a script printed last; fails with its stderr when it did not succeed."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    doc: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc
