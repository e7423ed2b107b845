"""tool_schema for many signatures, and the OpenAI wire conversions of messages and answers."""

from __future__ import annotations

import enum
import functools
import json
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from pydantic import BaseModel

from flows.llm import (
    ChatResponseError,
    LLMError,
    ToolSchemaError,
    parse_chat_response,
    to_openai_messages,
    to_openai_tools,
    tool_schema,
)


def search(q: str, limit: int = 5, ctx: Any = None) -> str:
    """Search the knowledge base
    for documents.

    Longer explanation that is not part of the description.

    Args:
        q: The query, in plain words
            (continued on a second line).
        limit: How many results to return.
    """
    return q


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    zip_code: str


def _params(schema: dict[str, Any]) -> dict[str, Any]:
    assert schema["type"] == "function"
    params: dict[str, Any] = schema["function"]["parameters"]
    assert params["type"] == "object"
    assert params["additionalProperties"] is False
    return params


def test_name_description_required_and_ctx() -> None:
    schema = tool_schema(search)
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the knowledge base for documents."
    params = _params(schema)
    assert list(params["properties"]) == ["q", "limit"]
    assert params["required"] == ["q"]
    assert params["properties"]["q"] == {
        "type": "string",
        "description": "The query, in plain words (continued on a second line).",
    }
    assert params["properties"]["limit"] == {
        "type": "integer",
        "description": "How many results to return.",
        "default": 5,
    }
    json.dumps(schema)  # the schema must be plain JSON


def test_scalar_container_and_optional_types() -> None:
    def tool(
        text: str,
        count: int,
        ratio: float,
        flag: bool,
        tags: list[str],
        matrix: list[list[float]],
        anything: list,  # type: ignore[type-arg]
        options: dict,  # type: ignore[type-arg]
        scores: dict[str, float],
        maybe: Optional[int] = None,  # noqa: UP045 - both spellings must work
        maybe_too: str | None = None,
        either: Union[int, str] = 0,  # noqa: UP007
        unique: set[int] | None = None,
        pair: tuple[int, str] = (1, "a"),
        many: tuple[int, ...] = (),
        free: Any = None,
    ) -> None:
        """Do things."""

    props = _params(tool_schema(tool))["properties"]
    assert props["text"] == {"type": "string"}
    assert props["count"] == {"type": "integer"}
    assert props["ratio"] == {"type": "number"}
    assert props["flag"] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["matrix"] == {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number"}},
    }
    assert props["anything"] == {"type": "array"}
    assert props["options"] == {"type": "object"}
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["maybe"] == {"type": ["integer", "null"], "default": None}
    assert props["maybe_too"] == {"type": ["string", "null"], "default": None}
    assert props["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}], "default": 0}
    assert props["unique"] == {
        "type": ["array", "null"],
        "items": {"type": "integer"},
        "uniqueItems": True,
        "default": None,
    }
    assert props["pair"] == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2,
        "maxItems": 2,
    }
    assert props["many"] == {"type": "array", "items": {"type": "integer"}}
    assert props["free"] == {"default": None}
    assert _params(tool_schema(tool))["required"] == [
        "text",
        "count",
        "ratio",
        "flag",
        "tags",
        "matrix",
        "anything",
        "options",
        "scores",
    ]


def test_literal_enum_annotated_and_pydantic() -> None:
    def tool(
        mode: Literal["fast", "slow"],
        level: Literal[1, 2, 3],
        color: Color,
        priority: Priority = Priority.LOW,
        note: Annotated[str, "A short note for the reviewer."] = "",
        address: Address | None = None,
        mixed: Literal["a", 1] = "a",
        optional_mode: Literal["x", "y"] | None = None,
    ) -> None:
        pass

    params = _params(tool_schema(tool))
    props = params["properties"]
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert props["level"] == {"type": "integer", "enum": [1, 2, 3]}
    assert props["color"] == {"type": "string", "enum": ["red", "green"]}
    assert props["priority"] == {"type": "integer", "enum": [1, 2], "default": 1}
    assert type(props["priority"]["default"]) is int
    assert props["note"] == {
        "type": "string",
        "description": "A short note for the reviewer.",
        "default": "",
    }
    assert props["address"]["type"] == ["object", "null"]
    assert props["address"]["properties"]["zip_code"]["type"] == "string"
    assert props["address"]["required"] == ["street", "zip_code"]
    assert props["mixed"] == {"enum": ["a", 1], "default": "a"}
    assert props["optional_mode"] == {
        "anyOf": [{"type": "string", "enum": ["x", "y"]}, {"type": "null"}],
        "default": None,
    }
    assert params["required"] == ["mode", "level", "color"]
    assert "description" not in tool_schema(tool)["function"]  # no docstring, no description


def test_string_annotations_are_resolved() -> None:
    # This module uses `from __future__ import annotations`: every hint above was a string.
    def tool(ids: list[int], when: str | None = None) -> None:
        """Look things up."""

    props = _params(tool_schema(tool))["properties"]
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}}


def test_sphinx_style_parameter_docs() -> None:
    def fetch(url: str, retries: int = 3) -> str:
        """Fetch a page.

        :param url: Absolute URL of the page.
        :param int retries: How often to retry.
        :returns: the body
        """
        return url

    props = _params(tool_schema(fetch))["properties"]
    assert props["url"]["description"] == "Absolute URL of the page."
    assert props["retries"]["description"] == "How often to retry."
    assert tool_schema(fetch)["function"]["description"] == "Fetch a page."


def test_methods_partials_callable_objects_and_overrides() -> None:
    class Calculator:
        def add(self, a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        def __call__(self, expression: str) -> float:
            """Evaluate an expression."""
            return 0.0

    calc = Calculator()
    method = tool_schema(calc.add)
    assert method["function"]["name"] == "add"
    assert _params(method)["required"] == ["a", "b"]

    called = tool_schema(calc)
    assert called["function"]["name"] == "Calculator"
    assert called["function"]["description"] == "Evaluate an expression."
    assert list(_params(called)["properties"]) == ["expression"]

    partial = tool_schema(functools.partial(search, limit=3), name="search_top3")
    assert partial["function"]["name"] == "search_top3"
    assert _params(partial)["properties"]["limit"]["default"] == 3
    assert partial["function"]["description"].startswith("Search the knowledge base")

    custom = tool_schema(search, description="Custom text.")
    assert custom["function"]["description"] == "Custom text."


async def test_async_tools_are_described_like_sync_ones() -> None:
    async def lookup(order_id: int) -> dict[str, Any]:
        """Look up an order."""
        return {}

    schema = tool_schema(lookup)
    assert schema["function"]["name"] == "lookup"
    assert _params(schema)["properties"] == {"order_id": {"type": "integer"}}


def test_unsupported_signatures_are_clear_errors() -> None:
    def no_hint(q) -> None:  # type: ignore[no-untyped-def]
        pass

    def var_args(*items: str) -> None:
        pass

    def var_kwargs(**options: str) -> None:
        pass

    def positional(q: str, /) -> None:
        pass

    def odd_type(conn: object.__class__) -> None:  # type: ignore[valid-type]
        pass

    def bad_keys(m: dict[int, str]) -> None:
        pass

    with pytest.raises(ToolSchemaError, match=r"'no_hint' parameter 'q' has no type hint"):
        tool_schema(no_hint)
    with pytest.raises(ToolSchemaError, match=r"\*args and \*\*kwargs"):
        tool_schema(var_args)
    with pytest.raises(ToolSchemaError, match=r"\*args and \*\*kwargs"):
        tool_schema(var_kwargs)
    with pytest.raises(ToolSchemaError, match="positional-only"):
        tool_schema(positional)
    with pytest.raises(ToolSchemaError, match=r"'conn': type .* has no JSON schema"):
        tool_schema(odd_type)
    with pytest.raises(ToolSchemaError, match="dict keys must be str"):
        tool_schema(bad_keys)
    with pytest.raises(ToolSchemaError, match="tool name '<lambda>' is not valid"):
        tool_schema(lambda q: q)
    with pytest.raises(ToolSchemaError, match="must be callable"):
        tool_schema("search")  # type: ignore[arg-type]
    assert isinstance(ToolSchemaError("x"), TypeError)


def test_tools_are_converted_to_the_function_form() -> None:
    wrapped = tool_schema(search)
    bare = {"name": "lookup", "parameters": {"type": "object", "properties": {}}}
    assert to_openai_tools([wrapped, bare]) == [
        wrapped,
        {"type": "function", "function": bare},
    ]
    with pytest.raises(LLMError, match=r"tools\[0\] is not a tool schema"):
        to_openai_tools([{"parameters": {}}])
    with pytest.raises(LLMError, match=r"tools\[1\] must be a dict"):
        to_openai_tools([bare, "search"])  # type: ignore[list-item]


def test_messages_are_converted_to_the_wire_format() -> None:
    ours: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Refund?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_0_0", "name": "search", "arguments": {"q": "refund é"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        {"role": "tool", "tool_call_id": "call_0_0", "name": "search", "content": {"days": 30}},
        {"role": "tool", "tool_call_id": "call_0_1", "content": "plain"},
        {"role": "assistant", "content": "Done.", "tool_calls": [], "loop": 3},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    wire = to_openai_messages(ours)
    assert wire[0] == ours[0] and wire[1] == ours[1]
    assert wire[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "search", "arguments": '{"q":"refund é"}'},
            }
        ],
    }
    assert wire[3] == {"role": "tool", "tool_call_id": "call_0_0", "content": '{"days":30}'}
    assert wire[4]["content"] == "plain"
    assert wire[5] == {"role": "assistant", "content": "Done."}
    assert wire[6] == {"role": "assistant", "content": ""}
    # Unknown roles pass through as they are (compatible servers may define more).
    assert to_openai_messages([{"role": "custom", "x": 1}]) == [{"role": "custom", "x": 1}]
    # Our own dicts are left untouched.
    assert ours[2]["tool_calls"][0]["arguments"] == {"q": "refund é"}
    assert "usage" in ours[2]
    # Messages already in the wire format pass through.
    assert to_openai_messages(wire) == wire


def test_bad_messages_are_clear_errors() -> None:
    with pytest.raises(LLMError, match=r"messages\[1\] must be a dict with a string 'role'"):
        to_openai_messages([{"role": "user", "content": "x"}, {"content": "no role"}])
    with pytest.raises(LLMError, match=r"messages\[0\].tool_calls\[0\] needs a string 'id'"):
        to_openai_messages([{"role": "assistant", "tool_calls": [{"name": "s"}]}])
    bad_args = [{"role": "assistant", "tool_calls": [{"id": "c", "name": "s", "arguments": {1j}}]}]
    with pytest.raises(LLMError, match="not JSON-serializable"):
        to_openai_messages(bad_args)


def _completion(message: dict[str, Any], usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def test_parse_chat_response() -> None:
    answer = parse_chat_response(
        _completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_x",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q": "refund"}'},
                    },
                    {
                        "id": "call_y",
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    },
                ],
            },
            {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        )
    )
    assert answer == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_x", "name": "search", "arguments": {"q": "refund"}},
            {"id": "call_y", "name": "now", "arguments": {}},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
    text = parse_chat_response(_completion({"role": "assistant", "content": "Hi"}))
    assert text == {
        "role": "assistant",
        "content": "Hi",
        "tool_calls": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    parts = parse_chat_response(
        _completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    )
    assert parts["content"] == "ab"
    refusal = parse_chat_response(_completion({"content": None, "refusal": "I can't."}))
    assert refusal["content"] == "I can't."
    no_ids = parse_chat_response(
        _completion({"tool_calls": [{"function": {"name": "a"}}, {"function": {"name": "b"}}]})
    )
    assert [c["id"] for c in no_ids["tool_calls"]] == ["call_0", "call_1"]
    partial_usage = parse_chat_response(
        _completion({"content": "x"}, {"prompt_tokens": 3, "completion_tokens": 4})
    )
    assert partial_usage["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not a JSON object"),
        ({"choices": []}, "has no choices"),
        ({"choices": [{"message": "hi"}]}, "has no message"),
        (_completion({"content": 5}), "content must be a string"),
        (_completion({"tool_calls": [{"id": "c", "function": {}}]}), "has no function name"),
        (
            _completion(
                {"tool_calls": [{"id": "c1", "function": {"name": "s", "arguments": "{'q': 1}"}}]}
            ),
            r"tool call c1 to 's': arguments are not valid JSON .*\"\{'q': 1\}\"",
        ),
        (
            _completion(
                {"tool_calls": [{"id": "c1", "function": {"name": "s", "arguments": "[1]"}}]}
            ),
            "must be a JSON object, got list",
        ),
        (
            _completion({"tool_calls": [{"id": "c1", "function": {"name": "s", "arguments": 5}}]}),
            "must be a JSON object string, got int",
        ),
    ],
)
def test_malformed_responses_are_clear_errors(body: Any, message: str) -> None:
    with pytest.raises(ChatResponseError, match=message):
        parse_chat_response(body)
