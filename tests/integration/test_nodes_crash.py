"""SIGKILL inside an agent loop and inside a map; the resumed process repeats no finished work."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from checkpoint.stores.url import store_from_url
from tests.integration.node_scripts.common import lines
from tests.integration.node_scripts.runner import result_of, run_script


def store_url(kind: str, tmp_path: Path) -> str:
    return f"file:{tmp_path / 'ckpts'}" if kind == "file" else f"sqlite:{tmp_path / 'ckpts.db'}"


@pytest.mark.parametrize("kind", ["file", "sqlite"])
async def test_an_agent_killed_after_loop_5_of_15_resumes_with_exactly_10_more_model_calls(
    kind: str, tmp_path: Path
) -> None:
    url = store_url(kind, tmp_path)
    log = tmp_path / "calls.log"

    crashed = run_script("agent_loops", "run", url, "a1", str(log))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # Loops 1-5 completed; the 6th model call was being made when the process died.
    assert lines(log) == [
        *(line for i in range(5) for line in (f"model {i}", f"tool k{i}")),
        "model 5",
    ]
    store = store_from_url(url)
    try:
        cp = await store.get("a1")
        assert cp is not None
        state = cp.node_states["agent"].internal_state
        assert state["loop"] == 5 and state["current"] is None
        assert len(state["messages"]) == 1 + 5 * 2  # the prompt, then a reply and a result per loop
    finally:
        await store.close()

    resumed = result_of(run_script("agent_loops", "resume", url, "a1", str(log)))
    assert resumed["status"] == "completed"
    assert resumed["calls"] == 10
    after = lines(log)[11:]
    assert [line for line in after if line.startswith("model")] == [
        f"model {i}" for i in range(5, 15)
    ]
    # No tool call ran twice across the two processes.
    assert Counter(line for line in lines(log) if line.startswith("tool")) == Counter(
        f"tool k{i}" for i in range(14)
    )

    reference_log = tmp_path / "reference.log"
    reference = result_of(
        run_script("agent_loops", "reference", url, "a-reference", str(reference_log))
    )
    assert reference["calls"] == 15
    assert resumed["messages"] == reference["messages"]
    assert resumed["loops"] == reference["loops"] == 15


async def test_a_map_killed_mid_way_never_runs_a_saved_iteration_twice(tmp_path: Path) -> None:
    url = store_url("file", tmp_path)
    log = tmp_path / "iterations.log"

    crashed = run_script("map_crash", "run", url, "m1", str(log))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    before = lines(log)
    assert "start 7" in before
    assert sum(1 for line in before if line.startswith("done")) >= 5

    store = store_from_url(url)
    try:
        cp = await store.get("m1")
        assert cp is not None
        saved = set(cp.node_states["squares"].internal_state["completed"])
    finally:
        await store.close()
    assert len(saved) >= 1
    assert 7 not in saved

    resumed = result_of(run_script("map_crash", "resume", url, "m1", str(log)))
    assert resumed["output"] == {"squares": [i * i for i in range(12)]}
    started_again = [int(line.split()[1]) for line in lines(log)[len(before) :] if "start" in line]
    assert sorted(started_again) == sorted(set(range(12)) - saved)
    starts = Counter(line for line in lines(log) if line.startswith("start"))
    assert all(starts[f"start {i}"] == 1 for i in saved)
