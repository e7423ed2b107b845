"""Resume API: human input, validated against the pending input's schema, consumed once."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp

from checkpoint import PendingInput
from checkpoint.stores.sidecar import SidecarStore
from tests.conformance.builders import checkpoint
from tests.fixtures.sidecar_store import RunningSidecar

APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
    "required": ["approved"],
    "additionalProperties": False,
}


async def _pending(sidecar: RunningSidecar, run_id: str = "run-1") -> None:
    cp = checkpoint(run_id, 0, pending=["review", "triage/tools/approve#3"])
    cp.pending_inputs[0] = PendingInput(path="review", prompt="Approve?", schema=APPROVAL)
    await sidecar.store.put(cp)


async def test_an_answer_posted_twice_is_accepted_once_and_consumed_once(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession, sidecar_store: SidecarStore
) -> None:
    await _pending(sidecar_app)
    body = {"path": "review", "answer": {"approved": True}}
    async with http.post("v1/runs/run-1/inputs", json=body) as resp:
        assert resp.status == 202
        accepted = await resp.json()
    assert (accepted["run_id"], accepted["path"]) == ("run-1", "review")
    assert dt.datetime.fromisoformat(accepted["submitted_at"]).utcoffset() == dt.timedelta(0)

    async with http.post(
        "v1/runs/run-1/inputs", json={"path": "review", "answer": {"approved": False}}
    ) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"] == "input_conflict"

    async with http.get("v1/runs/run-1/inputs") as resp:
        [item] = (await resp.json())["inputs"]
    assert (item["path"], item["answer"], item["consumed"]) == ("review", {"approved": True}, False)

    # consumed exactly once, even by concurrent resumers
    async def consume() -> list[str]:
        async with http.post("v1/runs/run-1/inputs/consume", json={"paths": ["review"]}) as r:
            assert r.status == 200
            consumed: list[str] = (await r.json())["consumed"]
            return consumed

    results = await asyncio.gather(*(consume() for _ in range(5)))
    assert sorted(results) == [[]] * 4 + [["review"]]
    async with http.get("v1/runs/run-1/inputs") as resp:
        assert (await resp.json())["inputs"] == []
    async with http.get("v1/runs/run-1/inputs", params={"include_consumed": "true"}) as resp:
        [item] = (await resp.json())["inputs"]
    assert item["consumed"] is True
    # the store behind the API agrees
    [record] = await sidecar_store.list_inputs("run-1", include_consumed=True)
    assert (record.path, record.answer, record.consumed) == ("review", {"approved": True}, True)


async def test_answers_are_validated_against_the_pending_inputs_schema(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await _pending(sidecar_app)
    for answer, where in (
        ({"approved": "yes"}, "approved"),
        ({}, "approved"),
        ({"approved": True, "extra": 1}, "extra"),
        ("approved", "object"),
    ):
        async with http.post(
            "v1/runs/run-1/inputs", json={"path": "review", "answer": answer}
        ) as resp:
            assert resp.status == 422, answer
            doc = await resp.json()
        assert doc["error"] == "input_validation"
        assert where in doc["message"], doc["message"]
    assert await sidecar_app.store.list_inputs("run-1", include_consumed=True) == []

    # an input without a schema takes any JSON, codec tags included
    tagged = {"$t": "bytes", "v": "AAE="}
    async with http.post(
        "v1/runs/run-1/inputs", json={"path": "triage/tools/approve#3", "answer": tagged}
    ) as resp:
        assert resp.status == 202, await resp.text()
    [record] = await sidecar_app.store.list_inputs("run-1")
    assert record.answer == b"\x00\x01"


async def test_only_pending_paths_of_the_latest_checkpoint_take_answers(
    sidecar_app: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    await _pending(sidecar_app)
    async with http.post("v1/runs/run-1/inputs", json={"path": "other", "answer": 1}) as resp:
        assert resp.status == 422
        doc = await resp.json()
    assert doc["error"] == "unknown_input_path"
    assert "review" in doc["message"]
    # once the run moved on, the old question is closed
    await sidecar_app.store.put(checkpoint("run-1", 1))
    async with http.post(
        "v1/runs/run-1/inputs", json={"path": "review", "answer": {"approved": True}}
    ) as resp:
        assert resp.status == 422
    async with http.post("v1/runs/nope/inputs", json={"path": "review", "answer": 1}) as resp:
        assert resp.status == 404
    for body in ({"path": "", "answer": 1}, {"path": "a\nb", "answer": 1}, {"answer": 1}):
        async with http.post("v1/runs/run-1/inputs", json=body) as resp:
            assert resp.status == 422, body
            assert (await resp.json())["error"] == "invalid_request"
    async with http.post(
        "v1/runs/run-1/inputs", data=b"path=review", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 415
