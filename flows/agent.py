"""The :class:`Agent` node: an LLM with tools, checkpointed after every loop.

One loop is one model call plus the tool calls it asks for. The agent keeps
everything it needs to resume in ``ctx.state``:

* ``messages``: the conversation, in the OpenAI chat format (text and vision
  content alike: one format, every key kept);
* ``loop``: how many loops are complete. A resumed agent starts at loop
  ``loop + 1`` with exactly these messages, so no model call made before the
  checkpoint is made again;
* ``current``: the loop whose model reply is in ``messages`` but whose tool
  calls are not all done (None between loops). Resuming there runs only the
  remaining tool calls: the model is not asked again for that loop;
* ``pending_call``: the tool call being executed (recorded, and saved, before
  the tool runs);
* ``tool_cache``: ``{tool_call_id: result}``; a cached call is never invoked
  again (a falsy result such as ``""`` counts as cached);
* ``call_numbers`` / ``tool_calls_made``: each tool call gets a per-agent
  number ``n`` the first time it runs, kept across resumes, so a tool that
  asks a human does so at the stable path ``<agent>/tools/<tool>#<n>``;
* ``steps``: ``{loop: {...}}`` with each loop's model output, tool calls and
  token usage (integer keys: the checkpoint codec keeps them integers);
* ``usage``: token totals.

Saves (``ctx.save_state``): before each tool call (with the call recorded as
pending and the model reply in the history) and at the end of each loop. The
final loop is saved by the node's own completion checkpoint.

Tools are typed callables (schema from :func:`flows.llm.tool_schema`; a
parameter named ``ctx`` receives a child context) or :class:`~flows.node.Node`
instances (the tool name is the node id; they get ``{"input": flow input,
"arguments": {...}}``). Tool calls of one reply run one after the other, in
order. A tool that raises returns the error text to the model (unless
``tool_errors="raise"``); a tool that calls ``ctx.interrupt`` pauses the run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from checkpoint import codec
from checkpoint.errors import CodecError, ConfigError, FlowpointError
from flows.context import NodeContext
from flows.llm import ChatModel, tool_schema
from flows.node import Node

__all__ = ["Agent", "AgentError", "MaxLoopsExceededError"]

logger = logging.getLogger("flows")

Message = dict[str, Any]
PromptSpec = str | Callable[[dict[str, Any]], Any]
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AgentError(FlowpointError):
    """An agent cannot go on: a bad prompt, a bad model answer, a tool that must not fail."""


class MaxLoopsExceededError(AgentError):
    """The agent used ``max_loops`` model calls without reaching a final answer."""


@dataclass(slots=True)
class _Tool:
    name: str
    schema: dict[str, Any]
    fn: Callable[..., Any] | None = None
    node: Node | None = None
    is_async: bool = False
    takes_ctx: bool = False
    validator: Any = None


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    inner = fn.func if isinstance(fn, functools.partial) else None
    if inner is not None and inspect.iscoroutinefunction(inner):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _node_tool_schema(node: Node) -> dict[str, Any]:
    parameters = getattr(node, "tool_parameters", None) or {
        "type": "object",
        "properties": {},
        "additionalProperties": True,
    }
    description = getattr(node, "tool_description", None) or f"Run the {node.node_type} {node.id}"
    return {
        "type": "function",
        "function": {"name": node.id, "description": description, "parameters": parameters},
    }


def _make_tool(tool: Any, agent_id: str) -> _Tool:
    if isinstance(tool, Node):
        if not _TOOL_NAME.fullmatch(tool.id):
            raise ConfigError(
                f"agent {agent_id!r}: node {tool.id!r} cannot be a tool: a tool name uses 1-64 "
                "characters from [A-Za-z0-9_-]"
            )
        return _Tool(name=tool.id, schema=_node_tool_schema(tool), node=tool, takes_ctx=True)
    if not callable(tool):
        raise ConfigError(
            f"agent {agent_id!r}: a tool must be a typed callable or a Node, got {tool!r}"
        )
    try:
        schema = tool_schema(tool)
    except Exception as exc:
        raise ConfigError(f"agent {agent_id!r}: {exc}") from exc
    try:
        params = inspect.signature(tool).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    return _Tool(
        name=schema["function"]["name"],
        schema=schema,
        fn=tool,
        is_async=_is_async(tool),
        takes_ctx="ctx" in params,
    )


def _content_of(result: Any) -> str:
    """What the model reads as a tool's result: strings as they are, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


def _cacheable(result: Any, where: str) -> Any:
    # The cache is checkpointed: a value the codec refuses would make every save fail.
    try:
        codec.to_jsonable(result, where)
    except CodecError:
        logger.debug("%s: result of type %s cached as text", where, type(result).__name__)
        return _content_of(result)
    return result


class Agent(Node):
    """A tool-using LLM loop that checkpoints after every loop (see the module docstring).

    ``prompt`` is the first user message: a ``str.format`` template over the
    node inputs (``"{input[question]}"``, ``"{plan}"``), or a callable
    ``prompt(inputs)`` returning a string or a list of content parts (vision:
    ``[{"type": "text", ...}, {"type": "image_url", ...}]``). ``system`` is
    sent as is. Output: ``{"answer": str, "messages": [...], "loops": int}``.

    >>> from flows.llm import ScriptedChat
    >>> agent = Agent(id="triage", model=ScriptedChat(["Refund approved."]))
    >>> agent
    Agent(id='triage', depends=[])
    """

    def __init__(
        self,
        id: str,
        model: ChatModel,
        tools: Sequence[Any] = (),
        system: str | None = None,
        prompt: PromptSpec = "{input[question]}",
        max_loops: int = 15,
        depends: Sequence[str] = (),
        *,
        tool_errors: Literal["return", "raise"] = "return",
    ) -> None:
        super().__init__(id, depends)
        if not callable(getattr(model, "chat", None)):
            raise ConfigError(
                f"agent {self.id!r}: model must implement ChatModel "
                f"(async chat(messages, tools)), got {model!r}"
            )
        if isinstance(max_loops, bool) or not isinstance(max_loops, int) or max_loops < 1:
            raise ConfigError(f"agent {self.id!r}: max_loops must be an integer >= 1")
        if not (isinstance(prompt, str) or callable(prompt)):
            raise ConfigError(f"agent {self.id!r}: prompt must be a str template or a callable")
        if system is not None and not isinstance(system, str):
            raise ConfigError(f"agent {self.id!r}: system must be a string")
        if tool_errors not in ("return", "raise"):
            raise ConfigError(f"agent {self.id!r}: tool_errors must be 'return' or 'raise'")
        if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            raise ConfigError(f"agent {self.id!r}: tools must be a list")
        self.model = model
        self.system = system
        self.prompt = prompt
        self.max_loops = max_loops
        self.tool_errors = tool_errors
        self.tools: dict[str, _Tool] = {}
        for tool in tools:
            made = _make_tool(tool, self.id)
            if made.name in self.tools:
                raise ConfigError(f"agent {self.id!r} has two tools named {made.name!r}")
            self.tools[made.name] = made
        self.tool_schemas = [t.schema for t in self.tools.values()]

    # -- state -------------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Refuse a saved state that is not an agent's (the node then starts over)."""
        messages = state.get("messages")
        if "messages" in state and not (
            isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        ):
            raise AgentError(f"agent {self.id!r}: saved messages are not a list of dicts")
        loop = state.get("loop", 0)
        if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
            raise AgentError(f"agent {self.id!r}: saved loop number {loop!r} is invalid")
        return state

    def _first_messages(self, inputs: dict[str, Any]) -> list[Message]:
        messages: list[Message] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        if callable(self.prompt):
            content = self.prompt(inputs)
        else:
            try:
                content = self.prompt.format(**inputs)
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                raise AgentError(
                    f"agent {self.id!r}: prompt {self.prompt!r} cannot be filled from the inputs "
                    f"(available: {sorted(inputs)}): {type(exc).__name__}: {exc}"
                ) from exc
        if not isinstance(content, (str, list)):
            raise AgentError(
                f"agent {self.id!r}: the prompt must give a string or a list of content parts, "
                f"got {type(content).__name__}"
            )
        messages.append({"role": "user", "content": content})
        return messages

    # -- the loop ----------------------------------------------------------------------------

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        state = ctx.state
        if "messages" not in state:
            state.update(
                messages=self._first_messages(inputs),
                loop=0,
                current=None,
                pending_call=None,
                tool_cache={},
                call_numbers={},
                tool_calls_made=0,
                steps={},
                usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            )
        messages: list[Message] = state["messages"]
        while True:
            if state.get("current") is None:
                loop = state["loop"] + 1
                if loop > self.max_loops:
                    raise MaxLoopsExceededError(
                        f"agent {self.id!r} reached max_loops={self.max_loops} without a final "
                        "answer (the last reply still called tools): raise max_loops or check "
                        "the tools' results"
                    )
                reply = await self.model.chat(messages, self.tool_schemas)
                assistant = self._assistant_message(reply, state, loop)
                messages.append(assistant)
                calls = assistant.get("tool_calls") or []
                state["steps"][loop] = {
                    "model_output": assistant.get("content"),
                    "tool_calls": [dict(c) for c in calls],
                    "usage": reply.get("usage"),
                }
                self._add_usage(state, reply.get("usage"))
                if not calls:
                    state["loop"] = loop
                    content = assistant.get("content")
                    return {
                        "answer": content if isinstance(content, str) else "",
                        "messages": messages,
                        "loops": loop,
                    }
                state["current"] = loop
            await self._run_tool_calls(inputs, ctx)
            state["loop"] = state["current"]
            state["current"] = None
            await ctx.save_state()

    def _assistant_message(self, reply: Any, state: dict[str, Any], loop: int) -> Message:
        if not isinstance(reply, Mapping):
            raise AgentError(
                f"agent {self.id!r}: the model returned {type(reply).__name__}, not a message dict"
            )
        raw_calls = reply.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise AgentError(f"agent {self.id!r}: the model's tool_calls is not a list")
        seen = set(state["tool_cache"]) | set(state["call_numbers"])
        calls: list[Message] = []
        for j, call in enumerate(raw_calls):
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise AgentError(f"agent {self.id!r}: tool call {j} of loop {loop} has no name")
            call_id = call.get("id")
            # Ids key the tool cache: one repeated from an earlier loop (some servers number
            # calls per reply) would wrongly hit the cache, so it is made unique here.
            if not isinstance(call_id, str) or not call_id or call_id in seen:
                call_id = f"call_{loop}_{j}"
                while call_id in seen:
                    call_id += "_"
            seen.add(call_id)
            arguments = call.get("arguments")
            calls.append(
                {
                    "id": call_id,
                    "name": call["name"],
                    "arguments": dict(arguments) if isinstance(arguments, Mapping) else {},
                }
            )
        message: Message = {"role": "assistant", "content": reply.get("content")}
        if calls:
            message["tool_calls"] = calls
        return message

    @staticmethod
    def _add_usage(state: dict[str, Any], usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        totals = state.setdefault("usage", {})
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value

    async def _run_tool_calls(self, inputs: dict[str, Any], ctx: NodeContext) -> None:
        state = ctx.state
        messages: list[Message] = state["messages"]
        assistant = next(
            m for m in reversed(messages) if m.get("role") == "assistant" and m.get("tool_calls")
        )
        answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
        cache: dict[str, Any] = state["tool_cache"]
        for call in assistant["tool_calls"]:
            call_id = call["id"]
            if call_id in answered:
                continue
            if call_id not in cache:
                number = state["call_numbers"].get(call_id)
                if number is None:
                    number = state["tool_calls_made"] = state["tool_calls_made"] + 1
                    state["call_numbers"][call_id] = number
                state["pending_call"] = {**call, "n": number}
                await ctx.save_state()
                result = await self._invoke(call, number, inputs, ctx)
                cache[call_id] = _cacheable(result, f"{ctx.path} tool call {call_id}")
                state["pending_call"] = None
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": _content_of(cache[call_id])}
            )
            answered.add(call_id)

    async def _invoke(
        self, call: Message, number: int, inputs: dict[str, Any], ctx: NodeContext
    ) -> Any:
        name = call["name"]
        tool = self.tools.get(name)
        if tool is None:
            return self._tool_failed(
                name, f"unknown tool {name!r}; available tools: {sorted(self.tools)}"
            )
        arguments: dict[str, Any] = call["arguments"]
        problem = self._check_arguments(tool, arguments)
        if problem is not None:
            return self._tool_failed(name, problem)
        try:
            if tool.node is not None:
                child = ctx.child("tools").child(f"{name}#{number}")
                return await tool.node.execute(
                    {"input": inputs.get("input"), "arguments": arguments}, child
                )
            assert tool.fn is not None
            kwargs = dict(arguments)
            if tool.takes_ctx:
                kwargs["ctx"] = ctx.child("tools").child(f"{name}#{number}")
            if tool.is_async:
                return await tool.fn(**kwargs)
            result = await asyncio.to_thread(functools.partial(tool.fn, **kwargs))
            if inspect.isawaitable(result):
                return await result
            return result
        except Exception as exc:
            if self.tool_errors == "raise":
                raise AgentError(
                    f"agent {self.id!r}: tool {name!r} (call #{number}) failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            logger.info("agent %s: tool %s failed: %s: %s", self.id, name, type(exc).__name__, exc)
            return f"error: {type(exc).__name__}: {exc}"

    def _tool_failed(self, name: str, problem: str) -> str:
        if self.tool_errors == "raise":
            raise AgentError(f"agent {self.id!r}: tool call to {name!r}: {problem}")
        return f"error: {problem}"

    @staticmethod
    def _check_arguments(tool: _Tool, arguments: dict[str, Any]) -> str | None:
        if tool.validator is None:
            schema = tool.schema["function"].get("parameters") or {"type": "object"}
            cls = jsonschema.validators.validator_for(schema)
            tool.validator = cls(schema)
        error = jsonschema.exceptions.best_match(tool.validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        return f"invalid arguments for tool {tool.name!r} at {where}: {error.message}"
