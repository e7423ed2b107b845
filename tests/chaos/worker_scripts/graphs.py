"""The flows the chaos worker runs, shared by the worker process and the tests.

Each node's output is ``{"node", "pid", "value"}``: ``value`` is the node's weight plus
the values of its dependencies, so the tests can compute every node's expected value
without running anything, and ``pid`` names the process whose execution produced it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

Graph = Sequence[tuple[str, Sequence[str]]]


def _chain(prefix: str, count: int, first_deps: Sequence[str]) -> list[tuple[str, list[str]]]:
    nodes: list[tuple[str, list[str]]] = []
    deps = list(first_deps)
    for i in range(1, count + 1):
        node_id = f"{prefix}{i:02d}"
        nodes.append((node_id, deps))
        deps = [node_id]
    return nodes


def _fan(prefix: str, count: int, deps: Sequence[str]) -> list[tuple[str, list[str]]]:
    return [(f"{prefix}{i:02d}", list(deps)) for i in range(1, count + 1)]


def _chaos30() -> list[tuple[str, list[str]]]:
    """30 nodes: chains, a 4-wide and a 3-wide fan-out/fan-in, three branches of unequal length."""
    nodes = _chain("a", 3, [])  # a01 -> a02 -> a03
    nodes += _fan("b", 4, ["a03"])  # b01..b04 in parallel
    nodes += _chain("c", 4, [f"b{i:02d}" for i in range(1, 5)])  # c01 joins them; c01..c04
    nodes += _chain("d", 2, ["c04"])  # three branches of 2, 3 and 1 nodes
    nodes += _chain("e", 3, ["c04"])
    nodes += _chain("f", 1, ["c04"])
    nodes += _chain("g", 5, ["d02", "e03", "f01"])  # g01 joins the branches; g01..g05
    nodes += _fan("h", 3, ["g05"])  # h01..h03 in parallel
    nodes += _chain("z", 5, ["h01", "h02", "h03"])  # z01 joins; z01..z05
    return nodes


GRAPHS: Mapping[str, Graph] = {
    "chaos30": _chaos30(),
    "linear5": _chain("n", 5, []),
}


def weight(node_id: str) -> int:
    """A node's own contribution to its value (stable across processes)."""
    return zlib.crc32(node_id.encode()) % 97 + 1


def sleep_seconds(node_id: str) -> float:
    """How long a node "works": 10-39 ms, stable per node."""
    return (10 + zlib.crc32(b"sleep:" + node_id.encode()) % 30) / 1000.0


def expected_values(graph: Graph) -> dict[str, int]:
    """Every node's value when each node ran (once or more) with its dependencies' outputs."""
    values: dict[str, int] = {}
    for node_id, deps in graph:  # declared in dependency order
        values[node_id] = weight(node_id) + sum(values[d] for d in deps)
    return values


def sinks(graph: Graph) -> list[str]:
    """The nodes nothing depends on (their outputs are the run's output)."""
    used = {d for _, deps in graph for d in deps}
    return [node_id for node_id, _ in graph if node_id not in used]
