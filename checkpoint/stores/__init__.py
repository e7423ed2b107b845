"""Store implementations. Each passes the conformance suite in ``tests/conformance/``.

Heavier stores are imported on first use, so ``import checkpoint`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from checkpoint.stores.file import FileStore
    from checkpoint.stores.memory import MemoryStore
    from checkpoint.stores.postgres import PostgresStore
    from checkpoint.stores.redis import RedisStore
    from checkpoint.stores.sidecar import SidecarStore
    from checkpoint.stores.sqlite import SQLiteStore
    from checkpoint.stores.url import store_from_url

__all__ = [
    "FileStore",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "SidecarStore",
    "store_from_url",
]

_WHERE = {
    "MemoryStore": "checkpoint.stores.memory",
    "FileStore": "checkpoint.stores.file",
    "SQLiteStore": "checkpoint.stores.sqlite",
    "RedisStore": "checkpoint.stores.redis",
    "PostgresStore": "checkpoint.stores.postgres",
    "SidecarStore": "checkpoint.stores.sidecar",
    "store_from_url": "checkpoint.stores.url",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'checkpoint.stores' has no attribute {name!r}")
