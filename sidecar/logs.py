"""Structured logs: one JSON object per line on stderr.

Every line has ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``event``; fields passed
with :func:`log_event` (``trace_id``, ``run_id``, ``seq``, ``outcome``...) are added at the
top level, so log pipelines can filter on them without parsing messages.

>>> log_event(logging.getLogger("flowpoint.sidecar"), logging.INFO, "started", port=4318)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final

__all__ = ["JsonFormatter", "configure_logging", "log_event"]

_FIELDS: Final = "fp_fields"
# Attributes every LogRecord has: anything else passed via `extra=` is a field.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", _FIELDS}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            doc.update(fields)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send Flowpoint's and aiohttp's logs to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # One access-log line per checkpoint request would dominate the output.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (skipped cheaply when the level is off)."""
    if logger.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, event, extra={_FIELDS: clean})
