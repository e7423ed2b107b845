"""(a) A process killed with SIGKILL in node 4 resumes in a new process; nodes 1-3 ran once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoint import CheckpointStatus, NodeStatus
from tests.integration.flow_scripts.support import counts, make_store

SCRIPT = Path(__file__).parent / "flow_scripts" / "crash_linear.py"
ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave the child behind, even on failure
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_sigkill_in_node_4_resumes_in_a_new_process(kind: str, tmp_path: Path) -> None:
    count_file = tmp_path / "executions.log"
    crashed = run_script("run", kind, str(tmp_path), "crash-1", str(count_file))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert counts(count_file.read_text().split()) == {"n1": 1, "n2": 1, "n3": 1, "n4": 1}

    # What the killed process left behind: nodes 1-3 done, nothing about node 4.
    store = make_store(kind, tmp_path)
    try:
        cp = await store.get("crash-1")
        assert cp is not None and cp.status is CheckpointStatus.ACTIVE
        assert cp.completed_node_ids() == ["n1", "n2", "n3"]
        assert "n4" not in cp.node_states
    finally:
        await store.close()

    resumed = run_script("resume", kind, str(tmp_path), "crash-1", str(count_file))
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["output"] == {"n5": {"node": "n5", "total": 105}}
    assert result["executed"] == ["n4", "n5"]
    assert result["skipped"] == ["n1", "n2", "n3"]
    assert counts(count_file.read_text().split()) == {"n1": 1, "n2": 1, "n3": 1, "n4": 2, "n5": 1}

    store = make_store(kind, tmp_path)
    try:
        cp = await store.get("crash-1")
        assert cp is not None and cp.status is CheckpointStatus.COMPLETED
        assert cp.node_states["n4"].status is NodeStatus.SUCCEEDED
        assert cp.seq == result["seq"]
        summaries = await store.list_checkpoints("crash-1", limit=100)
        assert sorted(s.seq for s in summaries) == list(range(1, cp.seq + 1))
    finally:
        await store.close()
