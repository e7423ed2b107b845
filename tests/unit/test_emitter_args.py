"""Emitter pieces that need no server: argument checks, headers, answers, Retry-After."""

from __future__ import annotations

import email.utils
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.rpc.status_pb2 import Status

from instrumentation import CheckpointEmitter, EmitArgumentError, EmitError
from instrumentation.emitter import _merge_headers, _retry_after, describe_answer

PAYLOAD = b'{"run_id":"r1"}'
SHA = hashlib.sha256(PAYLOAD).hexdigest()
# Nothing listens here: every test below must fail before sending.
DEAD = "http://127.0.0.1:9/v1/traces"


@pytest.mark.parametrize(
    ("attributes", "payload", "sha", "key", "match"),
    [
        ({}, PAYLOAD, SHA, "", "key must be"),
        ({}, "text", SHA, "r1:1", "payload must be bytes"),
        ({}, PAYLOAD, "abc", "r1:1", "64 hex"),
        ({"x": 1.5}, PAYLOAD, SHA, "r1:1", "must be str, int or bool"),
        ({"x": None}, PAYLOAD, SHA, "r1:1", "must be str, int or bool"),
        ({"": "v"}, PAYLOAD, SHA, "r1:1", "non-empty strings"),
        ({"flowpoint.payload": "v"}, PAYLOAD, SHA, "r1:1", "set by the emitter"),
        ({"flowpoint.sha256": "0" * 64}, PAYLOAD, SHA, "r1:1", "differs from payload_sha256"),
    ],
    ids=["empty-key", "str-payload", "short-sha", "float", "none", "empty-name", "payload", "sha"],
)
async def test_bad_arguments_fail_before_anything_is_written(
    tmp_path: Path,
    attributes: dict[str, object],
    payload: object,
    sha: str,
    key: str,
    match: str,
) -> None:
    async with CheckpointEmitter(DEAD, outbox_dir=tmp_path, max_retry_seconds=0) as emitter:
        with pytest.raises(EmitArgumentError, match=match):
            await emitter.emit(attributes, payload, payload_sha256=sha, key=key)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint": "127.0.0.1:4318"}, "http"),
        ({"timeout": 0}, "timeout"),
        ({"max_retry_seconds": -1}, "max_retry_seconds"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(EmitArgumentError, match=match):
        CheckpointEmitter(**kwargs)  # type: ignore[arg-type]


async def test_emit_after_close_is_an_error() -> None:
    emitter = CheckpointEmitter(DEAD)
    await emitter.aclose()
    await emitter.aclose()
    with pytest.raises(EmitError, match="closed"):
        await emitter.emit({}, PAYLOAD, payload_sha256=SHA, key="r1:1")


def test_headers_from_env_token_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=core,x-zone=eu%2Dwest")
    monkeypatch.setenv("FLOWPOINT_TOKEN", "tok-1")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    headers = _merge_headers(None)
    assert headers["x-team"] == "core"
    assert headers["x-zone"] == "eu-west"
    assert headers["authorization"] == "Bearer tok-1"
    assert headers["Content-Type"] == "application/x-protobuf"
    # explicit headers win over the environment, whatever the case of the name
    headers = _merge_headers({"Authorization": "Bearer explicit", "content-type": "text/plain"})
    assert headers["Authorization"] == "Bearer explicit"
    assert "authorization" not in headers
    assert headers["Content-Type"] == "application/x-protobuf"
    assert "content-type" not in headers


def test_env_authorization_beats_flowpoint_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%20from-otel")
    monkeypatch.setenv("FLOWPOINT_TOKEN", "tok-1")
    assert _merge_headers(None)["authorization"] == "Bearer from-otel"


def test_no_env_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "FLOWPOINT_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _merge_headers(None) == {"Content-Type": "application/x-protobuf"}


def test_retry_after_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(" 0.5 ") == 0.5
    assert _retry_after("-2") == 0.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 20 < (_retry_after(future) or 0) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _retry_after(past) == 0.0


def test_describe_answer_formats() -> None:
    body = b'{"error": "stale_epoch", "message": "epoch 2 < 3"}'
    assert describe_answer(body, "application/json") == ("epoch 2 < 3", "stale_epoch")
    nested = b'{"error": {"code": "bad", "message": "nested msg"}}'
    assert describe_answer(nested, "application/json") == ("nested msg", "bad")
    status = Status(code=3, message="bad checksum").SerializeToString()
    assert describe_answer(status, "application/x-protobuf") == ("bad checksum", None)
    assert describe_answer(b"plain words\n", "text/plain") == ("plain words", None)
    assert describe_answer(b"", "application/json") == ("", None)


def test_error_text_names_status_and_key() -> None:
    err = EmitError("refused", status=409, error="stale_epoch", key="r1:4")
    assert str(err) == "HTTP 409: refused [r1:4]"
    assert err.code == "stale_epoch" and err.message == "refused"


def test_instrumentation_imports_nothing_of_the_other_packages() -> None:
    # Dependency rule: instrumentation knows spans, not checkpoints.
    code = (
        "import sys, instrumentation, instrumentation.emitter, instrumentation.outbox;"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('checkpoint', 'flows', 'sidecar')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tracing_alone_does_not_load_the_emitter() -> None:
    code = "import sys, instrumentation; print('instrumentation.emitter' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
