"""Human input across processes: agent -> tool -> human, answered here or through the sidecar."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.integration.node_scripts.common import lines
from tests.integration.node_scripts.runner import background, result_of, run_script

PATH = "triage/tools/approve_refund#2"


def model_calls(log: Path) -> list[str]:
    return [line for line in lines(log) if line.startswith("model")]


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_agent_tool_human_pauses_and_a_new_process_resumes_with_the_answer(
    kind: str, tmp_path: Path
) -> None:
    url = f"file:{tmp_path / 'ck'}" if kind == "file" else f"sqlite:{tmp_path / 'ck.db'}"
    log = tmp_path / "events.log"
    first = result_of(run_script("refund_agent", "run", url, "h1", str(log)))
    assert first["status"] == "pending_input"
    assert first["pending"] == [PATH]
    assert first["calls"] == 2
    assert lines(log) == ["model 0", "lookup A-1", "model 1", "approve asked"]

    answer = json.dumps({PATH: {"approved": True}})
    done = result_of(run_script("refund_agent", "resume", url, "h1", str(log), answer))
    assert done["status"] == "completed"
    assert done["output"] == {"notify": "told customer: Refund handled."}
    assert done["calls"] == 1  # only the final answer: no earlier model call is repeated
    assert lines(log)[4:] == [
        "approve asked",
        'approve received {"approved": true}',
        "model 2",
    ]
    assert Counter(model_calls(log)) == Counter({"model 0": 1, "model 1": 1, "model 2": 1})


async def wait_for_pending(session: aiohttp.ClientSession, url: str, run_id: str) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        async with session.get(f"{url}/v1/runs/{run_id}") as response:
            if response.status == 200:
                body = await response.json()
                paths = [p["path"] for p in body.get("pending_inputs", [])]
                if paths:
                    return paths
        assert time.monotonic() < deadline, "the run never showed a pending input"
        await asyncio.sleep(0.05)


async def inputs_of(
    session: aiohttp.ClientSession, url: str, run_id: str
) -> list[dict[str, object]]:
    async with session.get(
        f"{url}/v1/runs/{run_id}/inputs", params={"include_consumed": "true"}
    ) as response:
        assert response.status == 200
        body = await response.json()
        inputs: list[dict[str, object]] = body["inputs"]
        return inputs


async def test_an_answer_posted_to_the_sidecar_by_another_process_is_applied_once(
    sidecar_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    first = result_of(run_script("refund_agent", "run", sidecar_url, "s1", str(log)))
    assert first["pending"] == [PATH]

    posted = result_of(run_script("post_answer", sidecar_url, "s1", PATH, '{"approved": true}'))
    assert posted["status"] == 202, posted
    again = result_of(run_script("post_answer", sidecar_url, "s1", PATH, '{"approved": false}'))
    assert again["status"] == 409, again  # the second answer is refused, not applied

    # A worker resumes with no answers of its own: the stored one is used...
    done = result_of(run_script("refund_agent", "resume", sidecar_url, "s1", str(log), "{}"))
    assert done["status"] == "completed"
    assert done["calls"] == 1
    received = [line for line in lines(log) if line.startswith("approve received")]
    assert received == ['approve received {"approved": true}']
    async with aiohttp.ClientSession() as session:
        records = await inputs_of(session, sidecar_url, "s1")
    assert [(r["path"], r["consumed"]) for r in records] == [(PATH, True)]

    # ...and consumed: another resume finds the run completed and executes nothing.
    count = len(lines(log))
    replay = result_of(run_script("refund_agent", "resume", sidecar_url, "s1", str(log), "{}"))
    assert replay["status"] == "completed" and replay["calls"] == 0
    assert len(lines(log)) == count


async def test_a_waiting_run_gets_the_answer_posted_by_another_process(
    sidecar_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "events.log"
    with background("refund_agent", "wait", sidecar_url, "w1", str(log)) as worker:
        async with aiohttp.ClientSession() as session:
            assert await wait_for_pending(session, sidecar_url, "w1") == [PATH]
            posted = result_of(
                run_script("post_answer", sidecar_url, "w1", PATH, '{"approved": false}')
            )
            assert posted["status"] == 202, posted
            out, err = await asyncio.to_thread(worker.communicate, timeout=120)
            assert worker.returncode == 0, err[-4000:]
            result = json.loads(out.strip().splitlines()[-1])
            records = await inputs_of(session, sidecar_url, "w1")
    assert result["status"] == "completed"
    assert result["calls"] == 3  # one process did the whole run, no call repeated
    assert model_calls(log) == ["model 0", "model 1", "model 2"]
    assert [line for line in lines(log) if line.startswith("approve received")] == [
        'approve received {"approved": false}'
    ]
    assert [(r["path"], r["consumed"]) for r in records] == [(PATH, True)]
