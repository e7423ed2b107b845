"""Conformance: ids that try path traversal or injection are refused by every operation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from checkpoint import FlowCheckpoint, InvalidIdError
from tests.conformance.builders import checkpoint

BAD_IDS = ["../x", "a/b", "x;DROP TABLE", "", "a" * 200, "r\x00"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_run_ids_are_rejected_everywhere(store: Any, bad: str) -> None:
    # a real run, so a store that ignored the id would have something to return
    await store.put(checkpoint("run-1", 0, pending=["review"]))

    with pytest.raises(ValidationError) as caught:
        FlowCheckpoint(flow_id="flow-a", run_id=bad, seq=0)
    assert isinstance(caught.value.errors()[0]["ctx"]["error"], InvalidIdError)

    # a model built without validation must still be refused by the store
    unchecked = checkpoint("run-1", 1).model_copy(update={"run_id": bad})
    with pytest.raises(InvalidIdError):
        await store.put(unchecked)

    calls = {
        "get": lambda: store.get(bad),
        "get seq": lambda: store.get(bad, 0),
        "list_checkpoints": lambda: store.list_checkpoints(bad),
        "get_run": lambda: store.get_run(bad),
        "claim": lambda: store.claim(bad, "worker-a", 30),
        "renew": lambda: store.renew(bad, "worker-a", 1, 30),
        "release": lambda: store.release(bad, "worker-a", 1),
        "submit_input": lambda: store.submit_input(bad, "review", True),
        "list_inputs": lambda: store.list_inputs(bad),
        "consume_inputs": lambda: store.consume_inputs(bad, ["review"]),
        "prune": lambda: store.prune(bad, 1),
        "delete_run": lambda: store.delete_run(bad),
    }
    for name, call in calls.items():
        try:
            await call()
        except InvalidIdError:
            continue
        pytest.fail(f"{name} accepted the run id {bad!r}")

    with pytest.raises(InvalidIdError):
        await store.claim("run-1", bad, 30)  # worker ids are ids too

    # nothing was touched
    run = await store.get_run("run-1")
    assert run is not None and (run.latest_seq, run.epoch, run.claim) == (0, 0, None)


@pytest.mark.parametrize("bad", BAD_IDS[:4], ids=repr)
async def test_bad_tenant_and_flow_ids_are_rejected(store: Any, bad: str) -> None:
    for field in ("tenant_id", "flow_id"):
        unchecked = checkpoint("run-1", 0).model_copy(update={field: bad})
        with pytest.raises(InvalidIdError):
            await store.put(unchecked)
    assert await store.get_run("run-1") is None
