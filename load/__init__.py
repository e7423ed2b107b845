"""Load profiles (Locust) with SLO thresholds, and the benchmark harness.

``python -m load.bench`` (what ``make bench`` runs) runs every ``load.bench_*`` module present.
"""
