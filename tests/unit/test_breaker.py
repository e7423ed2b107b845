"""The circuit breaker: closed -> open -> half-open -> closed, timeouts count as failures."""

from __future__ import annotations

import asyncio

import pytest

from checkpoint.errors import RunNotFoundError, StoreError, StoreUnavailableError
from sidecar.breaker import BreakerOpenError, BreakerState, CircuitBreaker


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    threshold: int = 3, cooldown: float = 5.0, timeout: float = 2.0
) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        failure_threshold=threshold,
        cooldown=cooldown,
        call_timeout=timeout,
        on_change=changes.append,
        clock=clock,
    )
    return breaker, clock, changes


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise StoreUnavailableError("connection refused")


async def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _, changes = make(threshold=3)
    for _ in range(2):
        with pytest.raises(StoreUnavailableError):
            await breaker.call(down)
        assert breaker.state is BreakerState.CLOSED
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    assert breaker.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    assert breaker.snapshot().last_error == "StoreUnavailableError: connection refused"


async def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _, _ = make(threshold=2)
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    assert await breaker.call(ok) == "ok"
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    assert breaker.state is BreakerState.CLOSED


async def test_open_refuses_without_calling_until_the_cooldown() -> None:
    breaker, clock, _ = make(threshold=1, cooldown=5.0)
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    clock.now += 4.0
    with pytest.raises(BreakerOpenError) as info:
        await breaker.call(counted)
    assert calls == 0
    assert info.value.retry_after == pytest.approx(1.0)
    assert isinstance(info.value, StoreUnavailableError)  # a 503 for HTTP callers


async def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    breaker, clock, changes = make(threshold=1, cooldown=5.0)
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() is True  # the probe
    assert breaker.acquire() is False  # nobody else while it runs
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_a_failed_probe_opens_it_again_for_a_full_cooldown() -> None:
    breaker, clock, _ = make(threshold=2, cooldown=5.0)
    for _ in range(2):
        with pytest.raises(StoreUnavailableError):
            await breaker.call(down)
    clock.now += 5.0
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(5.0)
    assert breaker.opens == 2


async def test_a_hung_call_times_out_and_counts_as_a_failure() -> None:
    breaker, _, _ = make(threshold=1, timeout=0.05)
    hung = asyncio.Event()

    async def never() -> str:
        await hung.wait()
        return "late"

    with pytest.raises(StoreUnavailableError, match=r"did not answer within 0\.05s"):
        await breaker.call(never)
    assert breaker.state is BreakerState.OPEN


async def test_other_errors_neither_open_nor_close_it() -> None:
    breaker, clock, _ = make(threshold=1)

    async def missing() -> str:
        raise RunNotFoundError("no such run")

    with pytest.raises(RunNotFoundError):
        await breaker.call(missing)
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(StoreError):
        await breaker.call(down)
    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(RunNotFoundError):
        await breaker.call(missing)  # the probe slot is given back
    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(ok) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_wait_closed_and_snapshot() -> None:
    breaker, clock, _ = make(threshold=1, cooldown=1.0)
    await asyncio.wait_for(breaker.wait_closed(), 1)
    with pytest.raises(StoreUnavailableError):
        await breaker.call(down)
    waiter = asyncio.ensure_future(breaker.wait_closed())
    await asyncio.sleep(0)
    assert not waiter.done()
    snap = breaker.snapshot().as_dict()
    assert snap["state"] == "open" and snap["consecutive_failures"] == 1
    clock.now += 1.0
    assert await breaker.call(ok) == "ok"
    await asyncio.wait_for(waiter, 1)
    assert breaker.snapshot().as_dict()["state"] == "closed"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(cooldown=0)
