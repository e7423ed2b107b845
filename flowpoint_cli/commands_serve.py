"""``flowpoint serve``: run the sidecar (OTLP ingest, resume API, metrics).

Every option also reads ``FLOWPOINT_<NAME>`` from the environment, e.g.
``FLOWPOINT_DATABASE_URL`` or ``FLOWPOINT_PORT``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from flowpoint_cli import app

__all__ = ["serve"]


def _env(name: str) -> str:
    return f"FLOWPOINT_{name}"


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar=_env("HOST"), help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar=_env("PORT"), help="Port to listen on (0: any free port).")
    ] = 4318,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar=_env("DATABASE_URL"),
            help="postgresql://user:pw@host:port/db. Without it an embedded PostgreSQL "
            "runs in --data-dir.",
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar=_env("DATA_DIR"), help="Where the embedded PostgreSQL lives."),
    ] = Path(".flowpoint/data"),
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("SPOOL_DIR"),
            help="Durable spool for outages (default: <data-dir>/spool).",
        ),
    ] = None,
    spool: Annotated[
        bool,
        typer.Option(
            "--spool/--no-spool",
            envvar=_env("SPOOL"),
            help="Spool checkpoints to --spool-dir while PostgreSQL is down (--no-spool: "
            "answer 503 instead and let the workers' outboxes keep them).",
        ),
    ] = True,
    spool_max_bytes: Annotated[
        int,
        typer.Option(
            envvar=_env("SPOOL_MAX_BYTES"),
            help="Largest spool on disk; when full, checkpoints are answered 503.",
        ),
    ] = 1024 * 1024 * 1024,
    breaker_failure_threshold: Annotated[
        int,
        typer.Option(
            envvar=_env("BREAKER_FAILURE_THRESHOLD"),
            help="Consecutive failed or timed-out commits that open the circuit breaker.",
        ),
    ] = 3,
    breaker_cooldown_seconds: Annotated[
        float,
        typer.Option(
            envvar=_env("BREAKER_COOLDOWN_SECONDS"),
            help="How long an open breaker waits before a half-open probe.",
        ),
    ] = 2.0,
    commit_timeout_seconds: Annotated[
        float,
        typer.Option(
            envvar=_env("COMMIT_TIMEOUT_SECONDS"),
            help="A commit slower than this counts as a failure (a hung database opens "
            "the breaker).",
        ),
    ] = 2.0,
    forward_otlp: Annotated[
        str | None,
        typer.Option(
            envvar=_env("FORWARD_OTLP"),
            help="OTLP/HTTP endpoint that receives the spans that are not checkpoints.",
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("TOKENS_FILE"),
            help="Bearer tokens -> tenants ('<token> <tenant>' lines, or a JSON object).",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(envvar=_env("MAX_BODY_BYTES"), help="Largest accepted request (inflated)."),
    ] = 64 * 1024 * 1024,
    max_batch: Annotated[
        int, typer.Option(envvar=_env("MAX_BATCH"), help="Most checkpoints per transaction.")
    ] = 128,
    max_batch_wait_ms: Annotated[
        float,
        typer.Option(
            envvar=_env("MAX_BATCH_WAIT_MS"),
            help="How long a batch may wait to fill while another one commits.",
        ),
    ] = 2.0,
    max_inflight_batches: Annotated[
        int,
        typer.Option(
            envvar=_env("MAX_INFLIGHT_BATCHES"),
            help="Batches committed at the same time (one fills while another commits).",
        ),
    ] = 2,
    compression_level: Annotated[
        int, typer.Option(envvar=_env("COMPRESSION_LEVEL"), help="zstd level of stored payloads.")
    ] = 3,
    offload_bytes: Annotated[
        int,
        typer.Option(
            envvar=_env("OFFLOAD_BYTES"),
            help="Payloads larger than this are verified and compressed in a worker thread.",
        ),
    ] = 64 * 1024,
    log_level: Annotated[
        str, typer.Option(envvar=_env("LOG_LEVEL"), help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    log_format: Annotated[
        str, typer.Option(envvar=_env("LOG_FORMAT"), help="json (one object per line) or text.")
    ] = "json",
    encryption_keys_file: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("ENCRYPTION_KEYS_FILE"),
            help="Encrypt payloads at rest (AES-GCM) with these keys: 'kid:base64key' lines, "
            "the first active. Without it, $FLOWPOINT_ENCRYPTION_KEYS holds the keys.",
        ),
    ] = None,
    retention_interval: Annotated[
        str,
        typer.Option(
            envvar=_env("RETENTION_INTERVAL"),
            help="Time between retention sweeps (e.g. 60s, 5m); 0 turns retention off.",
        ),
    ] = "60s",
    retention_days: Annotated[
        float | None,
        typer.Option(
            envvar=_env("RETENTION_DAYS"),
            help="Trim runs idle for longer to their latest checkpoint, unless a run's "
            "checkpoints name their own retention_days.",
        ),
    ] = None,
    retention_max_checkpoints: Annotated[
        int,
        typer.Option(
            envvar=_env("RETENTION_MAX_CHECKPOINTS"),
            help="Checkpoints kept per run unless its checkpoints say otherwise.",
        ),
    ] = 10,
) -> None:
    """Run the sidecar: OTLP checkpoint ingest, the resume API, /metrics."""
    from checkpoint.errors import ConfigError, FlowpointError
    from sidecar.config import Settings
    from sidecar.server import run

    try:
        settings = Settings.build(
            host=host,
            port=port,
            database_url=database_url,
            data_dir=data_dir,
            spool_dir=spool_dir,
            spool=spool,
            spool_max_bytes=spool_max_bytes,
            breaker_failure_threshold=breaker_failure_threshold,
            breaker_cooldown_seconds=breaker_cooldown_seconds,
            commit_timeout_seconds=commit_timeout_seconds,
            forward_otlp=forward_otlp,
            tokens_file=tokens_file,
            max_body_bytes=max_body_bytes,
            max_batch=max_batch,
            max_batch_wait_ms=max_batch_wait_ms,
            max_inflight_batches=max_inflight_batches,
            compression_level=compression_level,
            offload_bytes=offload_bytes,
            log_level=log_level,
            log_format=log_format,
            encryption_keys_file=encryption_keys_file,
            # The keys themselves only ever come from the environment, never argv.
            encryption_keys=os.environ.get("FLOWPOINT_ENCRYPTION_KEYS") or None,
            retention_interval=retention_interval,
            retention_days=retention_days,
            retention_max_checkpoints=retention_max_checkpoints,
        )
        if settings.tokens_file is not None:
            from sidecar.config import load_tokens

            load_tokens(settings.tokens_file)  # fail now, with the reason, not at start-up
        from sidecar.encryption import keyring_of

        keyring_of(settings)  # a bad keys file or value fails now, too
    except ConfigError as exc:
        typer.echo(f"flowpoint serve: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    try:
        run(settings)
    except ConfigError as exc:
        typer.echo(f"flowpoint serve: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except FlowpointError as exc:  # e.g. the database is unreachable at start-up
        typer.echo(f"flowpoint serve: {exc}", err=True)
        raise typer.Exit(code=1) from exc
