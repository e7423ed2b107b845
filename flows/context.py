"""What a node gets as ``ctx``: its resumable state, mid-node saves, human input, children.

State layout. ``ctx.state`` is a plain dict the node owns and may mutate;
it is saved with the node (``NodeState.internal_state``) and handed back on
resume. Two keys are reserved by the runtime:

* ``"children"``: ``{name: state}`` of the child contexts (``ctx.child(name)``),
  nested arbitrarily deep;
* ``"answers"``: ``{path: answer}`` of the human answers this context asked for.

Paths. A node's context has the node id as path (prefixed by the enclosing
sub-flow's path, if any). ``ctx.child("tools")`` has path ``"<node>/tools"``;
a child name starting with ``[`` joins without the slash
(``"summaries" + "[7]" -> "summaries[7]"``); ``ctx.interrupt(..., key="ok")``
asks at ``"<path>/ok"``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from checkpoint.errors import ConfigError
from checkpoint.models import PendingInput
from flows.errors import Interrupt

__all__ = ["NodeContext", "join_path", "node_id_of_path"]

SaveHook = Callable[[], Awaitable[None]]

_NODE_PREFIX = re.compile(r"[^/\[]+")


def join_path(parent: str, name: str) -> str:
    """The path of child ``name`` under ``parent`` (``[i]`` names join without a slash)."""
    if not parent:
        return name
    return f"{parent}{name}" if name.startswith("[") else f"{parent}/{name}"


def node_id_of_path(path: str) -> str:
    """The top-level node id a pending-input path belongs to (``"a[3]/b"`` -> ``"a"``)."""
    match = _NODE_PREFIX.match(path)
    return match.group(0) if match else path


def _check_name(name: object, what: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise ConfigError(f"invalid {what} {name!r}: use a non-empty printable name without '/'")
    return name


def _sub_dict(state: dict[str, Any], key: str, owner: str) -> dict[str, Any]:
    value = state.setdefault(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"ctx.state[{key!r}] of {owner} is reserved by the runtime and must stay a dict, "
            f"not {type(value).__name__}"
        )
    return value


class NodeContext:
    """The context of one node execution (or of a child of it).

    Build one with :meth:`NodeContext.root`; nodes get theirs from the scheduler.
    """

    __slots__ = (
        "_answers",
        "_loop",
        "_parent",
        "_save_hook",
        "attempt",
        "node_id",
        "path",
        "resumed",
        "run_id",
        "state",
    )

    def __init__(
        self,
        *,
        run_id: str,
        node_id: str,
        path: str,
        state: dict[str, Any],
        answers: Mapping[str, Any],
        save_hook: SaveHook | None,
        loop: asyncio.AbstractEventLoop | None,
        parent: NodeContext | None,
        attempt: int,
        resumed: bool,
    ) -> None:
        self.run_id = run_id
        self.node_id = node_id
        self.path = path
        self.state = state
        self.attempt = attempt
        self.resumed = resumed
        self._answers = answers
        self._save_hook = save_hook
        self._loop = loop
        self._parent = parent

    @classmethod
    def root(
        cls,
        *,
        run_id: str,
        node_id: str,
        path: str | None = None,
        state: dict[str, Any] | None = None,
        answers: Mapping[str, Any] | None = None,
        save_hook: SaveHook | None = None,
        attempt: int = 1,
        resumed: bool = False,
    ) -> NodeContext:
        """A node's top-level context.

        ``save_hook`` is awaited by :meth:`save_state` (None: saving is a no-op,
        as when checkpointing is off); ``answers`` are human answers delivered
        by the runner, looked up by path when the node asks.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        return cls(
            run_id=run_id,
            node_id=node_id,
            path=path if path is not None else node_id,
            state=state if state is not None else {},
            answers=answers if answers is not None else {},
            save_hook=save_hook,
            loop=loop,
            parent=None,
            attempt=attempt,
            resumed=resumed,
        )

    # -- nesting -----------------------------------------------------------------------------

    def child(self, name: str) -> NodeContext:
        """A child context: state in ``ctx.state["children"][name]``, path below this one.

        Calling it again with the same name gives a context on the same state.
        Saving a child saves the whole node.
        """
        _check_name(name, "child name")
        children = _sub_dict(self.state, "children", self.path)
        state = children.get(name)
        if not isinstance(state, dict):
            state = children[name] = {}
        return NodeContext(
            run_id=self.run_id,
            node_id=self.node_id,
            path=join_path(self.path, name),
            state=state,
            answers=self._answers,
            save_hook=self._save_hook,
            loop=self._loop,
            parent=self,
            attempt=self.attempt,
            resumed=self.resumed,
        )

    def _lineage(self) -> Iterator[NodeContext]:
        ctx: NodeContext | None = self
        while ctx is not None:
            yield ctx
            ctx = ctx._parent

    # -- saving ------------------------------------------------------------------------------

    async def save_state(self, state: dict[str, Any] | None = None) -> None:
        """Checkpoint the node now (a mid-node checkpoint), with ``state`` as this ``ctx.state``.

        Passing ``state`` replaces the contents of ``ctx.state`` (the dict stays
        the same object). When checkpointing is off or ``mid_node`` is false
        only the in-memory state changes. In ``sync`` durability this returns
        once the checkpoint is stored.
        """
        if state is not None and state is not self.state:
            if not isinstance(state, dict):
                raise ConfigError(f"ctx.save_state() takes a dict, not {type(state).__name__}")
            new = dict(state)
            self.state.clear()
            self.state.update(new)
        if self._save_hook is not None:
            await self._save_hook()

    def save_state_sync(self, state: dict[str, Any] | None = None) -> None:
        """:meth:`save_state` for a sync node running in a worker thread.

        It hops to the event loop and blocks until the save is done. On the
        event-loop thread itself use ``await ctx.save_state(...)``.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("this context has no event loop: use await ctx.save_state()")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                "ctx.save_state_sync() would block the event loop: "
                "use await ctx.save_state() in async code"
            )
        asyncio.run_coroutine_threadsafe(self.save_state(state), loop).result()

    # -- human input -------------------------------------------------------------------------

    def interrupt(
        self,
        prompt: str,
        schema: dict[str, Any] | None = None,
        key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Ask a human: return the answer if the run was resumed with one, else pause the node.

        The input's path is ``ctx.path`` (or ``f"{ctx.path}/{key}"``; give
        each question of one context its own ``key``). Without a recorded
        answer this raises :class:`~flows.errors.Interrupt`: the node stops,
        is saved as ``waiting`` with its state, and the run ends
        ``pending_input`` once nothing else can run. Resuming with
        ``inputs={path: answer}`` runs the node again, and this call returns
        the answer (validated against ``schema``). Usable in sync and async code.
        """
        path = self.path if key is None else join_path(self.path, _check_name(key, "key"))
        own = self.state.get("answers")
        if isinstance(own, dict) and path in own:
            return own[path]
        # Answers delivered on resume sit in the node's top-level state (so they are
        # durable before the node runs) or in the runner's mapping; the context that
        # asked keeps its own copy.
        for ancestor in self._lineage():
            found = ancestor.state.get("answers")
            if ancestor is not self and isinstance(found, dict) and path in found:
                return self._record(path, found[path])
        if path in self._answers:
            return self._record(path, self._answers[path])
        raise Interrupt(
            [PendingInput(path=path, prompt=prompt, schema=schema, metadata=dict(metadata or {}))]
        )

    def _record(self, path: str, answer: Any) -> Any:
        _sub_dict(self.state, "answers", self.path)[path] = answer
        return answer

    def answers_under(self, prefix: str | None = None) -> dict[str, Any]:
        """Every answer this context can see whose path is at or below ``prefix`` (its path).

        For nodes that run an inner graph (a sub-flow) and must hand the
        answers on to it.
        """
        prefix = self.path if prefix is None else prefix
        seen: dict[str, Any] = {}

        def take(source: Mapping[str, Any]) -> None:
            for path, answer in source.items():
                if path == prefix or path.startswith((prefix + "/", prefix + "[")):
                    seen.setdefault(path, answer)

        for ctx in self._lineage():
            found = ctx.state.get("answers")
            if isinstance(found, dict):
                take(found)
        take(self._answers)
        return seen

    def __repr__(self) -> str:
        return f"NodeContext(run_id={self.run_id!r}, path={self.path!r})"
