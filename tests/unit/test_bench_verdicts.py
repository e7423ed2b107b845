"""The sidecar benchmark judges its goals from its measurements, not from fixed text."""

from __future__ import annotations

from load.bench_sidecar import Result, _row, _verdicts


def result(system: str, size: str, conc: int, p50_ms: float, ops_per_s: float) -> Result:
    """A phase whose every latency is ``p50_ms``, at ``ops_per_s`` for 1 s."""
    n = int(ops_per_s)
    lat = [p50_ms / 1000] * n
    return Result(system, size, conc, lat, 1.0, inner=list(lat) if system == "flowpoint" else [])


def test_c1_latency_verdict_and_the_least_a_sidecar_can_take() -> None:
    lines = _verdicts(
        [
            result("flowpoint", "1KB", 1, 1.5, 600),
            result("langgraph", "1KB", 1, 0.8, 1200),
            result("http-floor", "1KB", 1, 0.3, 3000),
            result("floor+codec", "1KB", 1, 0.5, 2000),
        ]
    )
    assert "[MISS] 1KB c=1 p50" in lines[0] and "1.50 ms vs langgraph 0.80 ms" in lines[0]
    assert "http-floor 0.30 + floor+codec 0.50 = 0.80 ms" in lines[1]
    assert "0.80 + 0.70 ms of its own work" in lines[1]
    passed = _verdicts(
        [result("flowpoint", "1KB", 1, 0.7, 1), result("langgraph", "1KB", 1, 0.8, 1)]
    )
    assert passed[0].startswith("  [PASS] 1KB c=1 p50")


def test_throughput_goal_is_three_times_the_single_saver() -> None:
    lines = _verdicts(
        [
            result("flowpoint", "16KB", 32, 10, 2900),
            result("langgraph", "16KB", 32, 30, 1000),
            result("langgraph/saver-per-task", "16KB", 32, 15, 2000),
        ]
    )
    throughput = next(line for line in lines if "c=32 throughput" in line)
    assert throughput.startswith("  [MISS]") and "2.9x langgraph" in throughput
    assert "saver-per-task langgraph 2000/s (1.4x)" in throughput
    lines = _verdicts(
        [result("flowpoint", "16KB", 32, 10, 3000), result("langgraph", "16KB", 32, 30, 1000)]
    )
    assert next(line for line in lines if "throughput" in line).startswith("  [PASS]")


def test_1mb_floor_goal_and_the_floor_that_also_encodes() -> None:
    lines = _verdicts(
        [
            result("flowpoint", "1MB", 32, 300, 80),
            result("floor", "1MB", 32, 10, 1600),
            result("floor+codec", "1MB", 32, 150, 200),
        ]
    )
    floor = next(i for i, line in enumerate(lines) if "1MB c=32: floor" in line)
    assert lines[floor].startswith("  [MISS]") and "20.00x" in lines[floor]
    assert "(floor+codec) it does 200/s = 2.50x flowpoint" in lines[floor + 1]


def test_row_shows_server_cpu_for_the_sidecar_and_the_empty_endpoint_only() -> None:
    fp = result("flowpoint", "1KB", 1, 1.0, 100)
    fp.sidecar_cpu = 0.05
    hop = result("http-floor", "1KB", 1, 0.3, 100)
    hop.sidecar_cpu = 0.01
    floor = result("floor", "1KB", 1, 0.4, 100)
    assert _row(fp).split("|")[1].strip() == "0.50"
    assert _row(hop).split("|")[1].strip() == "0.10"
    assert _row(floor).split("|")[1].strip() == "nan"
