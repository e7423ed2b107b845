"""The :class:`Map` node: one node (or one sub-flow) per item, with bounded concurrency.

State in ``ctx.state``:

* ``items``: the list being mapped, saved so a resume maps the same items even
  if recomputing them would give others;
* ``completed``: ``{index: result}`` of the finished iterations (integer keys:
  the checkpoint codec keeps them integers);
* ``failed``: ``{index: {"type", "message"}}`` of the iterations that raised;
* ``children["[i]"]``: the state of iteration ``i`` while it is unfinished.

Each finished iteration is saved at once (``ctx.save_state``). A resume runs
only the iterations that are missing, failed or waiting for input. When an
iteration raises, no new iteration starts; those already running finish and
are saved, then the node fails, so the resume runs only what is left. An
iteration may ask a human: its path is ``<map>[i]/<inner node>`` (or
``<map>[i]/<inner flow node>`` for a flow per item); the other iterations go
on, and the node pauses once nothing else can run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from checkpoint.errors import ConfigError, FlowpointError
from checkpoint.models import PendingInput
from flows.context import NodeContext
from flows.errors import Interrupt
from flows.flow import Flow
from flows.node import Node
from flows.subflow import run_inner_graph, select

__all__ = ["Map", "MapIterationError"]

logger = logging.getLogger("flows")

OverSpec = str | Callable[[dict[str, Any]], Iterable[Any]]


class MapIterationError(FlowpointError):
    """An iteration of a map raised; ``index`` says which, ``__cause__`` is its exception."""

    def __init__(self, message: str, *, index: int, failed: Sequence[int]) -> None:
        super().__init__(message)
        self.index = index
        self.failed = list(failed)


def _error_doc(exc: BaseException) -> dict[str, str]:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
    return {"type": name, "message": str(exc)}


class Map(Node):
    """Apply ``node`` (a :class:`Node`, or a :class:`~flows.flow.Flow` run as a sub-flow) per item.

    ``over`` gives the items: a callable ``over(inputs)`` or a dotted path into
    the inputs (``"input.docs"``). Each iteration gets ``{"input": flow input,
    "item": item, "index": i}`` (as its inputs, or as the sub-flow's input).
    At most ``max_concurrency`` iterations run at once. Output: the list of
    results in input order (a sub-flow's result is its ``RunResult.output``).

    >>> from flows import FunctionNode
    >>> Map(id="lengths", over="input.docs", node=FunctionNode(id="n", fn=lambda i: len(i["item"])))
    Map(id='lengths', depends=[])
    """

    def __init__(
        self,
        id: str,
        over: OverSpec,
        node: Node | Flow,
        max_concurrency: int = 4,
        depends: Sequence[str] = (),
    ) -> None:
        super().__init__(id, depends)
        if not (isinstance(over, str) or callable(over)):
            raise ConfigError(
                f"map {self.id!r}: over must be a callable(inputs) or a dotted path like "
                f"'input.docs', got {over!r}"
            )
        if not isinstance(node, (Node, Flow)):
            raise ConfigError(f"map {self.id!r}: node must be a Node or a Flow, got {node!r}")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigError(f"map {self.id!r}: max_concurrency must be an integer >= 1")
        self.over = over
        self.node = node
        self.max_concurrency = max_concurrency

    def fingerprint_extra(self) -> str:
        """What the iterations run: the inner node's type and id, or the inner flow's graph."""
        if isinstance(self.node, Flow):
            return f"flow:{self.node.id}:{self.node.graph_fingerprint}"
        return f"node:{self.node.node_type}:{self.node.id}:{self.node.fingerprint_extra()}"

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Refuse a saved state that is not a map's (the map then starts over)."""
        items = state.get("items", [])
        completed = state.get("completed", {})
        if not isinstance(items, list) or not isinstance(completed, dict):
            raise FlowpointError(f"map {self.id!r}: saved items/completed have the wrong type")
        bad = [k for k in completed if not isinstance(k, int) or not 0 <= k < len(items)]
        if bad:
            raise FlowpointError(f"map {self.id!r}: saved results for unknown indices {bad}")
        return state

    def _items(self, inputs: dict[str, Any]) -> list[Any]:
        if isinstance(self.over, str):
            value: Any = select(inputs, self.over, f"map {self.id!r} over")
        else:
            value = self.over(inputs)
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise FlowpointError(
                f"map {self.id!r}: over must give a list of items, got {type(value).__name__}"
            )
        return list(value)

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        state = ctx.state
        if "items" not in state:
            items = self._items(inputs)
            state.update(items=items, completed={}, failed={})
        items = state["items"]
        completed: dict[int, Any] = state.setdefault("completed", {})
        failed: dict[int, Any] = state.setdefault("failed", {})
        todo: Iterator[int] = iter([i for i in range(len(items)) if i not in completed])
        errors: dict[int, BaseException] = {}
        pending: dict[int, list[PendingInput]] = {}

        async def worker() -> None:
            for index in todo:  # one shared iterator: each index goes to exactly one worker
                if errors:
                    return  # a failure: start nothing new, let the running ones finish
                try:
                    result = await self._run_one(index, items[index], inputs, ctx)
                except Interrupt as intr:
                    pending[index] = list(intr.pending_inputs)
                    continue
                except Exception as exc:
                    errors[index] = exc
                    failed[index] = _error_doc(exc)
                    await ctx.save_state()
                    continue
                completed[index] = result
                failed.pop(index, None)
                children = state.get("children")
                if isinstance(children, dict):
                    # The result is kept; the iteration's working state is no longer needed.
                    children.pop(f"[{index}]", None)
                await ctx.save_state()

        workers = [
            asyncio.create_task(worker(), name=f"flowpoint map {ctx.path} worker {w}")
            for w in range(min(self.max_concurrency, len(items)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

        if errors:
            index = min(errors)
            exc = errors[index]
            raise MapIterationError(
                f"map {self.id!r}: iteration {index} failed: {type(exc).__name__}: {exc} "
                f"({len(completed)}/{len(items)} iterations done, failed: {sorted(errors)})",
                index=index,
                failed=sorted(errors),
            ) from exc
        if pending:
            raise Interrupt([p for i in sorted(pending) for p in pending[i]])
        return [completed[i] for i in range(len(items))]

    async def _run_one(
        self, index: int, item: Any, inputs: dict[str, Any], ctx: NodeContext
    ) -> Any:
        child = ctx.child(f"[{index}]")
        item_inputs = {"input": inputs.get("input"), "item": item, "index": index}
        if isinstance(self.node, Flow):
            return await run_inner_graph(self.node, item_inputs, child)
        inner = child.child(self.node.id)
        if inner.state:
            try:
                restored = self.node.restore(inner.state)
            except Exception as exc:
                logger.warning(
                    "%s: the saved state could not be restored (%s: %s); the iteration starts over",
                    inner.path,
                    type(exc).__name__,
                    exc,
                )
                restored = {}
            if restored is not inner.state:
                inner.state.clear()
                inner.state.update(restored)
        return await self.node.execute(item_inputs, inner)
