"""OpenTelemetry for Flowpoint: run/node tracing and the checkpoint emitter.

This package knows spans, not checkpoints: it imports nothing from
``checkpoint``, ``flows`` or ``sidecar``.
"""

from typing import TYPE_CHECKING, Any

from instrumentation.errors import (
    EmitArgumentError,
    EmitConflict,
    EmitError,
    EmitRejected,
    EmitUnauthorized,
    EmitUnavailable,
    OutboxError,
)
from instrumentation.tracing import (
    current_traceparent,
    node_span,
    run_span,
    span_context_from_traceparent,
    use_tracer_provider,
)

if TYPE_CHECKING:
    from instrumentation.emitter import CheckpointEmitter, EmitAck

__all__ = [
    "CheckpointEmitter",
    "EmitAck",
    "EmitArgumentError",
    "EmitConflict",
    "EmitError",
    "EmitRejected",
    "EmitUnauthorized",
    "EmitUnavailable",
    "OutboxError",
    "current_traceparent",
    "node_span",
    "run_span",
    "span_context_from_traceparent",
    "use_tracer_provider",
]


def __getattr__(name: str) -> Any:
    # The emitter pulls in aiohttp and the OTel SDK and protobuf; a flow that only
    # traces (or does not checkpoint) should not pay for that at import time.
    if name in ("CheckpointEmitter", "EmitAck"):
        from instrumentation import emitter

        return getattr(emitter, name)
    raise AttributeError(f"module 'instrumentation' has no attribute {name!r}")
