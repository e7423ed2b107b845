"""The sidecar's settings: one validated pydantic model, filled by ``flowpoint serve``.

Every field maps to a ``flowpoint serve`` option and to ``FLOWPOINT_<NAME>`` in the
environment (the CLI reads both). Values are checked here so a typo fails at start-up with
the field's name, not on the first request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from checkpoint.errors import ConfigError, InvalidIdError
from checkpoint.ids import validate_id

__all__ = ["DEFAULT_DATA_DIR", "Settings", "load_tokens", "parse_duration"]

DEFAULT_DATA_DIR = Path(".flowpoint") / "data"
MiB = 1024 * 1024

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]


class Settings(BaseModel):
    """Everything the sidecar needs to run. Immutable once built.

    >>> Settings(port=0).host
    '127.0.0.1'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=4318, ge=0, le=65535)
    database_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    spool_dir: Path | None = None
    # The durable spool and circuit breaker (sidecar.durability). With spool=False an outage
    # answers 503 and the workers' outboxes keep the checkpoints (no persistent volume).
    spool: bool = True
    spool_max_bytes: int = Field(default=1024 * MiB, ge=64 * 1024)
    breaker_failure_threshold: int = Field(default=3, ge=1, le=1000)
    breaker_cooldown_seconds: float = Field(default=2.0, gt=0, le=3600)
    commit_timeout_seconds: float = Field(default=2.0, gt=0, le=600)
    forward_otlp: str | None = None
    tokens_file: Path | None = None
    max_body_bytes: int = Field(default=64 * MiB, ge=1024)
    max_batch: int = Field(default=128, ge=1, le=10_000)
    max_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    # Concurrent commits: one batch is being committed while the next one fills.
    max_inflight_batches: int = Field(default=2, ge=1, le=64)
    compression_level: int = Field(default=3, ge=1, le=22)
    offload_bytes: int = Field(default=64 * 1024, ge=0)
    offload_threads: int = Field(default=2, ge=1, le=64)
    pool_size: int = Field(default=10, ge=2, le=200)
    forward_queue: int = Field(default=256, ge=1)
    shutdown_timeout: float = Field(default=30.0, gt=0)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    # Encryption at rest (sidecar/encryption.py): a keys file, or the keys themselves
    # ("kid:base64key,...", from $FLOWPOINT_ENCRYPTION_KEYS; a SecretStr is never printed).
    encryption_keys_file: Path | None = None
    encryption_keys: SecretStr | None = None
    # Retention task (sidecar/retention.py): seconds between sweeps ("60s", "5m" accepted),
    # 0 turns it off; defaults for runs whose checkpoints name no policy of their own.
    retention_interval: float = Field(default=60.0, ge=0)
    retention_days: float | None = Field(default=None, gt=0)
    retention_max_checkpoints: int | None = Field(default=10, ge=1)
    retention_batch: int = Field(default=100, ge=1, le=1000)

    @field_validator("retention_interval", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        scheme = urlsplit(v).scheme.lower()
        if scheme not in ("postgres", "postgresql"):
            raise ValueError(
                f"database_url must be a postgresql:// URL, got scheme {scheme or '(none)'!r}"
            )
        return v

    @field_validator("forward_otlp")
    @classmethod
    def _forward(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"forward_otlp must be an http(s) URL, got {v!r}")
        # A bare collector address means its standard OTLP/HTTP traces path.
        if parts.path in ("", "/"):
            return v.rstrip("/") + "/v1/traces"
        return v

    @property
    def max_batch_wait(self) -> float:
        """``max_batch_wait_ms`` in seconds."""
        return self.max_batch_wait_ms / 1000.0

    @property
    def effective_spool_dir(self) -> Path:
        """Where the durable spool lives (``spool_dir``, else ``<data_dir>/spool``)."""
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    @classmethod
    def build(cls, **values: object) -> Settings:
        """Like the constructor, but raises :class:`ConfigError` naming the bad fields."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid sidecar settings: {problems}") from exc


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"500ms"``, ``"5m"``, ``"1h"`` or ``"1d"``.

    >>> parse_duration("5m"), parse_duration("0")
    (300.0, 0.0)
    """
    value = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit):
            number, scale = value[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = value, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration: use e.g. 30, 30s, 500ms, 5m or 1h") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a finite duration")
    return seconds


def load_tokens(path: Path) -> dict[str, str]:
    """Read a tokens file: bearer token -> tenant id.

    Two formats are accepted: a JSON object ``{"<token>": "<tenant_id>", ...}``, or text
    with one ``<token> <tenant_id>`` pair per line (``#`` starts a comment).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
    pairs: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"tokens file {path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
        ):
            raise ConfigError(f"tokens file {path} must map token strings to tenant ids")
        pairs = dict(doc)
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ConfigError(
                    f"tokens file {path}, line {number}: expected '<token> <tenant_id>'"
                )
            pairs[fields[0]] = fields[1]
    for token, tenant in pairs.items():
        if not token or any(c.isspace() for c in token):
            raise ConfigError(f"tokens file {path}: a token is empty or holds whitespace")
        try:
            validate_id(tenant, "tenant_id")
        except InvalidIdError as exc:
            raise ConfigError(f"tokens file {path}: {exc}") from exc
    if not pairs:
        raise ConfigError(f"tokens file {path} holds no token")
    return pairs
