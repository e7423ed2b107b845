"""The ingest CPU benchmark runs, checks the sidecar's parse against the reference, prints."""

from __future__ import annotations

from load import bench_ingest


def test_ingest_bench_times_every_stage_of_both_payload_kinds() -> None:
    lines: list[str] = []
    results = bench_ingest.run(lines.append, min_time=0.001, sizes=[("1 KB", 1024)])
    assert [(r.payload, r.label) for r in results] == [
        ("agent state", "1 KB"),
        ("tagged values", "1 KB"),
    ]
    for result in results:
        assert set(result.stages) == {
            "decode OTLP",
            "sha256",
            "parse (sidecar)",
            "parse (reference)",
            "prepare (all)",
        }
        assert all(t.median > 0 for t in result.stages.values())
        assert 900 < result.raw_size < 4096
    assert "sidecar ingest CPU per checkpoint" in "\n".join(lines)
