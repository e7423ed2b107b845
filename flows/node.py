"""Nodes: the :class:`Node` base class and :class:`FunctionNode`.

A node instance describes a step; it holds no run state. Everything a run
needs to resume lives in ``ctx.state`` (see :mod:`flows.context`), so one
flow object can run many runs at once, and a resumed node starts from its
saved state instead of its Python attributes.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from checkpoint.errors import ConfigError
from checkpoint.ids import validate_id
from flows.context import NodeContext

__all__ = ["FunctionNode", "Node"]

RESERVED_IDS = frozenset({"input"})


class Node(abc.ABC):
    """Base class of every node.

    Subclasses implement :meth:`execute`; they may override :meth:`restore`
    (check or migrate a saved state before it is handed back) and
    :meth:`fingerprint_extra` (what, besides id, type and edges, makes saved
    states incompatible, e.g. a map's inner node type).
    """

    def __init__(self, id: str, depends: Sequence[str] = ()) -> None:
        self.id = validate_id(id, "node id")
        if self.id in RESERVED_IDS:
            raise ConfigError(f"node id {self.id!r} is reserved (inputs[{self.id!r}] is taken)")
        if isinstance(depends, str):
            raise ConfigError(
                f"depends of node {self.id!r} must be a list of node ids, not the string "
                f"{depends!r}"
            )
        deps = tuple(validate_id(d, f"dependency of node {self.id!r}") for d in depends)
        if len(set(deps)) != len(deps):
            raise ConfigError(f"node {self.id!r} lists a dependency twice: {list(deps)}")
        if self.id in deps:
            raise ConfigError(f"node {self.id!r} depends on itself")
        self.depends: tuple[str, ...] = deps

    @property
    def node_type(self) -> str:
        """The type recorded in checkpoints and in the graph fingerprint (the class name)."""
        return type(self).__name__

    @abc.abstractmethod
    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        """Run the node. ``inputs`` is ``{"input": flow input, <dep id>: dep output, ...}``.

        The return value is the node's output: it must be checkpointable
        (JSON types, bytes, datetime, UUID, Decimal, set, tuple, Enum).
        """

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Check a saved ``internal_state`` before a resumed execution; return the state to use.

        Raising makes the node start over with an empty state (a warning is
        logged). Called only when the saved state is not empty.
        """
        return state

    def fingerprint_extra(self) -> str:
        """Extra text for the graph fingerprint (default: nothing)."""
        return ""

    def __repr__(self) -> str:
        return f"{self.node_type}(id={self.id!r}, depends={list(self.depends)!r})"


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _wants_ctx(fn: Callable[..., Any], node_id: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False  # builtins without a signature take the inputs only
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return True
    if len(positional) >= 2:
        return True
    if len(positional) == 1:
        return False
    raise ConfigError(
        f"the function of node {node_id!r} must take the inputs dict: fn(inputs) or "
        f"fn(inputs, ctx), got {fn!r}{sig}"
    )


class FunctionNode(Node):
    """A node running a callable: ``fn(inputs)`` or ``fn(inputs, ctx)``, sync or async.

    Which form is decided once from the signature (two or more positional
    parameters means it takes ``ctx``). Sync callables run in a worker thread
    (``asyncio.to_thread``), so they may block; from there use
    ``ctx.save_state_sync()``. ``ctx.interrupt()`` works in both.

    >>> FunctionNode(id="clean", fn=lambda inputs: inputs["fetch"].strip(), depends=["fetch"])
    FunctionNode(id='clean', depends=['fetch'])
    """

    def __init__(self, id: str, fn: Callable[..., Any], depends: Sequence[str] = ()) -> None:
        super().__init__(id, depends)
        if not callable(fn):
            raise ConfigError(f"fn of node {self.id!r} is not callable: {fn!r}")
        self.fn = fn
        self.is_async = _is_async(fn)
        self.takes_ctx = _wants_ctx(fn, self.id)

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        args: tuple[Any, ...] = (inputs, ctx) if self.takes_ctx else (inputs,)
        if self.is_async:
            return await self.fn(*args)
        result = await asyncio.to_thread(functools.partial(self.fn, *args))
        if inspect.isawaitable(result):
            # A sync wrapper returning a coroutine (e.g. a decorated async function).
            return await result
        return result
