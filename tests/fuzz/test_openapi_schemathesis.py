"""Schemathesis against the sidecar's own ``/openapi.json``, served by the real sidecar.

Every operation of the document is exercised with schema-valid and schema-violating
requests (schemathesis' positive and negative modes, its coverage phase and its examples),
and every answer must pass:

* ``not_a_server_error``: never a 5xx;
* ``status_code_conformance``: only documented status codes;
* ``content_type_conformance``: only documented content types;
* ``response_schema_conformance``: bodies match the documented schemas;
* ``negative_data_rejection``: a request that violates the schema is refused with a 4xx.

The server is the real application (real aiohttp, real PostgresStore) from
``tests/fuzz/conftest.py``. Before each operation a few runs are (re)stored through the
OTLP path, and generated ``run_id`` / ``seq`` path parameters are sometimes swapped for
theirs, so the success paths (200, 202, 204, SSE) are fuzzed as well as the 404s.

Deterministic: a fixed seed with derandomized generation; bounded: a few dozen examples
per operation.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from checkpoint.models import CheckpointStatus, FlowCheckpoint
from checkpoint.stores.rules import MAX_INPUT_PATH
from sidecar.schemas import INPUT_PATH_PATTERN
from tests.fixtures.sidecar import make_checkpoint
from tests.fuzz.conftest import CALL_TIMEOUT_S, ThreadedSidecar, post_checkpoints

SEED = 20_261_127
MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CREATED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
SEEDED_RUNS = ("st-run-active", "st-run-pending", "st-run-done")


def seed_checkpoints() -> list[FlowCheckpoint]:
    """The same bytes every time, so re-seeding an existing run is a duplicate, not a conflict."""
    checkpoints = [make_checkpoint("st-run-active", seq) for seq in range(3)]
    checkpoints.append(make_checkpoint("st-run-pending", 0, pending=["review"]))
    checkpoints.append(
        make_checkpoint("st-run-done", 0, flow_id="flow-done", status=CheckpointStatus.COMPLETED)
    )
    for cp in checkpoints:
        cp.created_at = CREATED_AT
        for pending in cp.pending_inputs:
            pending.requested_at = CREATED_AT
    return checkpoints


def reseed(url: str) -> None:
    """Store the seeded runs afresh (unclaimed, all checkpoints) through the OTLP path."""
    with requests.Session() as http:
        for run_id in SEEDED_RUNS:
            resp = http.delete(f"{url}/v1/runs/{run_id}", timeout=CALL_TIMEOUT_S)
            assert resp.status_code in (204, 404), resp.text
        resp = post_checkpoints(url, seed_checkpoints(), session=http)
        assert resp.status_code == 200, resp.text


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def api_schema(fuzz_sidecar: ThreadedSidecar) -> Any:
    """The document the running sidecar serves, loaded by schemathesis."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": fuzz_sidecar.url,
            "request-timeout": 10,
            # The SSE stream of a live run never ends on its own: read its first event (the
            # snapshot is sent at once).
            "max-stream-events": 1,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Unknown query parameters are ignored, as HTTP APIs do; not a defect.
                "allow-extra-parameters": False,
            },
            "checks": {
                # 413 (body over the limit) refuses a request as surely as a 400 does.
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422]
                },
            },
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(fuzz_sidecar.url + "/openapi.json", config=config)

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        # Half the time, point at a run that exists (and at one of its seqs).
        if not isinstance(path_parameters, dict) or "run_id" not in path_parameters:
            return st.just(path_parameters)
        swapped = st.sampled_from(SEEDED_RUNS).map(lambda r: {**path_parameters, "run_id": r})
        if "seq" in path_parameters:
            swapped = st.tuples(swapped, st.integers(0, 3)).map(lambda t: {**t[0], "seq": t[1]})
        return st.one_of(st.just(path_parameters), swapped)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        # Answers sometimes go to the input the seeded run is waiting for (it has no schema).
        # Only a valid path is swapped: a negative case must stay negative.
        operation = getattr(context, "operation", None)
        path = body.get("path") if isinstance(body, dict) else None
        if (
            operation is None
            or operation.label != "POST /v1/runs/{run_id}/inputs"
            or not isinstance(path, str)
            or not 0 < len(path) <= MAX_INPUT_PATH
            or not re.search(INPUT_PATH_PATTERN, path)
        ):
            return st.just(body)
        return st.one_of(st.just(body), st.just({**body, "path": "review"}))

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


_operations_seen: list[str] = []


@schema.parametrize()
def test_every_operation_conforms_to_the_document(
    case: Any, http: requests.Session, fuzz_sidecar: ThreadedSidecar
) -> None:
    if _operations_seen[-1:] != [case.operation.label]:
        # A new operation: (re)store the seeded runs, which an earlier operation may have
        # deleted or pruned.
        _operations_seen.append(case.operation.label)
        reseed(fuzz_sidecar.url)
    case.call_and_validate(session=http, checks=CHECKS)
