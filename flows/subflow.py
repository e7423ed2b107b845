"""The :class:`SubFlow` node: a whole flow used as one node of another.

The inner graph runs in the outer node's context. Its node states live in
``ctx.state["node_states"]`` (``{inner node id: NodeState as a dict}``) and
every inner event (a node finished, failed, paused or saved mid-way) is saved
with ``ctx.save_state()``: the parent's checkpoint holds everything, at any
depth. Inner paths are prefixed with the sub-flow's path, so an agent's tool
inside asks at ``"vet/triage/tools/approve#1"``; resuming the parent with that
answer resumes the sub-flow, the agent, and the tool.

The inner flow's own ``checkpoint`` settings and callbacks are not used: the
enclosing run checkpoints it. :func:`run_inner_graph` is the shared engine
(a :class:`~flows.map.Map` uses it to run a flow per item).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from checkpoint.errors import ConfigError, FlowpointError
from checkpoint.models import CheckpointStatus, NodeState
from flows.context import NodeContext
from flows.errors import Interrupt
from flows.flow import Flow
from flows.node import Node
from flows.scheduler import GraphRunner, NodeEvent

__all__ = ["InputSpec", "SubFlow", "SubFlowError", "run_inner_graph", "select"]

logger = logging.getLogger("flows")

InputSpec = str | Callable[[dict[str, Any]], Any]


class SubFlowError(FlowpointError):
    """A node of an inner flow failed; ``__cause__`` is that node's exception."""


def select(inputs: Mapping[str, Any], path: str, owner: str) -> Any:
    """The value at dotted ``path`` in a node's inputs (``"input.docs"``, ``"plan.items.0"``).

    The first segment is a key of ``inputs`` (``input`` or a dependency id);
    the rest walk dict keys, and list indices when a segment is a number.
    """
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ConfigError(f"{owner}: {path!r} is not a dotted path such as 'input.docs'")
    value: Any = inputs
    walked: list[str] = []
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(value) <= index < len(value):
                raise FlowpointError(
                    f"{owner}: {'.'.join(walked) or 'inputs'} has {len(value)} items, "
                    f"no index {index} (path {path!r})"
                )
            value = value[index]
        else:
            where = ".".join(walked) or "inputs"
            keys = sorted(map(str, value)) if isinstance(value, Mapping) else None
            hint = f"keys: {keys}" if keys is not None else f"it is a {type(value).__name__}"
            raise FlowpointError(f"{owner}: {where} has no {part!r} (path {path!r}; {hint})")
        walked.append(part)
    return value


def _dump_state(state: NodeState) -> dict[str, Any]:
    doc = state.model_dump(mode="python")
    # Plain strings, so the nested state reads like the outer one (no enum tags).
    doc["status"] = state.status.value
    return doc


def _load_states(saved: Mapping[str, Any], owner: str) -> dict[str, NodeState]:
    states: dict[str, NodeState] = {}
    for node_id, doc in saved.items():
        try:
            states[node_id] = NodeState.model_validate(doc)
        except Exception as exc:
            raise FlowpointError(
                f"{owner}: the saved state of inner node {node_id!r} is invalid: {exc}"
            ) from exc
    return states


async def run_inner_graph(flow: Flow, flow_input: Any, ctx: NodeContext) -> dict[str, Any]:
    """Run ``flow``'s graph inside ``ctx``; return its sink outputs (its ``RunResult.output``).

    Inner node states are kept in ``ctx.state["node_states"]`` and saved on
    every inner event. Inner pending inputs are raised as one
    :class:`~flows.errors.Interrupt`; an inner failure as :class:`SubFlowError`.
    """
    saved = ctx.state.get("node_states")
    if not isinstance(saved, dict):
        saved = ctx.state["node_states"] = {}
    states = _load_states(saved, ctx.path)

    async def on_event(event: NodeEvent) -> None:
        saved[event.node_id] = _dump_state(event.state)
        await ctx.save_state()

    runner = GraphRunner(
        flow.nodes,
        states,
        ctx.answers_under(),
        on_event,
        run_id=ctx.run_id,
        path_prefix=ctx.path,
        order=flow.order,
    )
    outcome = await runner.run(flow_input)
    if outcome.status is CheckpointStatus.PENDING_INPUT:
        raise Interrupt(outcome.pending_inputs)
    if outcome.status is CheckpointStatus.FAILED:
        first = outcome.first_error
        assert first is not None
        node_id, exc = first
        raise SubFlowError(
            f"{ctx.path}: node {node_id!r} of flow {flow.id!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return {nid: outcome.outputs[nid] for nid in flow.sinks if nid in outcome.outputs}


class SubFlow(Node):
    """A flow used as a node; its output is the inner flow's ``RunResult.output``.

    The inner flow's input is the outer flow's input, or what ``input`` picks
    from this node's inputs: a dotted path (``"plan"``, ``"input.ticket"``) or
    a callable ``input(inputs)``. The graph fingerprint includes the inner
    graph's fingerprint, so resuming after the inner graph changed is refused.

    >>> from flows import FunctionNode
    >>> inner = Flow(id="vet", nodes=[FunctionNode(id="check", fn=lambda i: i["input"] > 0)])
    >>> SubFlow(id="vetting", flow=inner)
    SubFlow(id='vetting', depends=[])
    """

    def __init__(
        self,
        id: str,
        flow: Flow,
        depends: Sequence[str] = (),
        *,
        input: InputSpec | None = None,
    ) -> None:
        super().__init__(id, depends)
        if not isinstance(flow, Flow):
            raise ConfigError(f"sub-flow {self.id!r}: flow must be a Flow, got {flow!r}")
        if input is not None and not (isinstance(input, str) or callable(input)):
            raise ConfigError(f"sub-flow {self.id!r}: input must be a dotted path or a callable")
        self.flow = flow
        self.input = input

    def fingerprint_extra(self) -> str:
        """The inner flow's id and graph fingerprint."""
        return f"{self.flow.id}:{self.flow.graph_fingerprint}"

    def restore(self, state: dict[str, Any]) -> dict[str, Any]:
        """Check that the nested node states still parse (else the sub-flow starts over)."""
        saved = state.get("node_states", {})
        if not isinstance(saved, dict):
            raise SubFlowError(f"sub-flow {self.id!r}: saved node_states is not a dict")
        _load_states(saved, self.id)
        return state

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        if self.input is None:
            flow_input = inputs.get("input")
        elif isinstance(self.input, str):
            flow_input = select(inputs, self.input, f"sub-flow {self.id!r} input")
        else:
            flow_input = self.input(inputs)
        return await run_inner_graph(self.flow, flow_input, ctx)
