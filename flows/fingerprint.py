"""The graph fingerprint stored in every checkpoint.

It covers what decides whether saved node states still fit the flow: node
ids, node types, edges, and whatever a node adds through
``fingerprint_extra()`` (a map's inner node type, a sub-flow's own
fingerprint). It deliberately leaves out function bodies, prompts and models:
fixing a bug in a node and resuming is the point of checkpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from checkpoint import codec

if TYPE_CHECKING:
    from flows.node import Node

__all__ = ["graph_fingerprint"]


def graph_fingerprint(nodes: Iterable[Node]) -> str:
    """Hex SHA-256 over the sorted ``(id, node_type, sorted depends, fingerprint_extra())``."""
    entries = sorted([n.id, n.node_type, sorted(n.depends), n.fingerprint_extra()] for n in nodes)
    return hashlib.sha256(codec.canonical_json(entries)).hexdigest()
