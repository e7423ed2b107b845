"""NodeContext: paths, children, interrupts and answers, save hooks, redaction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from checkpoint import ConfigError
from flows import Interrupt, NodeContext
from flows.context import join_path, node_id_of_path
from flows.redact import REDACTED, Redactor


def test_paths_join_with_slash_except_for_bracket_names() -> None:
    assert join_path("summaries", "[7]") == "summaries[7]"
    assert join_path("triage", "tools") == "triage/tools"
    assert join_path("", "a") == "a"
    ctx = NodeContext.root(run_id="r", node_id="summaries")
    child = ctx.child("[7]").child("check").child("[0]")
    assert child.path == "summaries[7]/check[0]"
    assert node_id_of_path(child.path) == "summaries"
    assert node_id_of_path("triage/tools/approve#3") == "triage"
    assert ctx.state == {"children": {"[7]": {"children": {"check": {"children": {"[0]": {}}}}}}}


def test_child_state_is_shared_between_calls_and_nested_in_parent() -> None:
    ctx = NodeContext.root(run_id="r", node_id="n")
    ctx.child("a").state["x"] = 1
    assert ctx.child("a").state == {"x": 1}
    assert ctx.state["children"]["a"] is ctx.child("a").state
    with pytest.raises(ConfigError, match="without '/'"):
        ctx.child("a/b")
    with pytest.raises(ConfigError, match="non-empty"):
        ctx.child("")
    ctx.state["children"] = "oops"
    with pytest.raises(ConfigError, match="reserved by the runtime"):
        ctx.child("a")


def test_interrupt_raises_then_returns_the_recorded_answer() -> None:
    ctx = NodeContext.root(run_id="r", node_id="review")
    with pytest.raises(Interrupt) as caught:
        ctx.interrupt("Approve?", schema={"type": "boolean"}, metadata={"k": 1})
    pending = caught.value.pending_input
    assert (pending.path, pending.prompt, pending.schema_, pending.metadata) == (
        "review",
        "Approve?",
        {"type": "boolean"},
        {"k": 1},
    )
    assert not isinstance(caught.value, Exception)  # `except Exception` cannot swallow it
    ctx.state["answers"] = {"review": True}
    assert ctx.interrupt("Approve?") is True


def test_keyed_interrupts_have_their_own_paths() -> None:
    ctx = NodeContext.root(run_id="r", node_id="n", answers={"n/first": 1})
    assert ctx.interrupt("first?", key="first") == 1
    assert ctx.state["answers"] == {"n/first": 1}  # recorded where it was asked
    with pytest.raises(Interrupt) as caught:
        ctx.interrupt("second?", key="second")
    assert caught.value.pending_input.path == "n/second"


def test_answers_delivered_at_the_node_root_reach_the_child_that_asked() -> None:
    ctx = NodeContext.root(run_id="r", node_id="m")
    ctx.state["answers"] = {"m[2]/ok": "yes"}
    child = ctx.child("[2]")
    assert child.interrupt("ok?", key="ok") == "yes"
    assert child.state["answers"] == {"m[2]/ok": "yes"}
    with pytest.raises(Interrupt) as caught:
        ctx.child("[3]").interrupt("ok?", key="ok")
    assert caught.value.pending_input.path == "m[3]/ok"
    assert ctx.answers_under("m[2]") == {"m[2]/ok": "yes"}
    assert ctx.answers_under() == {"m[2]/ok": "yes"}
    assert ctx.child("[3]").answers_under() == {}


async def test_save_state_replaces_contents_and_calls_the_hook() -> None:
    saved: list[dict[str, Any]] = []
    state: dict[str, Any] = {"old": 1}

    async def hook() -> None:
        saved.append(dict(state))

    ctx = NodeContext.root(run_id="r", node_id="n", state=state, save_hook=hook)
    await ctx.child("c").save_state({"i": 3})
    assert state == {"old": 1, "children": {"c": {"i": 3}}}
    assert saved == [state]
    await ctx.save_state({"new": 2})
    assert ctx.state is state and state == {"new": 2}
    with pytest.raises(ConfigError, match="takes a dict"):
        await ctx.save_state([1])  # type: ignore[arg-type]
    # No hook (checkpointing off): only the in-memory state changes.
    quiet = NodeContext.root(run_id="r", node_id="n")
    await quiet.save_state({"x": 1})
    assert quiet.state == {"x": 1}


async def test_save_state_sync_hops_to_the_loop_from_a_thread() -> None:
    calls: list[str] = []

    async def hook() -> None:
        calls.append("saved")

    ctx = NodeContext.root(run_id="r", node_id="n", save_hook=hook)
    await asyncio.to_thread(ctx.save_state_sync, {"i": 1})
    assert calls == ["saved"] and ctx.state == {"i": 1}
    with pytest.raises(RuntimeError, match="would block the event loop"):
        ctx.save_state_sync()


def test_redactor_masks_keys_case_insensitively_at_any_depth_and_copies_only_on_change() -> None:
    redact = Redactor(["Password", "api_key"])
    value: dict[str, Any] = {
        "user": "ann",
        "nested": [{"PASSWORD": "x", "keep": (1, {"Api_Key": "k"})}],
    }
    masked = redact(value)
    assert masked == {
        "user": "ann",
        "nested": [{"PASSWORD": REDACTED, "keep": (1, {"Api_Key": REDACTED})}],
    }
    assert value["nested"][0]["PASSWORD"] == "x"  # the live value is untouched
    clean = {"a": [1, {"b": 2}], 3: "x"}
    assert redact(clean) is clean
    assert Redactor([])(value) is value
