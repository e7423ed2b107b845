"""Shared pieces of the flow tests: real stores by kind, and stores that fail or are slow.

The failing and slow stores wrap a real :class:`MemoryStore` (they only add a
fault or a delay to ``put_sealed``), so everything else behaves like the real thing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint.errors import StoreUnavailableError
from checkpoint.store import BaseStore, SealedCheckpoint
from checkpoint.stores.file import FileStore
from checkpoint.stores.memory import MemoryStore
from checkpoint.stores.sqlite import SQLiteStore

LOCAL_STORES = ["memory", "file", "sqlite"]


def make_store(kind: str, directory: Path) -> BaseStore:
    """A fresh store of ``kind`` ("memory", "file", "sqlite") under ``directory``."""
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return FileStore(directory / "ckpts")
    if kind == "sqlite":
        return SQLiteStore(directory / "ckpts.db")
    raise ValueError(f"unknown store kind {kind!r}")


class FailingStore(MemoryStore):
    """Every put fails as if the backend were down; ``fail_from`` lets the first puts succeed."""

    def __init__(self, fail_from: int = 0) -> None:
        super().__init__()
        self.fail_from = fail_from
        self.put_calls = 0

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> Any:
        self.put_calls += 1
        if self.put_calls > self.fail_from:
            raise StoreUnavailableError("the checkpoint backend is down (test)")
        return await super().put_sealed(record, epoch=epoch)


class SlowStore(MemoryStore):
    """Each put takes ``delay`` seconds; records the order in which seqs arrive."""

    def __init__(self, delay: float = 0.002) -> None:
        super().__init__()
        self.delay = delay
        self.order: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def put_sealed(self, record: SealedCheckpoint, *, epoch: int = 0) -> Any:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            self.order.append(record.seq)
            return await super().put_sealed(record, epoch=epoch)
        finally:
            self.in_flight -= 1


class ForbiddenStore:
    """A store on which any call is an error, and which counts every attribute access."""

    def __init__(self) -> None:
        object.__setattr__(self, "touched", [])

    def __getattribute__(self, name: str) -> Any:
        if name in ("touched", "__class__", "__dict__"):
            return object.__getattribute__(self, name)
        object.__getattribute__(self, "touched").append(name)
        raise AssertionError(f"the store was used: {name}")


async def seqs_of(store: BaseStore, run_id: str, limit: int = 1000) -> list[int]:
    """Stored seqs of ``run_id``, oldest first."""
    return sorted(s.seq for s in await store.list_checkpoints(run_id, limit=limit))


def ago(days: float) -> dt.datetime:
    """An aware UTC datetime ``days`` in the past."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)


def counts(lines: Sequence[str]) -> dict[str, int]:
    """How many times each line appears."""
    result: dict[str, int] = {}
    for line in lines:
        result[line] = result.get(line, 0) + 1
    return result
