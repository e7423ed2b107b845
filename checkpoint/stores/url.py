"""Open a store from a URL, for the CLI and YAML flows.

==============================================  ===================
``memory://``                                   :class:`MemoryStore`
``file:///var/lib/ckpts`` or ``file:ckpts``     :class:`FileStore`
``sqlite:///path/ckpts.db`` or ``sqlite:x.db``  :class:`SQLiteStore`
``redis://127.0.0.1:6379/0``                    :class:`RedisStore`
``postgresql://user@host/db``                   :class:`PostgresStore`
``sidecar://127.0.0.1:4318`` or ``http://...``  :class:`SidecarStore`
==============================================  ===================
"""

from __future__ import annotations

from urllib.parse import urlsplit

from checkpoint.errors import ConfigError
from checkpoint.store import BaseStore

__all__ = ["store_from_url"]


def _path_of(url: str, scheme: str) -> str:
    rest = url[len(scheme) + 1 :]
    # file:///abs -> /abs ; file:rel -> rel ; file://rel -> rel
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ConfigError(f"store URL {url!r} names no path")
    return rest


def store_from_url(url: str) -> BaseStore:
    """Build the store a URL names; raises :class:`ConfigError` for an unknown scheme.

    >>> type(store_from_url("memory://")).__name__
    'MemoryStore'
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from checkpoint.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "file":
        from checkpoint.stores.file import FileStore

        return FileStore(_path_of(url, "file"))
    if scheme == "sqlite":
        from checkpoint.stores.sqlite import SQLiteStore

        return SQLiteStore(_path_of(url, "sqlite"))
    if scheme in ("redis", "rediss"):
        from checkpoint.stores.redis import RedisStore

        return RedisStore(url)
    if scheme in ("postgres", "postgresql"):
        from checkpoint.stores.postgres import PostgresStore

        return PostgresStore(url)
    if scheme in ("sidecar", "http", "https"):
        from checkpoint.stores.sidecar import SidecarStore

        base = "http" + url[len("sidecar") :] if scheme == "sidecar" else url
        return SidecarStore(base)
    raise ConfigError(
        f"unknown store URL {url!r}: use memory://, file:, sqlite:, redis://, "
        "postgresql:// or sidecar://host:port"
    )
