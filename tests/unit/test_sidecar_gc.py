"""The sidecar process tunes its garbage collector before serving (sidecar.server.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sidecar.server import GC_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_gc_raises_the_young_threshold_and_freezes_what_lives_now(restored_gc: None) -> None:
    _, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 1000  # the modules and schemas imported so far


def test_a_request_worth_of_garbage_is_not_collected_by_the_cycle_collector(
    restored_gc: None,
) -> None:
    from checkpoint.models import checkpoint_to_bytes
    from load.bench_sidecar import flow_checkpoint
    from sidecar.ingest import parse_checkpoint

    payload = checkpoint_to_bytes(flow_checkpoint(1024 * 1024))
    tune_gc()
    gc.collect(0)
    collections = gc.get_stats()[0]["collections"]
    parse_checkpoint(payload)
    assert gc.get_stats()[0]["collections"] == collections
