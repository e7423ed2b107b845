"""A worker using SidecarStore is SIGKILLed in its 4th node; a new process resumes it.

Three real processes: a sidecar (``flowpoint serve`` on a real PostgreSQL) and two worker
subprocesses running a 5-node linear flow with ``SidecarStore``. The first worker kills
itself with SIGKILL inside node 4 (after it started, before it returned). The test then
reads, through the sidecar, what the dead worker left behind, and a second worker process
resumes the run. Every node execution is appended to a shared log (O_APPEND), so the
test counts executions across both processes: nodes 1-3 ran exactly once.

(``tests/e2e/test_demo.py`` runs the ``flowpoint demo`` command through the same story
and checks its printed report; this test checks executions, stored state and outputs.)
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from checkpoint import CheckpointStatus, NodeStatus
from checkpoint.stores import SidecarStore
from tests.chaos.worker_scripts import execlog
from tests.chaos.worker_scripts.graphs import GRAPHS, expected_values

ROOT = Path(__file__).resolve().parents[2]
NODES = [node_id for node_id, _ in GRAPHS["linear5"]]  # n01 -> n02 -> n03 -> n04 -> n05
EXPECTED = expected_values(GRAPHS["linear5"])


async def run_worker(*args: str) -> tuple[int, int, str, str]:
    """Run one worker process to its end: (pid, exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.worker_scripts.chaos_worker",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:  # never leave a worker behind, even on failure
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.pid, proc.returncode, out.decode(), err.decode()


def executions(log: Path) -> dict[str, list[tuple[str, int]]]:
    """node -> [("start" | "end", pid), ...] in log order."""
    found: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for line in execlog.read(log):
        if line.kind in ("start", "end"):
            found[line.fields[0]].append((line.kind, line.pid))
    return dict(found)


async def test_sigkill_in_node_4_then_a_new_process_resumes_from_the_sidecar(
    sidecar_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    common = [
        "--sidecar",
        sidecar_url,
        "--run-id",
        "e2e-crash-1",
        "--log",
        str(log),
        "--flow",
        "linear5",
        "--durability",
        "sync",
    ]

    pid_a, code_a, _, err_a = await run_worker(*common, "--mode", "run", "--crash-at", "n04")
    assert code_a == -signal.SIGKILL, err_a[-3000:]
    runs = executions(log)
    assert runs == {
        "n01": [("start", pid_a), ("end", pid_a)],
        "n02": [("start", pid_a), ("end", pid_a)],
        "n03": [("start", pid_a), ("end", pid_a)],
        "n04": [("start", pid_a)],  # killed inside the node
    }

    # What the dead worker left in the sidecar: nodes 1-3 done, nothing about node 4.
    store = SidecarStore(sidecar_url)
    try:
        cp = await store.get("e2e-crash-1")
        assert cp is not None and cp.status is CheckpointStatus.ACTIVE
        assert cp.completed_node_ids() == ["n01", "n02", "n03"]
        assert "n04" not in cp.node_states
        left_seq = cp.seq

        pid_b, code_b, out_b, err_b = await run_worker(*common, "--mode", "resume")
        assert code_b == 0, err_b[-3000:]
        result: dict[str, Any] = json.loads(out_b.strip().splitlines()[-1])
        assert result["status"] == "completed"
        assert result["skipped"] == ["n01", "n02", "n03"]
        assert result["executed"] == ["n04", "n05"]
        assert result["output"] == {"n05": {"node": "n05", "pid": pid_b, "value": EXPECTED["n05"]}}

        # Nodes 1-3 ran once, in the first process; node 4 again (it never finished); node 5 once.
        runs = executions(log)
        for node_id in ("n01", "n02", "n03"):
            assert runs[node_id] == [("start", pid_a), ("end", pid_a)], node_id
        assert runs["n04"] == [("start", pid_a), ("start", pid_b), ("end", pid_b)]
        assert runs["n05"] == [("start", pid_b), ("end", pid_b)]

        # The stored run: completed, outputs from the executions that finished, no seq gap.
        final = await store.get("e2e-crash-1")
        assert final is not None and final.status is CheckpointStatus.COMPLETED
        assert final.seq == result["seq"] > left_seq
        for node_id in NODES:
            state = final.node_states[node_id]
            assert state.status is NodeStatus.SUCCEEDED
            assert state.output["value"] == EXPECTED[node_id]
            assert state.output["pid"] == (pid_a if node_id in ("n01", "n02", "n03") else pid_b)
        summaries = await store.list_checkpoints("e2e-crash-1", limit=100)
        assert sorted(s.seq for s in summaries) == list(range(1, final.seq + 1))
        info = await store.get_run("e2e-crash-1")
        assert info is not None and info.claim is None  # the resumer released its claim
        assert info.epoch == 1
    finally:
        await store.close()
