"""Flow construction: ids, edges, cycles, fingerprints, FunctionNode call forms."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from checkpoint import CheckpointConfig, ConfigError, InvalidIdError
from flows import EventLoopRunningError, Flow, FunctionNode, Node, NodeContext
from flows.fingerprint import graph_fingerprint
from flows.scheduler import topological_order


def ident(inputs: dict[str, Any]) -> Any:
    return inputs["input"]


def test_unknown_dependency_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"depends on unknown node\(s\) \['nope'\]"):
        Flow(id="f", nodes=[FunctionNode(id="a", fn=ident, depends=["nope"])])


def test_cycle_is_a_config_error() -> None:
    nodes = [
        FunctionNode(id="a", fn=ident, depends=["c"]),
        FunctionNode(id="b", fn=ident, depends=["a"]),
        FunctionNode(id="c", fn=ident, depends=["b"]),
        FunctionNode(id="d", fn=ident),
    ]
    with pytest.raises(ConfigError, match=r"cycle through \['a', 'b', 'c'\]"):
        Flow(id="f", nodes=nodes)


def test_duplicate_and_invalid_ids_are_refused() -> None:
    with pytest.raises(ConfigError, match="two nodes have the id 'a'"):
        Flow(id="f", nodes=[FunctionNode(id="a", fn=ident), FunctionNode(id="a", fn=ident)])
    with pytest.raises(InvalidIdError):
        FunctionNode(id="a/b", fn=ident)
    with pytest.raises(InvalidIdError):
        Flow(id="bad id", nodes=[FunctionNode(id="a", fn=ident)])
    with pytest.raises(ConfigError, match="reserved"):
        FunctionNode(id="input", fn=ident)
    with pytest.raises(ConfigError, match="depends on itself"):
        FunctionNode(id="a", fn=ident, depends=["a"])
    with pytest.raises(ConfigError, match="list of node ids"):
        FunctionNode(id="a", fn=ident, depends="b")
    with pytest.raises(ConfigError, match="no nodes"):
        Flow(id="f", nodes=[])
    with pytest.raises(ConfigError, match="exclude_nodes"):
        Flow(
            id="f",
            nodes=[FunctionNode(id="a", fn=ident)],
            checkpoint=CheckpointConfig(exclude_nodes=["zz"]),
        )


def test_topological_order_keeps_declaration_order_among_ready_nodes() -> None:
    nodes = [
        FunctionNode(id="d", fn=ident, depends=["b", "c"]),
        FunctionNode(id="b", fn=ident, depends=["a"]),
        FunctionNode(id="c", fn=ident, depends=["a"]),
        FunctionNode(id="a", fn=ident),
    ]
    assert topological_order(nodes) == ["a", "b", "c", "d"]
    flow = Flow(id="f", nodes=nodes)
    assert flow.sinks == ["d"]


def test_fingerprint_covers_ids_types_edges_and_extra_but_not_order_or_functions() -> None:
    a = FunctionNode(id="a", fn=ident)
    b = FunctionNode(id="b", fn=ident, depends=["a"])
    base = graph_fingerprint([a, b])
    assert graph_fingerprint([b, a]) == base
    assert graph_fingerprint([a, FunctionNode(id="b", fn=lambda i: 1, depends=["a"])]) == base
    assert graph_fingerprint([a, FunctionNode(id="b", fn=ident)]) != base
    assert graph_fingerprint([a, FunctionNode(id="c", fn=ident, depends=["a"])]) != base

    class Other(FunctionNode):
        pass

    assert graph_fingerprint([a, Other(id="b", fn=ident, depends=["a"])]) != base

    class Extra(FunctionNode):
        def fingerprint_extra(self) -> str:
            return "inner=Agent"

    assert graph_fingerprint([a, Extra(id="b", fn=ident, depends=["a"])]) != graph_fingerprint(
        [a, Other(id="b", fn=ident, depends=["a"])]
    )
    assert len(base) == 64


def test_function_node_call_forms_are_decided_from_the_signature() -> None:
    def one(inputs: dict[str, Any]) -> int:
        return 1

    def two(inputs: dict[str, Any], ctx: NodeContext) -> int:
        return 2

    async def atwo(inputs: dict[str, Any], ctx: NodeContext) -> int:
        return 3

    class Callable_:
        async def __call__(self, inputs: dict[str, Any]) -> int:
            return 4

    def none() -> int:
        return 0

    assert not FunctionNode(id="a", fn=one).takes_ctx
    assert FunctionNode(id="a", fn=two).takes_ctx
    node = FunctionNode(id="a", fn=atwo)
    assert node.takes_ctx and node.is_async
    obj = FunctionNode(id="a", fn=Callable_())
    assert obj.is_async and not obj.takes_ctx
    assert FunctionNode(id="a", fn=functools.partial(two)).takes_ctx
    with pytest.raises(ConfigError, match="must take the inputs dict"):
        FunctionNode(id="a", fn=none)
    with pytest.raises(ConfigError, match="not callable"):
        FunctionNode(id="a", fn=42)  # type: ignore[arg-type]


async def test_sync_functions_run_in_a_thread_async_ones_on_the_loop() -> None:
    import threading

    main = threading.get_ident()
    seen: dict[str, int] = {}

    def sync_fn(inputs: dict[str, Any]) -> str:
        seen["sync"] = threading.get_ident()
        return "s"

    async def async_fn(inputs: dict[str, Any], ctx: NodeContext) -> str:
        seen["async"] = threading.get_ident()
        return str(inputs["s"]) + ctx.node_id

    flow = Flow(
        id="f",
        nodes=[FunctionNode(id="s", fn=sync_fn), FunctionNode(id="a", fn=async_fn, depends=["s"])],
    )
    result = await flow.run(None)
    assert result.output == {"a": "sa"}
    assert seen["async"] == main
    assert seen["sync"] != main


def test_node_base_requires_execute_and_reports_its_type() -> None:
    with pytest.raises(TypeError):
        Node(id="x")  # type: ignore[abstract]

    class Echo(Node):
        async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
            return inputs["input"]

    echo = Echo(id="e")
    assert echo.node_type == "Echo"
    assert echo.restore({"k": 1}) == {"k": 1}
    assert Flow(id="f", nodes=[echo]).run_sync(5).output == {"e": 5}


async def test_run_sync_inside_a_running_loop_is_a_clear_error() -> None:
    flow = Flow(id="f", nodes=[FunctionNode(id="a", fn=ident)])
    with pytest.raises(EventLoopRunningError, match=r"await flow.run"):
        flow.run_sync(1)
    assert asyncio.get_running_loop() is not None


def test_checkpoint_config_may_be_a_mapping() -> None:
    flow = Flow(id="f", nodes=[FunctionNode(id="a", fn=ident)], checkpoint={"enabled": True})
    assert flow.checkpoint is not None and flow.checkpoint.enabled
    assert not flow.checkpointing  # enabled but no store
    with pytest.raises(ConfigError, match="invalid checkpoint config"):
        Flow(id="f", nodes=[FunctionNode(id="a", fn=ident)], checkpoint={"durability": "never"})
