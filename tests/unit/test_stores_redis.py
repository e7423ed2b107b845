"""RedisStore specifics: key layout, cleanup, the server's clock, unreachable servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from checkpoint import StoreUnavailableError
from checkpoint.stores.redis import RedisStore
from checkpoint.stores.rules import from_micros
from tests.conformance.builders import checkpoint
from tests.conformance.conftest import REDIS_URL, _redis_reachable, delete_redis_prefix, unavailable


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    problem = await _redis_reachable(REDIS_URL)
    if problem is not None:
        unavailable(f"Redis is unreachable at {REDIS_URL} ({problem})")
    value = f"fptest:{uuid.uuid4().hex}:"
    yield value
    await delete_redis_prefix(value)


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(REDIS_URL)
    yield c
    await c.aclose()


async def _keys(client: aioredis.Redis, prefix: str) -> set[str]:
    return {k.decode()[len(prefix) :] async for k in client.scan_iter(match=f"{prefix}*")}


async def test_key_layout_and_delete_cleans_up(prefix: str, client: aioredis.Redis) -> None:
    store = RedisStore(REDIS_URL, prefix=prefix)
    try:
        await store.put(checkpoint("run-1", 0, tenant_id="acme", pending=["review"]))
        await store.put(checkpoint("run-1", 1, tenant_id="acme", pending=["review"]))
        await store.submit_input("run-1", "review", True)
        await store.consume_inputs("run-1", ["review"])
        await store.put(checkpoint("run-2", 0, tenant_id="acme"))
        assert await _keys(client, prefix) == {
            "run:run-1",
            "blobs:run-1",
            "meta:run-1",
            "seqs:run-1",
            "inputs:run-1",
            "consumed:run-1",
            "run:run-2",
            "blobs:run-2",
            "meta:run-2",
            "seqs:run-2",
            "runs",
            "runs:tenant:acme",
            "created",
        }
        assert await client.zcard(f"{prefix}created") == 3
        assert await store.delete_run("run-1") is True
        assert await _keys(client, prefix) == {
            "run:run-2",
            "blobs:run-2",
            "meta:run-2",
            "seqs:run-2",
            "runs",
            "runs:tenant:acme",
            "created",
        }
        assert await client.zrange(f"{prefix}created", 0, -1) == [b"run-2/0"]
        assert await client.zrange(f"{prefix}runs:tenant:acme", 0, -1) == [b"run-2"]
    finally:
        await store.close()


async def test_leases_use_the_server_clock(prefix: str, client: aioredis.Redis) -> None:
    store = RedisStore(REDIS_URL, prefix=prefix)
    try:
        await store.put(checkpoint("run-1", 0))
        seconds, micros = await client.time()
        before = from_micros(seconds * 1_000_000 + micros)
        claim = await store.claim("run-1", "worker-a", 100)
        seconds, micros = await client.time()
        after = from_micros(seconds * 1_000_000 + micros)
        lease = dt.timedelta(seconds=100)
        assert before + lease <= claim.lease_expires_at <= after + lease
        stored = await client.hget(f"{prefix}run:run-1", "claim_expires")
        assert stored is not None
        assert from_micros(int(stored)) == claim.lease_expires_at
    finally:
        await store.close()


async def test_unreachable_server_is_store_unavailable() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", socket_timeout=2)
    try:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await store.put(checkpoint("run-1", 0))
        with pytest.raises(StoreUnavailableError):
            await store.get("run-1")
        with pytest.raises(StoreUnavailableError):
            await store.list_runs()
    finally:
        await store.close()


def test_usable_from_successive_event_loops(prefix: str) -> None:
    """``run_sync`` callers may bring a new loop per call; closing at the end of each is enough."""
    store = RedisStore(REDIS_URL, prefix=prefix)

    async def put_then_close() -> None:
        await store.put(checkpoint("run-1", 0))
        await store.close()

    async def get_then_close() -> int | None:
        try:
            got = await store.get("run-1")
            return got.seq if got is not None else None
        finally:
            await store.close()

    asyncio.run(put_then_close())
    assert asyncio.run(get_then_close()) == 0
