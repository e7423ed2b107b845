"""Shared pytest configuration: fixtures live in tests/fixtures/, one module per subsystem."""

pytest_plugins = [
    "tests.fixtures.otlp_recorder",
    "tests.fixtures.postgres",
    "tests.fixtures.prometheus",
    "tests.fixtures.sidecar",
    "tests.fixtures.sidecar_store",
]
