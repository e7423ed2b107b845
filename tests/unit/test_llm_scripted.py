"""ScriptedChat: answers indexed by assistant count, normalization, counters, exhaustion."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from checkpoint.errors import ConfigError, FlowpointError
from flows.llm import ChatModel, LLMError, ScriptedChat, ScriptExhaustedError

USER = {"role": "user", "content": "Can I get a refund for order 42?"}


def _assistant(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "usage"}


async def test_answers_are_indexed_by_the_number_of_assistant_messages() -> None:
    model = ScriptedChat(
        [
            {"tool_calls": [{"name": "search", "arguments": {"q": "refund policy"}}]},
            {"content": "Refund approved."},
        ]
    )
    first = await model.chat([USER], [])
    assert first["tool_calls"][0]["name"] == "search"
    conversation = [
        USER,
        _assistant(first),
        {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "30 days"},
    ]
    second = await model.chat(conversation, [])
    assert second["content"] == "Refund approved."
    assert second["tool_calls"] == []
    assert model.calls == 2


async def test_a_resumed_conversation_gets_the_next_answer_from_a_fresh_instance() -> None:
    script = [{"content": "one"}, {"content": "two"}, {"content": "three"}]
    restored = [
        USER,
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "more"},
    ]
    model = ScriptedChat(script)
    answer = await model.chat(restored, [])
    assert answer["content"] == "three"
    assert model.calls == 1
    # System and tool messages do not count, only assistant ones.
    only_system = [{"role": "system", "content": "be brief"}, USER]
    assert (await model.chat(only_system, []))["content"] == "one"
    assert model.calls == 2


async def test_calls_count_per_instance() -> None:
    script = [{"content": "a"}]
    one, two = ScriptedChat(script), ScriptedChat(script)
    await one.chat([USER], [])
    await one.chat([USER], [])
    await two.chat([USER], [])
    assert (one.calls, two.calls) == (2, 1)


async def test_answers_are_normalized_to_the_full_shape() -> None:
    model = ScriptedChat(
        [
            {
                "tool_calls": [
                    {"name": "search", "arguments": {"q": "a"}},
                    {"id": "mine", "name": "fetch"},
                    {"name": "lookup", "arguments": '{"id": 7}'},
                ]
            },
            {},
            "plain text shorthand",
        ]
    )
    first = await model.chat([USER], [])
    assert set(first) == {"role", "content", "tool_calls", "usage"}
    assert first["role"] == "assistant"
    assert first["content"] is None
    assert first["tool_calls"] == [
        {"id": "call_0_0", "name": "search", "arguments": {"q": "a"}},
        {"id": "mine", "name": "fetch", "arguments": {}},
        {"id": "call_0_2", "name": "lookup", "arguments": {"id": 7}},
    ]
    usage = first["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    second = await model.chat([USER, _assistant(first)], [])
    assert second == {
        "role": "assistant",
        "content": None,
        "tool_calls": [],
        "usage": {**second["usage"]},
    }
    assert second["usage"]["completion_tokens"] == 0

    third = await model.chat([USER, _assistant(first), _assistant(second)], [])
    assert third["content"] == "plain text shorthand"


async def test_openai_wire_shaped_tool_calls_are_accepted() -> None:
    model = ScriptedChat(
        [
            {
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q": "x"}'},
                    }
                ]
            }
        ]
    )
    answer = await model.chat([USER], [])
    assert answer["tool_calls"] == [{"id": "call_abc", "name": "search", "arguments": {"q": "x"}}]


async def test_usage_estimates_are_deterministic_and_grow_with_the_prompt() -> None:
    script = [{"content": "Refund approved, the money is on its way."}]
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    a = await ScriptedChat(script).chat([USER], tools)
    b = await ScriptedChat(script).chat([USER], tools)
    assert a == b
    longer = [USER, {"role": "user", "content": "x" * 400}]
    c = await ScriptedChat(script).chat(longer, tools)
    assert c["usage"]["prompt_tokens"] >= a["usage"]["prompt_tokens"] + 100
    no_tools = await ScriptedChat(script).chat([USER], [])
    assert no_tools["usage"]["prompt_tokens"] < a["usage"]["prompt_tokens"]
    assert a["usage"]["completion_tokens"] == (len(script[0]["content"]) + 3) // 4


async def test_given_usage_is_kept_and_completed() -> None:
    model = ScriptedChat([{"content": "x", "usage": {"prompt_tokens": 11, "completion_tokens": 2}}])
    answer = await model.chat([USER], [])
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}


async def test_answers_are_copies_that_callers_may_mutate() -> None:
    script: list[dict[str, Any]] = [{"tool_calls": [{"name": "s", "arguments": {"q": ["a"]}}]}]
    original = copy.deepcopy(script)
    model = ScriptedChat(script)
    script[0]["tool_calls"][0]["arguments"]["q"].append("edited after construction")
    answer = await model.chat([USER], [])
    assert answer["tool_calls"][0]["arguments"] == {"q": ["a"]}
    answer["tool_calls"][0]["arguments"]["q"].append("mutated")
    again = await model.chat([USER], [])
    assert again["tool_calls"] == [{"id": "call_0_0", "name": "s", "arguments": {"q": ["a"]}}]
    assert original[0]["tool_calls"][0]["arguments"] == {"q": ["a"]}


async def test_past_the_end_of_the_script_is_a_clear_error() -> None:
    model = ScriptedChat([{"content": "only answer"}])
    conversation = [USER, {"role": "assistant", "content": "only answer"}]
    with pytest.raises(ScriptExhaustedError, match=r"has 1 answers.*1 assistant messages") as info:
        await model.chat(conversation, [])
    assert isinstance(info.value, LLMError)
    assert isinstance(info.value, FlowpointError)
    with pytest.raises(ScriptExhaustedError, match="has 0 answers"):
        await ScriptedChat([]).chat([USER], [])


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([42], r"script\[0\]: an answer must be a dict"),
        ([{"contents": "typo"}], r"unknown keys \['contents'\]"),
        ([{"role": "user", "content": "x"}], "role must be 'assistant'"),
        ([{"content": 5}], "content must be a string"),
        ([{"content": "ok"}, {"tool_calls": {"name": "x"}}], r"script\[1\]: tool_calls must be"),
        ([{"tool_calls": [{"arguments": {}}]}], r"tool_calls\[0\]: 'name' must be"),
        ([{"tool_calls": [{"name": "s", "arguments": "{not json"}]}], "not valid JSON"),
        ([{"tool_calls": [{"name": "s", "arguments": "[1, 2]"}]}], "must be a JSON object"),
        ([{"tool_calls": [{"name": "s", "id": 3}]}], "'id' must be a non-empty string"),
        ([{"usage": {"tokens": 1}}], "usage must be a dict"),
        ([{"usage": {"prompt_tokens": "1"}}], "usage counts must be integers"),
    ],
)
def test_bad_scripts_are_refused_at_construction(script: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScriptedChat(script)


def test_a_single_dict_is_not_a_script() -> None:
    with pytest.raises(ConfigError, match="list of answers"):
        ScriptedChat({"content": "x"})  # type: ignore[arg-type]


async def test_messages_must_be_a_list() -> None:
    with pytest.raises(LLMError, match="messages must be a list"):
        await ScriptedChat([{"content": "x"}]).chat("hello", [])  # type: ignore[arg-type]


def test_scripted_chat_satisfies_the_protocol() -> None:
    assert isinstance(ScriptedChat([]), ChatModel)
    assert not isinstance(object(), ChatModel)
