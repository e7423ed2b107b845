"""The examples run as scripts and through `flowpoint run` / `flowpoint resume` (new processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.node_scripts.runner import ROOT

EXAMPLES = ROOT / "examples"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)},
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("research_agent", "waiting for input at research/tools/request_approval#3"),
        ("map_documents", "iterations saved before the failure"),
        ("nested_approval", "waiting for input at vet/triage/tools/approve_refund#2"),
    ],
)
def test_each_example_script_runs_to_completion(name: str, expected: str, tmp_path: Path) -> None:
    done = run([sys.executable, str(EXAMPLES / f"{name}.py"), "--store", "ck"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert expected in done.stdout
    assert ": completed" in done.stdout
    assert (tmp_path / "ck").is_dir()


def test_the_nested_yaml_example_resumes_at_depth_in_a_new_cli_process(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "flowpoint_cli"]
    flow_file = str(EXAMPLES / "nested_approval.yaml")
    first = run([*cli, "run", flow_file, "--run-id", "t1", "--json"], tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    paused = json.loads(first.stdout.strip().splitlines()[-1])
    assert paused["status"] == "pending_input"
    [pending] = paused["pending_inputs"]
    assert pending["path"] == "vet/triage/tools/approve_refund#2"

    answer = f"{pending['path']}=" + json.dumps({"approved": True})
    second = run([*cli, "resume", "t1", "--input", answer, "--json"], tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    done = json.loads(second.stdout.strip().splitlines()[-1])
    assert done["status"] == "completed"
    assert done["skipped"] == ["intake"]
    assert done["executed"] == ["vet", "notify"]
    assert done["output"] == {
        "notify": "Dear customer: Refund of 80.0 EUR for order A-1001: handled."
    }
