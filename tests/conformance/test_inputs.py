"""Conformance: human input submitted to a run and consumed exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from checkpoint import InputConflictError, InvalidIdError, RunNotFoundError
from tests.conformance.builders import checkpoint

ODD_PATHS = ["triage/tools/approve#3", "map[7]/review", "../../escape", "a\\b c?*"]


async def _pending_run(store: Any, *paths: str) -> None:
    await store.put(checkpoint("run-1", 0, pending=list(paths) or ["review"]))


async def test_submit_input_returns_the_record(store: Any) -> None:
    await _pending_run(store, "review")
    answer = {"approved": True, "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "raw": b"\x00"}
    record = await store.submit_input("run-1", "review", answer)
    assert (record.run_id, record.path, record.answer, record.consumed) == (
        "run-1",
        "review",
        answer,
        False,
    )
    assert record.submitted_at.utcoffset() == dt.timedelta(0)
    [listed] = await store.list_inputs("run-1")
    assert (listed.path, listed.answer, listed.consumed) == ("review", answer, False)


async def test_second_submit_for_the_same_path_conflicts(store: Any) -> None:
    await _pending_run(store, "review")
    await store.submit_input("run-1", "review", {"approved": True})
    with pytest.raises(InputConflictError):
        await store.submit_input("run-1", "review", {"approved": False})
    [listed] = await store.list_inputs("run-1")
    assert listed.answer == {"approved": True}


async def test_submit_to_unknown_run_is_run_not_found(store: Any) -> None:
    with pytest.raises(RunNotFoundError):
        await store.submit_input("no-such-run", "review", {"approved": True})


async def test_list_inputs_shows_unconsumed_unless_asked(store: Any) -> None:
    await _pending_run(store, "a", "b", "c")
    for path in ("a", "b", "c"):
        await store.submit_input("run-1", path, path.upper())
    assert sorted(await store.consume_inputs("run-1", ["b"])) == ["b"]
    pending = await store.list_inputs("run-1")
    assert sorted((r.path, r.answer, r.consumed) for r in pending) == [
        ("a", "A", False),
        ("c", "C", False),
    ]
    everything = await store.list_inputs("run-1", include_consumed=True)
    assert sorted((r.path, r.consumed) for r in everything) == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]


async def test_consume_inputs_consumes_once(store: Any) -> None:
    await _pending_run(store, "a", "b")
    await store.submit_input("run-1", "a", 1)
    await store.submit_input("run-1", "b", 2)
    assert sorted(await store.consume_inputs("run-1", ["a", "b", "never-submitted"])) == ["a", "b"]
    assert await store.consume_inputs("run-1", ["a"]) == []
    assert await store.consume_inputs("run-1", ["a", "b"]) == []
    assert await store.list_inputs("run-1") == []


async def test_concurrent_consumers_of_one_path_have_exactly_one_winner(store: Any) -> None:
    await _pending_run(store, "review")
    await store.submit_input("run-1", "review", {"approved": True})
    results = await asyncio.gather(*(store.consume_inputs("run-1", ["review"]) for _ in range(10)))
    assert sorted(results) == [[]] * 9 + [["review"]]


async def test_input_paths_with_special_characters_are_stored_exactly(store: Any) -> None:
    await _pending_run(store, *ODD_PATHS)
    for i, path in enumerate(ODD_PATHS):
        await store.submit_input("run-1", path, {"i": i})
    listed = await store.list_inputs("run-1")
    assert sorted((r.path, r.answer["i"]) for r in listed) == sorted(
        (p, i) for i, p in enumerate(ODD_PATHS)
    )
    with pytest.raises(InputConflictError):
        await store.submit_input("run-1", "map[7]/review", {"i": 99})
    assert await store.consume_inputs("run-1", ["map[7]/review"]) == ["map[7]/review"]
    left = sorted(r.path for r in await store.list_inputs("run-1"))
    assert left == sorted(p for p in ODD_PATHS if p != "map[7]/review")


@pytest.mark.parametrize("bad", ["", "line\nbreak", "nul\x00", "x" * 5000], ids=repr)
async def test_malformed_input_paths_are_rejected(store: Any, bad: str) -> None:
    await _pending_run(store, "review")
    with pytest.raises(InvalidIdError):
        await store.submit_input("run-1", bad, True)
    assert await store.list_inputs("run-1", include_consumed=True) == []
