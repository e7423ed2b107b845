"""Chat models behind one small protocol, and tool schemas built from typed callables.

Everything crossing the protocol is a plain dict in the OpenAI chat format, so
conversations checkpoint as ordinary JSON:

* messages: ``{"role": "system"|"user"|"assistant"|"tool", "content": ...}``;
  an assistant message may carry ``tool_calls`` and a tool result carries
  ``tool_call_id``;
* tool schemas: ``{"type": "function", "function": {"name", "description",
  "parameters"}}`` (what :func:`tool_schema` builds);
* answers: ``{"role": "assistant", "content": str | None, "tool_calls":
  [{"id", "name", "arguments": dict}], "usage": {"prompt_tokens",
  "completion_tokens", "total_tokens"}}``. Tool call arguments are dicts here,
  never JSON strings: :class:`OpenAIChat` converts at the wire.

:class:`ScriptedChat` answers from a fixed script, indexed by how many
assistant messages the conversation already holds, so an agent resumed from a
checkpoint gets the next answer rather than the first one again.
"""

from __future__ import annotations

import asyncio
import collections.abc
import copy
import datetime as dt
import email.utils
import enum
import functools
import inspect
import json
import logging
import os
import re
import types
import typing
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from checkpoint.errors import ConfigError, FlowpointError

__all__ = [
    "ChatModel",
    "ChatRequestError",
    "ChatResponseError",
    "LLMError",
    "OpenAIChat",
    "ScriptExhaustedError",
    "ScriptedChat",
    "ToolSchemaError",
    "parse_chat_response",
    "to_openai_messages",
    "to_openai_tools",
    "tool_schema",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class LLMError(FlowpointError):
    """A chat model could not produce an answer, or was given unusable messages."""


class ScriptExhaustedError(LLMError):
    """A :class:`ScriptedChat` was asked for more answers than its script holds."""


class ChatRequestError(LLMError):
    """The chat completion endpoint refused the request or stayed unavailable.

    ``status`` is the last HTTP status (``None`` for a connection error or a
    timeout) and ``attempts`` how many requests were made.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class ChatResponseError(LLMError):
    """The endpoint answered, but not with a usable chat completion.

    Malformed tool call arguments (not a JSON object) land here too.
    """


class ToolSchemaError(FlowpointError, TypeError):
    """A callable cannot be described as a tool (the message names the parameter)."""


@runtime_checkable
class ChatModel(Protocol):
    """What an Agent needs from a language model.

    ``messages`` and ``tools`` are in the OpenAI chat format (see the module
    docstring); the answer is ``{"role": "assistant", "content", "tool_calls",
    "usage"}`` with tool call arguments as dicts.
    """

    async def chat(self, messages: list[Message], tools: list[Message]) -> Message:
        """Answer the conversation ``messages``, possibly calling some of ``tools``."""
        ...


# --------------------------------------------------------------------------- shared helpers

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_SCRIPT_KEYS = frozenset({"role", "content", "tool_calls", "usage"})


def _stable_text(value: Any) -> str:
    # Usage estimates must not depend on object ids, so unknown objects render by type only.
    return json.dumps(
        value,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=lambda o: f"<{type(o).__qualname__}>",
    )


def _estimate_tokens(text: str) -> int:
    # About four characters per token for English text; good enough for demos and budgets.
    return (len(text) + 3) // 4


def _dumps_arguments(arguments: Any, where: str) -> str:
    try:
        return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise LLMError(f"{where}: tool call arguments are not JSON-serializable: {exc}") from exc


def _loads_arguments(raw: Any, where: str) -> dict[str, Any]:
    """Tool call arguments as a dict, from a dict or a JSON object string."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise ChatResponseError(
            f"{where}: arguments must be a JSON object string, got {type(raw).__name__}"
        )
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        snippet = raw if len(raw) <= 200 else raw[:200] + "..."
        raise ChatResponseError(
            f"{where}: arguments are not valid JSON ({exc}); the model sent {snippet!r}"
        ) from exc
    if not isinstance(parsed, dict):
        raise ChatResponseError(
            f"{where}: arguments must be a JSON object, got {type(parsed).__name__}: {raw[:200]!r}"
        )
    return parsed


# --------------------------------------------------------------------------- ScriptedChat


def _script_entry(entry: Any, index: int) -> Message:
    """Validate one script answer and normalize everything but usage (that needs the prompt)."""
    where = f"ScriptedChat script[{index}]"
    if isinstance(entry, str):
        entry = {"content": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: an answer must be a dict, got {type(entry).__name__}")
    entry = copy.deepcopy(dict(entry))  # later edits to the caller's script change nothing
    unknown = set(entry) - _SCRIPT_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; an answer may have {sorted(_SCRIPT_KEYS)}"
        )
    if entry.get("role", "assistant") != "assistant":
        raise ConfigError(f"{where}: role must be 'assistant', got {entry['role']!r}")
    content = entry.get("content")
    if content is not None and not isinstance(content, str):
        raise ConfigError(f"{where}: content must be a string or None")
    raw_calls = entry.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise ConfigError(f"{where}: tool_calls must be a list")
    calls = [_script_tool_call(call, index, j) for j, call in enumerate(raw_calls)]
    usage = entry.get("usage")
    if usage is not None:
        if not isinstance(usage, Mapping) or set(usage) - set(_USAGE_KEYS):
            raise ConfigError(f"{where}: usage must be a dict with keys among {list(_USAGE_KEYS)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in usage.values()):
            raise ConfigError(f"{where}: usage counts must be integers")
        usage = dict(usage)
    return {"content": content, "tool_calls": calls, "usage": usage}


def _script_tool_call(call: Any, index: int, j: int) -> Message:
    where = f"ScriptedChat script[{index}].tool_calls[{j}]"
    if not isinstance(call, Mapping):
        raise ConfigError(f"{where}: a tool call must be a dict")
    # Also accept the OpenAI wire shape, so recorded transcripts can be replayed as they are.
    fn = call.get("function")
    body: Mapping[str, Any] = fn if isinstance(fn, Mapping) else call
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    call_id = call.get("id", f"call_{index}_{j}")
    if not isinstance(call_id, str) or not call_id:
        raise ConfigError(f"{where}: 'id' must be a non-empty string")
    try:
        arguments = _loads_arguments(body.get("arguments"), where)
    except ChatResponseError as exc:
        raise ConfigError(str(exc)) from exc
    return {"id": call_id, "name": name, "arguments": arguments}


class ScriptedChat:
    """A deterministic :class:`ChatModel` that replays a script of answers.

    The answer to a conversation is ``script[i]`` where ``i`` is the number of
    assistant messages already in it, so a resumed agent continues the script
    where the checkpoint left it. Each answer is normalized to the full shape:
    ``content`` defaults to ``None``, tool calls get ids ``call_{i}_{j}`` when
    the script has none, and ``usage`` is estimated from the text (about four
    characters per token) unless the script gives it. A plain string is
    shorthand for ``{"content": ...}``.

    ``calls`` counts the calls made to this instance (a fresh instance used for
    a resume starts at 0). Asking past the end raises :class:`ScriptExhaustedError`.

    >>> import asyncio
    >>> model = ScriptedChat([{"tool_calls": [{"name": "search", "arguments": {"q": "x"}}]}])
    >>> answer = asyncio.run(model.chat([{"role": "user", "content": "hi"}], []))
    >>> answer["tool_calls"]
    [{'id': 'call_0_0', 'name': 'search', 'arguments': {'q': 'x'}}]
    """

    def __init__(self, script: Sequence[Mapping[str, Any] | str]) -> None:
        if isinstance(script, (str, bytes, Mapping)) or not isinstance(script, Sequence):
            raise ConfigError("ScriptedChat needs a list of answers")
        self._script = [_script_entry(entry, i) for i, entry in enumerate(script)]
        self.calls = 0

    def __len__(self) -> int:
        return len(self._script)

    def __repr__(self) -> str:
        return f"ScriptedChat({len(self._script)} answers, calls={self.calls})"

    async def chat(self, messages: list[Message], tools: list[Message]) -> Message:
        """Return the scripted answer for this point of the conversation."""
        self.calls += 1
        if not isinstance(messages, list):
            raise LLMError(f"messages must be a list of dicts, got {type(messages).__name__}")
        index = sum(1 for m in messages if isinstance(m, Mapping) and m.get("role") == "assistant")
        if index >= len(self._script):
            raise ScriptExhaustedError(
                f"ScriptedChat has {len(self._script)} answers but the conversation already "
                f"holds {index} assistant messages, so answer #{index + 1} was asked for: "
                "add answers to the script (or check that the agent stops when it should)"
            )
        entry = self._script[index]
        answer: Message = {
            "role": "assistant",
            "content": entry["content"],
            # Deep copies: the caller may mutate the answer, the script must stay intact.
            "tool_calls": copy.deepcopy(entry["tool_calls"]),
        }
        given: dict[str, int] = entry["usage"] or {}
        prompt = given.get("prompt_tokens")
        if prompt is None:
            prompt = _estimate_tokens(_stable_text(messages)) + _estimate_tokens(
                _stable_text(tools) if tools else ""
            )
        completion = given.get("completion_tokens")
        if completion is None:
            completion = _estimate_tokens(
                (entry["content"] or "")
                + (_stable_text(entry["tool_calls"]) if entry["tool_calls"] else "")
            )
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": given.get("total_tokens", prompt + completion),
        }
        return answer


# --------------------------------------------------------------------------- wire conversion


def to_openai_tools(tools: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Tool schemas in the OpenAI ``{"type": "function", "function": {...}}`` form.

    Accepts that form or a bare ``{"name", "description", "parameters"}``.
    """
    out: list[Message] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise LLMError(f"tools[{i}] must be a dict, got {type(tool).__name__}")
        if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping):
            out.append(dict(tool))
        elif isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": dict(tool)})
        else:
            raise LLMError(
                f"tools[{i}] is not a tool schema: expected {{'type': 'function', 'function': "
                "{'name': ...}} or {'name': ..., 'parameters': ...} (see flows.llm.tool_schema)"
            )
    return out


def _wire_tool_call(call: Any, where: str) -> Message:
    if not isinstance(call, Mapping):
        raise LLMError(f"{where} must be a dict")
    fn = call.get("function")
    if isinstance(fn, Mapping):
        name, arguments = fn.get("name"), fn.get("arguments")
    else:
        name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(name, str) or not isinstance(call.get("id"), str):
        raise LLMError(f"{where} needs a string 'id' and 'name'")
    if not isinstance(arguments, str):
        arguments = _dumps_arguments({} if arguments is None else arguments, where)
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


_MESSAGE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "refusal", "audio"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}


def to_openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Our message dicts in the OpenAI wire format.

    Assistant tool calls get ``"type": "function"`` and JSON-string arguments,
    an empty ``tool_calls`` list is dropped (the API refuses it), and a tool
    result that is not a string is sent as JSON. Keys the API does not define
    for a role (``usage``, bookkeeping an agent keeps) are left out: the API
    refuses unknown message properties.
    """
    out: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise LLMError(f"messages[{i}] must be a dict with a string 'role'")
        role = message["role"]
        allowed = _MESSAGE_KEYS.get(role)
        wire = {k: v for k, v in message.items() if allowed is None or k in allowed}
        if role == "assistant":
            calls = wire.pop("tool_calls", None) or []
            if calls:
                wire["tool_calls"] = [
                    _wire_tool_call(c, f"messages[{i}].tool_calls[{j}]")
                    for j, c in enumerate(calls)
                ]
            wire.setdefault("content", None)
            if wire["content"] is None and not calls:
                wire["content"] = ""
        elif role == "tool" and not isinstance(wire.get("content"), str):
            wire["content"] = _dumps_arguments(wire.get("content"), f"messages[{i}].content")
        out.append(wire)
    return out


def parse_chat_response(data: Any) -> Message:
    """Turn a chat completion response body into our answer dict.

    Raises :class:`ChatResponseError` when there is no message, or when a tool
    call's arguments are not a JSON object.
    """
    if not isinstance(data, Mapping):
        raise ChatResponseError(f"chat completion is not a JSON object: {str(data)[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ChatResponseError(f"chat completion has no choices: {_stable_text(data)[:300]}")
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        raise ChatResponseError("chat completion choice has no message")
    content = message.get("content")
    if isinstance(content, list):
        # Some compatible servers return content parts; the text parts are the answer.
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    if content is None and isinstance(message.get("refusal"), str):
        content = message["refusal"]
    if content is not None and not isinstance(content, str):
        raise ChatResponseError(f"message content must be a string, got {type(content).__name__}")
    calls: list[Message] = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise ChatResponseError("message tool_calls must be a list")
    for j, raw in enumerate(raw_calls):
        fn = raw.get("function") if isinstance(raw, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ChatResponseError(f"tool_calls[{j}] has no function name")
        call_id = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(call_id, str) or not call_id:
            # Some compatible servers omit ids; they then match results by position.
            call_id = f"call_{j}"
        where = f"tool call {call_id} to {fn['name']!r}"
        calls.append(
            {
                "id": call_id,
                "name": fn["name"],
                "arguments": _loads_arguments(fn.get("arguments"), where),
            }
        )
    raw_usage = data.get("usage")
    usage_in: Mapping[str, Any] = raw_usage if isinstance(raw_usage, Mapping) else {}

    def count(key: str) -> int:
        value = usage_in.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    total = count("total_tokens") or prompt + completion
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": calls,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total},
    }


# --------------------------------------------------------------------------- OpenAIChat


class _RetryableError(ChatRequestError):
    """A failure worth retrying (429, 5xx, connection); ``retry_after`` is the server's hint."""

    def __init__(self, message: str, *, status: int | None, retry_after: float | None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _error_message(body: str) -> str:
    """The server's own explanation, from an OpenAI error body or the raw text."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, Mapping):
        error = doc.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(doc.get("message"), str):
            return str(doc["message"])
    text = body.strip()
    return (text[:500] + "...") if len(text) > 500 else (text or "(empty body)")


_RESERVED_EXTRA = frozenset({"model", "messages", "tools", "stream"})


async def _close_with_loop(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    # asyncio.run() closes every live async generator (loop.shutdown_asyncgens) before it
    # closes its loop, so this `finally` closes the session while its loop still runs: an
    # instance used by successive run_sync() calls leaks no sockets.
    try:
        yield
    finally:
        await session.close()


@dataclass
class _HeldSession:
    """The session of one event loop, and the guard that closes it with that loop."""

    session: aiohttp.ClientSession
    loop: asyncio.AbstractEventLoop
    guard: AsyncGenerator[None, None]

    async def discard(self) -> None:
        if self.loop is asyncio.get_running_loop() or self.loop.is_closed():
            # Same loop: a real close. Closed loop: the session could only be marked
            # closed (there is no loop left for I/O), which is all that is left to do.
            await self.guard.aclose()
            await self.session.close()
        # Otherwise another live loop owns the sockets: its shutdown closes them via the guard.


class OpenAIChat:
    """A :class:`ChatModel` for any OpenAI-compatible ``/chat/completions`` endpoint.

    The API key comes from ``api_key``, else the environment variable named by
    ``api_key_env``; without one no ``Authorization`` header is sent (local
    servers rarely need it). ``extra`` adds request fields such as
    ``max_tokens`` or ``tool_choice``.

    429, 5xx, timeouts and connection errors are retried up to ``max_retries``
    times with exponential backoff and jitter, waiting what ``Retry-After``
    says when the server sends it (at most ``max_retry_wait`` seconds). Any
    other 4xx fails at once with the server's error message. ``retries``
    counts the retries made and ``calls`` the calls to :meth:`chat`.

    One aiohttp session per instance, created on first use; call
    :meth:`aclose` (or use ``async with``) when done. An instance reused under
    a new event loop (successive ``run_sync`` calls) opens a new session there.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        temperature: float | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_wait: float = 60.0,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError("OpenAIChat: model must be a non-empty string")
        if not isinstance(base_url, str) or not re.match(r"https?://", base_url):
            raise ConfigError(f"OpenAIChat: base_url must be an http(s) URL, got {base_url!r}")
        if timeout <= 0:
            raise ConfigError("OpenAIChat: timeout must be positive")
        if max_retries < 0:
            raise ConfigError("OpenAIChat: max_retries must be >= 0")
        if backoff_initial < 0 or backoff_max < 0 or max_retry_wait < 0:
            raise ConfigError("OpenAIChat: backoff and wait limits must be >= 0")
        reserved = _RESERVED_EXTRA & set(extra or {})
        if reserved:
            raise ConfigError(f"OpenAIChat: extra may not set {sorted(reserved)}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.temperature = temperature
        self.extra: dict[str, Any] = dict(extra or {})
        self.api_key_env = api_key_env
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        # Exponential backoff plus jitter, so many clients do not retry in lockstep.
        self._backoff = wait_exponential(multiplier=backoff_initial, max=backoff_max) + wait_random(
            0, backoff_initial
        )
        self._max_retry_wait = max_retry_wait
        self._held: _HeldSession | None = None
        self.calls = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> OpenAIChat:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def request_body(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> Message:
        """The JSON body :meth:`chat` posts for ``messages`` and ``tools``."""
        body: Message = {"model": self.model, "messages": to_openai_messages(messages)}
        if tools:
            body["tools"] = to_openai_tools(tools)
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra)
        return body

    async def chat(self, messages: list[Message], tools: list[Message]) -> Message:
        """Post the conversation to ``/chat/completions`` and parse the answer."""
        self.calls += 1
        body = self.request_body(messages, tools)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, _RetryableError)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    data = await self._post_once(body)
        except _RetryableError as exc:
            raise ChatRequestError(
                f"{exc} (gave up after {attempts} attempts)", status=exc.status, attempts=attempts
            ) from exc
        except ChatRequestError as exc:
            exc.attempts = attempts
            raise
        return parse_chat_response(data)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self._max_retry_wait)
        return float(self._backoff(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "chat completion attempt %d/%d failed (%s); retrying in %.2fs",
            state.attempt_number,
            self.max_retries + 1,
            exc,
            wait,
        )

    async def _post_once(self, body: Message) -> Any:
        session = await self._get_session()
        try:
            async with session.post(self.url, json=body) as response:
                text = await response.text(errors="replace")
                status = response.status
                retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise _RetryableError(
                f"chat completion request to {self.url} failed: {reason}",
                status=None,
                retry_after=None,
            ) from exc
        if status == 429 or status >= 500:
            raise _RetryableError(
                f"chat completion request to {self.url} failed with HTTP {status}: "
                f"{_error_message(text)}",
                status=status,
                retry_after=retry_after,
            )
        if status >= 400:
            hint = ""
            if status == 401:
                hint = f" (check the API key: pass api_key= or set {self.api_key_env})"
            raise ChatRequestError(
                f"chat completion request to {self.url} was refused with HTTP {status}: "
                f"{_error_message(text)}{hint}",
                status=status,
            )
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ChatResponseError(
                f"chat completion from {self.url} is not JSON (HTTP {status}): {text[:200]!r}"
            ) from exc

    async def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        held = self._held
        if held is not None and held.loop is loop and not held.session.closed:
            return held.session
        if held is not None:
            self._held = None
            await held.discard()
            if self._held is not None and self._held.loop is loop:  # another task opened one
                return self._held.session
        headers = {"User-Agent": "flowpoint"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        guard = _close_with_loop(session)
        await anext(guard)
        self._held = _HeldSession(session, loop, guard)
        return session

    async def aclose(self) -> None:
        """Close the HTTP session (a later :meth:`chat` opens a new one)."""
        held, self._held = self._held, None
        if held is not None:
            await held.discard()


# --------------------------------------------------------------------------- tool_schema

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIMPLE = {str: "string", bool: "boolean", int: "integer", float: "number"}
_ARRAYS: tuple[Any, ...] = (
    list,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.Iterable,
)
_OBJECTS: tuple[Any, ...] = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _json_type_of(values: Sequence[Any]) -> str | None:
    kinds = {
        "boolean" if isinstance(v, bool) else _SIMPLE.get(type(v), "null" if v is None else "?")
        for v in values
    }
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 and "?" not in kinds else None


def _enum_schema(values: list[Any], where: str) -> dict[str, Any]:
    if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
        raise ToolSchemaError(f"{where}: enum values must be str, int, float, bool or None")
    schema: dict[str, Any] = {"enum": values}
    kind = _json_type_of(values)
    if kind is not None:
        schema = {"type": kind, **schema}
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema.get("type"), str) and "enum" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _schema_for(tp: Any, where: str) -> dict[str, Any]:
    """JSON schema for one type hint."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        schema = _schema_for(args[0], where)
        notes = [m for m in args[1:] if isinstance(m, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if tp is Any or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        has_none = len(members) < len(args)
        if len(members) == 1:
            schema = _schema_for(members[0], where)
        else:
            schema = {"anyOf": [_schema_for(a, where) for a in members]}
        return _nullable(schema) if has_none else schema
    if origin is Literal:
        return _enum_schema(list(args), where)
    if isinstance(tp, type) and tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([m.value for m in tp], where)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_json_schema()
    if tp is tuple or origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema_for(args[0], where)}
        items = [_schema_for(a, where) for a in args]
        return {
            "type": "array",
            "prefixItems": items,
            "minItems": len(items),
            "maxItems": len(items),
        }
    if tp in _ARRAYS or origin in _ARRAYS:
        schema = {"type": "array"}
        if args:
            schema["items"] = _schema_for(args[0], where)
        if (origin or tp) in (set, frozenset, collections.abc.Set):
            schema["uniqueItems"] = True
        return schema
    if tp in _OBJECTS or origin in _OBJECTS:
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            if args[0] is not str:
                raise ToolSchemaError(f"{where}: dict keys must be str (JSON object keys)")
            schema["additionalProperties"] = _schema_for(args[1], where)
        return schema
    raise ToolSchemaError(
        f"{where}: type {tp!r} has no JSON schema; use str, int, float, bool, list[...], "
        "dict[str, ...], Literal[...], an Enum, Optional[...] or a pydantic model"
    )


_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_NEXT_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_GOOGLE_PARAM = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph (one line) and per-parameter descriptions (Google or Sphinx style)."""
    lines = doc.strip().splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line) or _SPHINX_PARAM.match(line):
            break
        summary_lines.append(line.strip())
    params: dict[str, str] = {}
    current: str | None = None
    in_section = False
    section_indent = params_indent = 0
    for line in lines:
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if _SECTION.match(line):
            in_section, current = True, None
            section_indent = len(line) - len(line.lstrip())
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if in_section and indent <= section_indent and _NEXT_SECTION.match(line):
            in_section, current = False, None
            continue
        google = _GOOGLE_PARAM.match(line) if in_section else None
        if google and (current is None or indent <= params_indent):
            current = google.group(1).lstrip("*")
            params_indent = indent
            params[current] = google.group(2).strip()
        elif current is not None and (in_section or line.startswith((" ", "\t"))):
            params[current] = f"{params[current]} {line.strip()}".strip()
    return " ".join(summary_lines), params


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose docstring and hints describe ``fn``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isclass(fn)):
        # A callable instance: its class's __call__ carries the docstring and the hints.
        call = inspect.getattr_static(type(fn), "__call__", None)
        if inspect.isfunction(call):
            return call
    return fn


def tool_schema(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """An OpenAI tool schema for a typed callable.

    The name is the function's (or ``name``); the description is the first
    paragraph of its docstring (or ``description``); each parameter becomes a
    property typed from its hint (str, int, float, bool, list[...], dict,
    Literal, Enum, Optional / ``X | None``, pydantic models, ``Annotated[X,
    "description"]``), described from a Google- or Sphinx-style ``Args``
    section, and required unless it has a default. A parameter named ``ctx``
    (the node context) is left out.

    >>> def search(q: str, limit: int = 5) -> str:
    ...     '''Search the knowledge base.'''
    ...     return q
    >>> tool_schema(search)["function"]["parameters"]["required"]
    ['q']
    """
    if not callable(fn):
        raise ToolSchemaError(f"a tool must be callable, got {type(fn).__name__}")
    source = _unwrap(fn)
    tool_name = name or getattr(fn, "__name__", None) or getattr(source, "__name__", None)
    if tool_name == "__call__":
        tool_name = type(fn).__name__
    if not isinstance(tool_name, str) or not _TOOL_NAME.fullmatch(tool_name):
        raise ToolSchemaError(
            f"tool name {tool_name!r} is not valid: use 1-64 characters from [A-Za-z0-9_-] "
            "(pass name=...)"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ToolSchemaError(f"cannot read the signature of tool {tool_name!r}: {exc}") from exc
    try:
        hints = typing.get_type_hints(source, include_extras=True)
    except Exception as exc:  # unresolvable forward references, odd callables
        raise ToolSchemaError(
            f"cannot resolve the type hints of tool {tool_name!r}: {exc}"
        ) from exc
    summary, param_docs = _parse_docstring(inspect.getdoc(source) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.name == "ctx":
            continue
        where = f"tool {tool_name!r} parameter {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolSchemaError(f"{where}: *args and **kwargs cannot be described to a model")
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolSchemaError(f"{where}: positional-only parameters cannot be passed by name")
        hint = hints.get(param.name, param.annotation)
        if hint is inspect.Parameter.empty:
            raise ToolSchemaError(f"{where} has no type hint: annotate it (e.g. `q: str`)")
        schema = _schema_for(hint, where)
        if param.name in param_docs and "description" not in schema:
            schema["description"] = param_docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif isinstance(param.default, enum.Enum):
            schema["default"] = param.default.value
        elif param.default is None or isinstance(param.default, (str, int, float, bool)):
            schema["default"] = param.default
        properties[param.name] = schema
    function: dict[str, Any] = {"name": tool_name}
    text = description if description is not None else summary
    if text:
        function["description"] = text
    function["parameters"] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return {"type": "function", "function": function}
