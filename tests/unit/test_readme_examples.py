"""The Python examples in README.md run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_use_it_example_runs_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(_python_blocks()[0], namespace)
    result = namespace["result"]
    assert result.status.value == "completed"
    assert result.output == {"clean": [2, 4, 6]}
    assert result.executed == []  # the resume ran nothing: the run was already complete


def test_the_agents_example_builds_its_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "not-used")
    namespace: dict[str, Any] = {}
    exec(_python_blocks()[1], namespace)
    assert namespace["triage"].id == "triage"
    assert list(namespace["review"].depends) == ["triage", "summaries"]
    assert namespace["approve_refund"].__name__ == "approve_refund"
