"""The graph runner: runs a DAG of nodes on asyncio, given the states of an earlier attempt.

:class:`GraphRunner` knows nothing about stores or checkpoints. It takes the
nodes, the node states restored from a checkpoint (``{}`` for a fresh run),
the human answers to deliver, and an ``on_event`` callback it awaits when a
node finishes, fails, pauses for input, or saves its state mid-way. The flow
turns those events into checkpoints; a sub-flow node turns them into its own
``ctx.save_state`` calls.

Scheduling rules:

* every node whose dependencies have succeeded starts at once, concurrently;
* a ``succeeded`` state is final: that node is not executed again and its
  saved output is what its dependants receive; every other state (failed,
  waiting, running) runs again;
* when a node fails, the nodes already running are allowed to finish (their
  results are recorded) and no new node starts; the outcome is ``failed``;
* when a node asks for input (``ctx.interrupt``), independent nodes keep
  running and its dependants wait; once nothing can run the outcome is
  ``pending_input`` with every pending input;
* ``on_event`` runs in the node's task, before its dependants start, so a
  checkpoint saved there is durable before anything depends on the node.
* with a ``wait_for_input`` hook, a node that pauses may get its answers while
  the run is still going: the hook waits for them and the node runs again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.trace import Status, StatusCode, use_span

from checkpoint.errors import ConfigError
from checkpoint.models import (
    CheckpointStatus,
    ErrorInfo,
    NodeState,
    NodeStatus,
    PendingInput,
    utcnow,
)
from flows.context import NodeContext, join_path
from flows.errors import Interrupt
from flows.node import Node
from instrumentation.tracing import node_span

__all__ = [
    "EventKind",
    "GraphOutcome",
    "GraphRunner",
    "NodeEvent",
    "OnEvent",
    "WaitForInput",
    "topological_order",
]

logger = logging.getLogger("flows")

EventKind = Literal["finished", "failed", "interrupted", "state_saved"]


@dataclass(slots=True)
class NodeEvent:
    """Something that happened to a node; ``state`` is its state at that moment.

    ``state`` holds live references (output, internal state): a consumer that
    keeps it must copy or encode it before returning.
    """

    kind: EventKind
    node_id: str
    state: NodeState
    error: BaseException | None = None
    pending_inputs: tuple[PendingInput, ...] = ()


OnEvent = Callable[[NodeEvent], Awaitable[None]]
#: Called after a node paused for input (its "interrupted" event is already out). It may
#: wait for answers and returns ``{path: answer}`` (empty: none came); the runner records
#: them in the node's ``ctx.state["answers"]`` and runs the node again, in this process.
WaitForInput = Callable[[NodeEvent], Awaitable[Mapping[str, Any]]]


@dataclass(slots=True)
class GraphOutcome:
    """How a graph run ended."""

    status: CheckpointStatus
    states: dict[str, NodeState]
    outputs: dict[str, Any]
    pending_inputs: list[PendingInput]
    executed: list[str]
    skipped: list[str]
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def first_error(self) -> tuple[str, BaseException] | None:
        """The first node failure (by completion order), if any."""
        for node_id, error in self.errors.items():
            return node_id, error
        return None


@dataclass(slots=True)
class _Result:
    kind: Literal["succeeded", "failed", "interrupted"]
    output: Any = None
    error: BaseException | None = None
    pending: tuple[PendingInput, ...] = ()


def topological_order(nodes: Sequence[Node]) -> list[str]:
    """Node ids in dependency order (declaration order among ready nodes).

    Raises :class:`ConfigError` on duplicate ids, unknown dependencies and cycles.
    """
    by_id: dict[str, Node] = {}
    for node in nodes:
        if not isinstance(node, Node):
            raise ConfigError(f"flow nodes must be Node instances, got {node!r}")
        if node.id in by_id:
            raise ConfigError(f"two nodes have the id {node.id!r}: node ids must be unique")
        by_id[node.id] = node
    for node in nodes:
        unknown = [d for d in node.depends if d not in by_id]
        if unknown:
            raise ConfigError(
                f"node {node.id!r} depends on unknown node(s) {unknown}; known ids: {sorted(by_id)}"
            )
    indegree = {n.id: len(n.depends) for n in nodes}
    dependants: dict[str, list[str]] = {n.id: [] for n in nodes}
    for node in nodes:
        for dep in node.depends:
            dependants[dep].append(node.id)
    ready = [n.id for n in nodes if indegree[n.id] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for nxt in dependants[current]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(nodes):
        stuck = sorted(nid for nid, deg in indegree.items() if deg > 0)
        raise ConfigError(f"the flow graph has a cycle through {stuck}")
    return order


class GraphRunner:
    """Runs ``nodes`` once, resuming from ``node_states``; see the module docstring.

    ``answers`` maps input paths to human answers; contexts look them up when
    a node asks. ``path_prefix`` places the nodes under an enclosing node's path
    (a sub-flow). ``on_event`` None means nobody listens: no state is saved.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        node_states: Mapping[str, NodeState] | None = None,
        answers: Mapping[str, Any] | None = None,
        on_event: OnEvent | None = None,
        *,
        run_id: str,
        path_prefix: str = "",
        order: Sequence[str] | None = None,
        wait_for_input: WaitForInput | None = None,
    ) -> None:
        self.order = list(order) if order is not None else topological_order(nodes)
        self.nodes = {n.id: n for n in nodes}
        self._position = {nid: i for i, nid in enumerate(self.order)}
        self._dependants: dict[str, list[str]] = {nid: [] for nid in self.order}
        for node in nodes:
            for dep in node.depends:
                self._dependants[dep].append(node.id)
        self.node_states = dict(node_states or {})
        self.answers: Mapping[str, Any] = answers if answers is not None else {}
        self.on_event = on_event
        self.run_id = run_id
        self.path_prefix = path_prefix
        self.wait_for_input = wait_for_input

    async def run(self, flow_input: Any) -> GraphOutcome:
        """Execute every node that has not succeeded yet; return how it ended.

        Node exceptions do not propagate: they end the run ``failed`` (see
        :attr:`GraphOutcome.errors`). Exceptions raised by ``on_event`` (a
        fatal save error) stop the run and propagate once running nodes finish.
        """
        states = {nid: st for nid, st in self.node_states.items() if nid in self.nodes}
        done = {nid for nid, st in states.items() if st.status is NodeStatus.SUCCEEDED}
        outputs: dict[str, Any] = {nid: states[nid].output for nid in self.order if nid in done}
        skipped = [nid for nid in self.order if nid in done]
        executed: list[str] = []
        errors: dict[str, BaseException] = {}
        waiting: dict[str, tuple[PendingInput, ...]] = {}
        running: dict[asyncio.Task[_Result], str] = {}
        fatal: BaseException | None = None
        # Dependencies not yet satisfied, per node still to run; ready ones start in graph order.
        missing = {
            nid: sum(1 for dep in self.nodes[nid].depends if dep not in done)
            for nid in self.order
            if nid not in done
        }
        ready = [nid for nid, count in missing.items() if count == 0]

        try:
            while True:
                if ready and not errors and fatal is None:
                    ready.sort(key=self._position.__getitem__)
                    for nid in ready:
                        executed.append(nid)
                        task = asyncio.create_task(
                            self._execute(nid, flow_input, outputs, states),
                            name=f"flowpoint node {nid}",
                        )
                        running[task] = nid
                    ready = []
                if not running:
                    break
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    nid = running.pop(task)
                    if task.cancelled():
                        fatal = fatal or asyncio.CancelledError(f"node {nid} was cancelled")
                        continue
                    exc = task.exception()
                    if exc is not None:
                        fatal = fatal or exc
                        continue
                    result = task.result()
                    if result.kind == "succeeded":
                        done.add(nid)
                        outputs[nid] = result.output
                        for dependant in self._dependants[nid]:
                            missing[dependant] -= 1
                            if missing[dependant] == 0:
                                ready.append(dependant)
                    elif result.kind == "failed":
                        assert result.error is not None
                        errors[nid] = result.error
                    else:
                        waiting[nid] = result.pending
        finally:
            if running:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        if fatal is not None:
            raise fatal

        pending = [p for nid in self.order if nid in waiting for p in waiting[nid]]
        if errors:
            status = CheckpointStatus.FAILED
        elif len(done) == len(self.nodes):
            status = CheckpointStatus.COMPLETED
        else:
            status = CheckpointStatus.PENDING_INPUT
        return GraphOutcome(
            status=status,
            states=states,
            outputs=outputs,
            pending_inputs=pending,
            executed=executed,
            skipped=skipped,
            errors=errors,
        )

    def _restored_state(self, node: Node, prior: NodeState | None) -> dict[str, Any]:
        if prior is None or not prior.internal_state:
            return {}
        try:
            state = node.restore(prior.internal_state)
            if not isinstance(state, dict):
                raise TypeError(f"restore() returned {type(state).__name__}, not a dict")
            return state
        except Exception as exc:
            logger.warning(
                "run %s: node %s could not restore its saved state (%s: %s); "
                "it re-executes from scratch",
                self.run_id,
                node.id,
                type(exc).__name__,
                exc,
            )
            return {}

    async def _execute(
        self,
        nid: str,
        flow_input: Any,
        outputs: dict[str, Any],
        states: dict[str, NodeState],
    ) -> _Result:
        node = self.nodes[nid]
        prior = states.get(nid)
        state = self._restored_state(node, prior)
        attempts = (prior.attempts if prior is not None else 0) + 1
        started_at = utcnow()
        inputs: dict[str, Any] = {"input": flow_input}
        for dep in node.depends:
            inputs[dep] = outputs[dep]

        on_event = self.on_event
        save_hook = None
        if on_event is not None:

            async def save_hook() -> None:
                running_state = NodeState(
                    node_id=nid,
                    node_type=node.node_type,
                    status=NodeStatus.RUNNING,
                    input=inputs,
                    internal_state=state,
                    attempts=attempts,
                    started_at=started_at,
                )
                await on_event(NodeEvent("state_saved", nid, running_state))

        ctx = NodeContext.root(
            run_id=self.run_id,
            node_id=nid,
            path=join_path(self.path_prefix, nid),
            state=state,
            answers=self.answers,
            save_hook=save_hook,
            attempt=attempts,
            resumed=prior is not None,
        )
        while True:
            result: _Result
            with node_span(nid, node.node_type) as span:
                try:
                    output = await node.execute(inputs, ctx)
                    result = _Result("succeeded", output=output)
                except Interrupt as intr:
                    result = _Result("interrupted", pending=tuple(intr.pending_inputs))
                    span.set_attribute(
                        "flowpoint.pending_inputs", [p.path for p in intr.pending_inputs]
                    )
                except Exception as exc:
                    result = _Result("failed", error=exc)
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

            # The context may have replaced nothing but mutated `state` in place: it is ctx.state.
            final = NodeState(
                node_id=nid,
                node_type=node.node_type,
                status={
                    "succeeded": NodeStatus.SUCCEEDED,
                    "failed": NodeStatus.FAILED,
                    "interrupted": NodeStatus.WAITING,
                }[result.kind],
                input=inputs,
                output=result.output,
                error=(
                    ErrorInfo(type=_qualname(result.error), message=str(result.error))
                    if result.error is not None
                    else None
                ),
                internal_state=ctx.state,
                attempts=attempts,
                started_at=started_at,
                finished_at=utcnow(),
            )
            states[nid] = final
            kind: EventKind = {
                "succeeded": "finished",
                "failed": "failed",
                "interrupted": "interrupted",
            }[result.kind]  # type: ignore[assignment]
            event = NodeEvent(kind, nid, final, result.error, result.pending)
            if on_event is not None:
                # The checkpoint of the node's end is a child of the node's (ended) span, so
                # a trace shows node -> checkpoint.save -> the sidecar's commit.
                with use_span(span, record_exception=False, set_status_on_exception=False):
                    await on_event(event)
            if result.kind != "interrupted" or self.wait_for_input is None:
                return result
            arrived = await self.wait_for_input(event)
            if not arrived:
                return result
            recorded = ctx.state.get("answers")
            if not isinstance(recorded, dict):
                recorded = ctx.state["answers"] = {}
            recorded.update(arrived)


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
