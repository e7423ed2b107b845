"""The conformance suite's fixtures: one fresh, empty store per test, for every store kind.

``store`` is parametrized over ``STORE_IDS``; each id resolves to the fixture
``<id>_store``. This module defines the local ones (memory, file, sqlite,
redis); ``postgres_store`` and ``sidecar_store`` come from
``tests/fixtures/postgres.py`` and ``tests/fixtures/sidecar.py``.

A store whose fixture is not defined, or whose service is unreachable, is
skipped with the reason, unless ``FLOWPOINT_REQUIRE_SERVICES=1`` (CI), where
it fails instead.

``corrupt`` is an async hook ``corrupt(store, run_id, seq)`` that damages
the stored payload of one checkpoint in place. For postgres and sidecar it
comes from a fixture the owners of those stores define, looked up in this
order: ``<id>_corrupt_stored_payload``, then ``corrupt_stored_payload``; each
returns such an async callable.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from checkpoint.stores.file import FileStore
from checkpoint.stores.memory import MemoryStore
from checkpoint.stores.redis import RedisStore
from checkpoint.stores.sqlite import SQLiteStore

STORE_IDS = ["memory", "file", "sqlite", "redis", "postgres", "sidecar"]
REDIS_URL = os.environ.get("FLOWPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

Corrupter = Callable[[Any, str, int], Awaitable[None]]


def require_services() -> bool:
    """True when missing services must fail the run instead of skipping (CI)."""
    return os.environ.get("FLOWPOINT_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when ``FLOWPOINT_REQUIRE_SERVICES=1``."""
    if require_services():
        pytest.fail(f"{reason} (FLOWPOINT_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def _lookup(request: pytest.FixtureRequest, name: str) -> Any:
    """``request.getfixturevalue(name)``, or None when no fixture of that name exists."""
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != name:
            raise  # the fixture exists, one of its own dependencies is missing
        return None


@pytest.fixture(params=STORE_IDS)
def store_id(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(request: pytest.FixtureRequest, store_id: str) -> Any:
    """A fresh, empty store of kind ``store_id``."""
    name = f"{store_id}_store"
    value = _lookup(request, name)
    if value is None:
        unavailable(f"the fixture {name} is not defined yet, so the {store_id} store is not tested")
    return value


# -- local stores ----------------------------------------------------------------------------


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore()
    yield store
    await store.close()


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[FileStore]:
    store = FileStore(tmp_path / "ckpts")
    yield store
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "ckpts.db")
    yield store
    await store.close()


async def _redis_reachable(url: str) -> str | None:
    """None when Redis answers PING at ``url``, else why not."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        await client.ping()
        return None
    except Exception as exc:  # any failure means: no usable Redis here
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    """A RedisStore on a unique key prefix; every key under it is deleted afterwards."""
    problem = await _redis_reachable(REDIS_URL)
    if problem is not None:
        unavailable(
            f"Redis is unreachable at {REDIS_URL} ({problem}); start redis-server on "
            "127.0.0.1:6379 or set FLOWPOINT_TEST_REDIS_URL"
        )
    prefix = f"fptest:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        await delete_redis_prefix(prefix)


async def delete_redis_prefix(prefix: str) -> int:
    """Delete every key under ``prefix`` (test teardown); returns how many."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


# -- corruption hooks ------------------------------------------------------------------------


def flip(blob: bytes) -> bytes:
    """``blob`` with one byte in the middle changed."""
    middle = len(blob) // 2
    return blob[:middle] + bytes([blob[middle] ^ 0xFF]) + blob[middle + 1 :]


async def corrupt_memory(store: MemoryStore, run_id: str, seq: int) -> None:
    record = store._checkpoints[run_id][seq]
    record.blob = flip(record.blob)


async def corrupt_file(store: FileStore, run_id: str, seq: int) -> None:
    path = store.checkpoint_path(run_id, seq)
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    path.write_bytes(data[:header_end] + flip(data[header_end:]))


async def corrupt_sqlite(store: SQLiteStore, run_id: str, seq: int) -> None:
    with sqlite3.connect(store.path) as conn:
        (blob,) = conn.execute(
            "SELECT blob FROM checkpoints WHERE run_id = ? AND seq = ?", (run_id, seq)
        ).fetchone()
        conn.execute(
            "UPDATE checkpoints SET blob = ? WHERE run_id = ? AND seq = ?",
            (flip(bytes(blob)), run_id, seq),
        )
    conn.close()


async def corrupt_redis(store: RedisStore, run_id: str, seq: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        key = store.key("blobs", run_id)
        blob = await client.hget(key, str(seq))
        assert blob is not None, f"no stored blob at {key} {seq}"
        await client.hset(key, str(seq), flip(blob))
    finally:
        await client.aclose()


_LOCAL_CORRUPTERS: dict[str, Corrupter] = {
    "memory": corrupt_memory,  # type: ignore[dict-item]
    "file": corrupt_file,  # type: ignore[dict-item]
    "sqlite": corrupt_sqlite,  # type: ignore[dict-item]
    "redis": corrupt_redis,  # type: ignore[dict-item]
}


@pytest.fixture
def corrupt(request: pytest.FixtureRequest, store_id: str) -> Corrupter:
    """``await corrupt(store, run_id, seq)`` damages that checkpoint's stored payload."""
    if store_id in _LOCAL_CORRUPTERS:
        return _LOCAL_CORRUPTERS[store_id]
    for name in (f"{store_id}_corrupt_stored_payload", "corrupt_stored_payload"):
        hook = _lookup(request, name)
        if hook is not None:
            return hook  # type: ignore[no-any-return]
    unavailable(
        f"no corruption hook for the {store_id} store: define the fixture "
        f"{store_id}_corrupt_stored_payload (or corrupt_stored_payload) returning "
        "async (store, run_id, seq) -> None"
    )
