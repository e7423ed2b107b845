"""OpenAIChat against a real aiohttp server on 127.0.0.1 speaking /chat/completions.

The server runs on its own event loop in a thread, so the client can be driven
from pytest's loop and from fresh loops (the ``run_sync`` case) alike.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from flows.llm import (
    ChatModel,
    ChatRequestError,
    ChatResponseError,
    OpenAIChat,
    ScriptedChat,
    tool_schema,
)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: str | None = None


@dataclass
class Seen:
    headers: dict[str, str]
    body: Any
    peer_port: int


def completion(message: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def text_reply(text: str) -> Reply:
    return Reply(body=completion({"role": "assistant", "content": text}))


class FakeOpenAI:
    """A /chat/completions endpoint that answers from a queue and records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except ValueError:
            body = await request.text()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(dict(request.headers), body, peer[1] if peer else -1))
        reply = self.replies.pop(0) if self.replies else text_reply("default")
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.raw is not None:
            return web.Response(status=reply.status, text=reply.raw, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers still sleeping (the timeout test) must end before the loop closes.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def make_model(server: FakeOpenAI, **kwargs: Any) -> OpenAIChat:
    options: dict[str, Any] = {"api_key": "sk-test", "backoff_initial": 0.01, "backoff_max": 0.05}
    options.update(kwargs)
    return OpenAIChat("gpt-test", server.url, **options)


def refund(order_id: int, reason: str = "") -> str:
    """Refund an order.

    Args:
        order_id: The order to refund.
        reason: Why.
    """
    return "ok"


async def test_request_body_and_parsed_answer(server: FakeOpenAI) -> None:
    server.replies.append(
        Reply(
            body=completion(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_srv_1",
                            "type": "function",
                            "function": {"name": "refund", "arguments": '{"order_id": 42}'},
                        }
                    ],
                },
                {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129},
            )
        )
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You handle refunds."},
        {"role": "user", "content": "Refund order 42 please"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_0_0", "name": "lookup", "arguments": {"order_id": 42}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        {"role": "tool", "tool_call_id": "call_0_0", "content": {"status": "paid", "total": 9.5}},
    ]
    tools = [tool_schema(refund), {"name": "lookup", "parameters": {"type": "object"}}]
    async with make_model(server, temperature=0.2, extra={"max_tokens": 64}) as model:
        assert isinstance(model, ChatModel)
        answer = await model.chat(messages, tools)

    assert answer == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_srv_1", "name": "refund", "arguments": {"order_id": 42}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129},
    }
    assert len(server.seen) == 1
    seen = server.seen[0]
    assert seen.headers["Authorization"] == "Bearer sk-test"
    assert seen.headers["Content-Type"].startswith("application/json")
    body = seen.body
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 64
    assert body["messages"][:2] == messages[:2]
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"order_id":42}'},
            }
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": '{"status":"paid","total":9.5}',
    }
    assert body["tools"] == [
        tool_schema(refund),
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    ]
    assert body["tools"][0]["function"]["parameters"]["required"] == ["order_id"]
    assert model.calls == 1 and model.retries == 0


async def test_no_tools_no_temperature_and_key_from_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
    server.replies.append(text_reply("hello"))
    async with make_model(server, api_key=None, api_key_env="MY_LLM_KEY") as model:
        answer = await model.chat([{"role": "user", "content": "hi"}], [])
    assert answer["content"] == "hello"
    assert answer["tool_calls"] == []
    body = server.seen[0].body
    assert set(body) == {"model", "messages"}
    assert server.seen[0].headers["Authorization"] == "Bearer sk-from-env"


async def test_no_key_sends_no_authorization(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with make_model(server, api_key=None) as model:
        await model.chat([{"role": "user", "content": "hi"}], [])
    assert "Authorization" not in server.seen[0].headers


async def test_429_with_retry_after_is_retried_after_the_servers_delay(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.replies += [
        Reply(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "1"}),
        text_reply("after the wait"),
    ]
    caplog.set_level(logging.WARNING, logger="flows.llm")
    async with make_model(server) as model:
        answer = await model.chat([{"role": "user", "content": "hi"}], [])
    assert answer["content"] == "after the wait"
    assert len(server.seen) == 2
    assert server.seen[0].body == server.seen[1].body
    assert model.retries == 1
    retry_logs = [r.getMessage() for r in caplog.records if r.name == "flows.llm"]
    assert len(retry_logs) == 1
    # The wait is the server's Retry-After, not the (much shorter) configured backoff.
    assert "HTTP 429: Rate limit reached" in retry_logs[0]
    assert "retrying in 1.00s" in retry_logs[0]


async def test_retry_after_as_an_http_date(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.replies += [
        Reply(503, {"error": "busy"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        text_reply("ok"),
    ]
    caplog.set_level(logging.WARNING, logger="flows.llm")
    async with make_model(server) as model:
        assert (await model.chat([{"role": "user", "content": "hi"}], []))["content"] == "ok"
    assert "HTTP 503: busy" in caplog.text
    assert "retrying in 0.00s" in caplog.text  # a date in the past: retry at once


async def test_500_then_200_uses_backoff(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.replies += [Reply(500, raw="upstream exploded"), text_reply("recovered")]
    caplog.set_level(logging.WARNING, logger="flows.llm")
    async with make_model(server) as model:
        answer = await model.chat([{"role": "user", "content": "hi"}], [])
    assert answer["content"] == "recovered"
    assert len(server.seen) == 2
    assert model.retries == 1
    assert "HTTP 500: upstream exploded" in caplog.text


async def test_persistent_5xx_gives_up_after_max_retries(server: FakeOpenAI) -> None:
    server.replies += [Reply(503, {"error": {"message": "overloaded"}}) for _ in range(5)]
    async with make_model(server, max_retries=2) as model:
        with pytest.raises(ChatRequestError, match=r"overloaded.*gave up after 3 attempts") as info:
            await model.chat([{"role": "user", "content": "hi"}], [])
    assert info.value.status == 503
    assert info.value.attempts == 3
    assert len(server.seen) == 3
    assert model.retries == 2


async def test_400_fails_fast_with_the_servers_message(server: FakeOpenAI) -> None:
    server.replies.append(
        Reply(
            400,
            {
                "error": {
                    "message": "Invalid 'messages[1].tool_call_id': no matching tool call.",
                    "type": "invalid_request_error",
                }
            },
        )
    )
    async with make_model(server) as model:
        with pytest.raises(ChatRequestError, match="HTTP 400: Invalid 'messages") as info:
            await model.chat([{"role": "user", "content": "hi"}], [])
    assert info.value.status == 400
    assert info.value.attempts == 1
    assert len(server.seen) == 1
    assert model.retries == 0


async def test_401_mentions_the_api_key(server: FakeOpenAI) -> None:
    server.replies.append(Reply(401, {"error": {"message": "Incorrect API key provided"}}))
    async with make_model(server, api_key_env="TEAM_KEY") as model:
        with pytest.raises(ChatRequestError, match=r"Incorrect API key provided.*TEAM_KEY"):
            await model.chat([{"role": "user", "content": "hi"}], [])


async def test_malformed_tool_arguments_from_the_server(server: FakeOpenAI) -> None:
    server.replies.append(
        Reply(
            body=completion(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_bad",
                            "type": "function",
                            "function": {"name": "refund", "arguments": '{"order_id": 4'},
                        }
                    ],
                }
            )
        )
    )
    async with make_model(server) as model:
        with pytest.raises(ChatResponseError, match=r"call_bad to 'refund'.*not valid JSON"):
            await model.chat([{"role": "user", "content": "hi"}], [])
    assert len(server.seen) == 1  # a bad answer is not retried


async def test_a_non_json_success_body_is_a_response_error(server: FakeOpenAI) -> None:
    server.replies.append(Reply(200, raw="<html>proxy page</html>"))
    async with make_model(server) as model:
        with pytest.raises(ChatResponseError, match="is not JSON"):
            await model.chat([{"role": "user", "content": "hi"}], [])


async def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: every attempt is refused.
    model = OpenAIChat(
        "gpt-test", f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=2, backoff_initial=0.01
    )
    try:
        with pytest.raises(ChatRequestError, match="gave up after 3 attempts") as info:
            await model.chat([{"role": "user", "content": "hi"}], [])
    finally:
        await model.aclose()
    assert info.value.status is None
    assert model.retries == 2


async def test_timeouts_are_retried(server: FakeOpenAI) -> None:
    # The first reply never comes in time; the retry's budget is ample even on a busy machine.
    server.replies += [Reply(delay=30, body=completion({"content": "late"})), text_reply("fast")]
    async with make_model(server, timeout=1.0) as model:
        answer = await model.chat([{"role": "user", "content": "hi"}], [])
    assert answer["content"] == "fast"
    assert model.retries == 1


async def test_one_session_is_reused_and_closed(server: FakeOpenAI) -> None:
    server.replies += [text_reply("one"), text_reply("two"), text_reply("three")]
    model = make_model(server)
    await model.chat([{"role": "user", "content": "1"}], [])
    await model.chat([{"role": "user", "content": "2"}], [])
    # Keep-alive on one session: both requests came over the same client connection.
    assert server.seen[0].peer_port == server.seen[1].peer_port
    await model.aclose()
    await model.aclose()  # idempotent
    # A closed model opens a fresh session on next use.
    assert (await model.chat([{"role": "user", "content": "3"}], []))["content"] == "three"
    assert server.seen[2].peer_port != server.seen[0].peer_port
    await model.aclose()


def test_reuse_across_event_loops(server: FakeOpenAI) -> None:
    # What successive run_sync calls do: each asyncio.run is a new loop.
    server.replies += [text_reply("first loop"), text_reply("second loop")]
    model = make_model(server)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        first = asyncio.run(model.chat([{"role": "user", "content": "a"}], []))
        second = asyncio.run(model.chat([{"role": "user", "content": "b"}], []))
        asyncio.run(model.aclose())
        gc.collect()
    assert (first["content"], second["content"]) == ("first loop", "second loop")
    assert len(server.seen) == 2
    assert server.seen[0].peer_port != server.seen[1].peer_port  # one session per loop
    # The first loop's connection was closed with that loop, not leaked to the GC.
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_bad_configuration_is_refused() -> None:
    from checkpoint.errors import ConfigError

    with pytest.raises(ConfigError, match="model must be"):
        OpenAIChat("")
    with pytest.raises(ConfigError, match="base_url must be an http"):
        OpenAIChat("m", "ftp://example")
    with pytest.raises(ConfigError, match="extra may not set"):
        OpenAIChat("m", extra={"messages": []})
    with pytest.raises(ConfigError, match="max_retries"):
        OpenAIChat("m", max_retries=-1)


async def test_scripted_and_http_models_are_interchangeable(server: FakeOpenAI) -> None:
    # The same conversation loop drives both: tool call, tool result, final answer.
    tool_turn = {"tool_calls": [{"name": "refund", "arguments": {"order_id": 7}}]}
    server.replies += [
        Reply(
            body=completion(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_0_0",
                            "type": "function",
                            "function": {
                                "name": "refund",
                                "arguments": json.dumps({"order_id": 7}),
                            },
                        }
                    ],
                }
            )
        ),
        text_reply("Refunded."),
    ]

    async def converse(model: ChatModel) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "refund 7"}]
        while True:
            answer = await model.chat(messages, [tool_schema(refund)])
            messages.append({k: v for k, v in answer.items() if k != "usage"})
            if not answer["tool_calls"]:
                return messages
            for call in answer["tool_calls"]:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call["id"],
                        "content": refund(**call["arguments"]),
                    }
                )

    scripted = await converse(ScriptedChat([tool_turn, {"content": "Refunded."}]))
    async with make_model(server) as http_model:
        over_http = await converse(http_model)
    assert scripted == over_http
