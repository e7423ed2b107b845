"""`flowpoint run FLOW.yaml` and `flowpoint resume RUN_ID` (in-process, through Typer's runner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flowpoint_cli import _register, app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

_register()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWPOINT_STORE", raising=False)
    return tmp_path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_run_pauses_then_resume_answers_by_path(workdir: Path) -> None:
    first = invoke("run", str(EXAMPLES / "research_agent.yaml"), "--run-id", "r1", "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout.strip().splitlines()[-1])
    assert doc["status"] == "pending_input"
    assert doc["executed"] == ["research"]
    assert [p["path"] for p in doc["pending_inputs"]] == ["research/tools/request_approval#3"]
    assert doc["pending_inputs"][0]["prompt"] == "Approve: publish the summary?"
    # The file's store (file:.flowpoint/examples) is relative to the working directory.
    assert (workdir / ".flowpoint" / "examples").is_dir()

    bad = invoke("resume", "r1", "--input", 'research/tools/request_approval#3={"approved": 1}')
    assert bad.exit_code == 1
    assert "does not match its schema" in bad.stderr

    done = invoke(
        "resume",
        "r1",
        "--input",
        'research/tools/request_approval#3={"approved": true}',
        "--json",
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["executed"] == ["research", "report"]
    assert result["output"]["report"]["loops"] == 4


def test_the_human_output_lists_status_nodes_and_pending_inputs(workdir: Path) -> None:
    shown = invoke("run", str(EXAMPLES / "nested_approval.yaml"), "--run-id", "n1")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "run n1 of flow support-ticket: pending_input" in out
    assert "executed: intake, vet" in out
    assert "vet/triage/tools/approve_refund#2" in out
    assert "Approve a refund of" in out  # the prompt column may fold long prompts
    assert "flowpoint resume n1 --input 'vet/triage/tools/approve_refund#2=<JSON answer>'" in out
    resumed = invoke(
        "resume", "n1", "--input", 'vet/triage/tools/approve_refund#2={"approved": false}'
    )
    assert resumed.exit_code == 0, resumed.output
    assert "completed" in resumed.stdout
    assert "skipped (restored): intake" in resumed.stdout


def test_input_store_and_flow_options(workdir: Path) -> None:
    flow_file = workdir / "docs.yaml"
    # A copy next to its own module (named apart from the example, which may be imported).
    text = (EXAMPLES / "map_documents.yaml").read_text(encoding="utf-8")
    flow_file.write_text(text.replace("map_documents:", "cli_docs_steps:"), encoding="utf-8")
    shutil.copy(EXAMPLES / "map_documents.py", workdir / "cli_docs_steps.py")
    store = f"sqlite:{workdir / 'runs.db'}"
    ran = invoke(
        "run",
        str(flow_file),
        "--input",
        '{"docs": ["A b. C.", "D."]}',
        "--store",
        store,
        "--run-id",
        "d1",
        "--json",
    )
    assert ran.exit_code == 0, ran.output
    doc = json.loads(ran.stdout.strip().splitlines()[-1])
    assert doc["output"]["digest"] == {"documents": 2, "lines": ["0: A b", "1: D"], "words": 4}
    assert (workdir / "runs.db").exists()
    # The registry remembers the file and the store: resume finds both.
    again = invoke("resume", "d1", "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == ["summaries", "digest"]
    explicit = invoke("resume", "d1", "--flow", str(flow_file), "--store", store, "--json")
    assert explicit.exit_code == 0, explicit.output


def test_bad_arguments_and_files_are_clear_errors(workdir: Path) -> None:
    flow_file = str(EXAMPLES / "research_agent.yaml")
    not_json = invoke("run", flow_file, "--input", "{question: 1}")
    assert not_json.exit_code == 2
    assert "--input is not valid JSON" in not_json.stderr
    no_pair = invoke("resume", "x", "--flow", flow_file, "--input", "review")
    assert no_pair.exit_code == 2
    assert "must look like PATH=JSON" in no_pair.stderr
    unknown = invoke("resume", "never-ran")
    assert unknown.exit_code == 1
    assert "pass --flow FLOW.yaml" in unknown.stderr
    missing_run = invoke("resume", "never-ran", "--flow", flow_file)
    assert missing_run.exit_code == 1
    assert "never-ran" in missing_run.stderr
    broken = workdir / "broken.yaml"
    broken.write_text("id: b\nnodes:\n  - id: x\n    type: function\n    fn: 'nope:fn'\n")
    bad_file = invoke("run", str(broken))
    assert bad_file.exit_code == 1
    assert f"{broken}:5: nodes[0].fn: 'nope:fn' cannot be imported" in bad_file.stderr


def test_a_failed_node_exits_1_with_the_resume_hint(workdir: Path) -> None:
    (workdir / "cli_failing_steps.py").write_text(
        "def boom(inputs):\n    raise RuntimeError('backend down')\n", encoding="utf-8"
    )
    flow_file = workdir / "fails.yaml"
    flow_file.write_text(
        "id: fails\ncheckpoint: {enabled: true, store: 'file:ck'}\n"
        "nodes:\n  - {id: boom, type: function, fn: 'cli_failing_steps:boom'}\n"
    )
    failed = invoke("run", str(flow_file), "--run-id", "f1")
    assert failed.exit_code == 1
    assert "backend down" in failed.stderr
    assert "resume with flow.resume('f1')" in failed.stderr
