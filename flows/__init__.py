"""The Flowpoint workflow runtime: flows of nodes that checkpoint and resume.

>>> from flows import Flow, FunctionNode
>>> flow = Flow(id="hello", nodes=[FunctionNode(id="greet", fn=lambda i: f"hi {i['input']}")])
>>> flow.run_sync("ann").output
{'greet': 'hi ann'}

Built-in nodes: :class:`FunctionNode`, :class:`Agent` (an LLM with tools,
checkpointed every loop), :class:`Map` (a node or a sub-flow per item),
:class:`HumanInput` and :class:`SubFlow`; :func:`load_yaml` builds flows from
YAML files (see :mod:`flows.yaml_loader`).

Writing a node type: subclass :class:`Node` and implement
``async execute(inputs, ctx)``; keep resumable progress in ``ctx.state`` and
call ``await ctx.save_state()`` after each unit of work. Composite nodes build
on the same pieces:

* per-item work (a map) uses ``ctx.child(f"[{i}]")``: its state nests in
  ``ctx.state["children"]`` and its input paths read ``"<id>[i]/..."``;
* an inner graph (a sub-flow) runs ``GraphRunner(nodes, node_states,
  ctx.answers_under(), on_event, run_id=ctx.run_id, path_prefix=ctx.path)``,
  keeps the inner node states in ``ctx.state`` from ``on_event`` and calls
  ``ctx.save_state()`` there; an inner ``pending_input`` outcome is re-raised
  as ``Interrupt(outcome.pending_inputs)``;
* ``fingerprint_extra()`` adds what makes saved states incompatible (the inner
  node type, the inner graph's fingerprint).
"""

from flows.agent import Agent
from flows.context import NodeContext
from flows.errors import (
    CheckpointSaveError,
    EventLoopRunningError,
    Interrupt,
    NodeExecutionError,
    RunExistsError,
)
from flows.flow import Flow, RunResult
from flows.human import HumanInput
from flows.map import Map
from flows.node import FunctionNode, Node
from flows.scheduler import GraphOutcome, GraphRunner, NodeEvent
from flows.subflow import SubFlow
from flows.yaml_loader import load_yaml

__all__ = [
    "Agent",
    "CheckpointSaveError",
    "EventLoopRunningError",
    "Flow",
    "FunctionNode",
    "GraphOutcome",
    "GraphRunner",
    "HumanInput",
    "Interrupt",
    "Map",
    "Node",
    "NodeContext",
    "NodeEvent",
    "NodeExecutionError",
    "RunExistsError",
    "RunResult",
    "SubFlow",
    "load_yaml",
]
