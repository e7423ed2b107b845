"""`flowpoint migrate`: apply the PostgreSQL schema migrations."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from checkpoint.errors import FlowpointError
from flowpoint_cli import app


@app.command()
def migrate(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="FLOWPOINT_DATABASE_URL",
            help="PostgreSQL URL, e.g. postgresql://user:password@127.0.0.1:5432/flowpoint.",
        ),
    ] = None,
) -> None:
    """Apply the missing schema migrations to a PostgreSQL database (safe to run twice)."""
    from checkpoint.stores.postgres.migrate import load_migrations
    from checkpoint.stores.postgres.migrate import migrate as run_migrations

    if not database_url:
        typer.echo(
            "error: no database: pass --database-url postgresql://... or set "
            "FLOWPOINT_DATABASE_URL (`flowpoint serve` migrates its embedded database itself)",
            err=True,
        )
        raise typer.Exit(2)
    if not database_url.startswith(("postgresql://", "postgres://")):
        typer.echo(
            "error: --database-url must be a postgresql:// URL, got "
            f"{database_url.split('://')[0]}://...",
            err=True,
        )
        raise typer.Exit(2)
    try:
        applied = asyncio.run(run_migrations(database_url))
    except FlowpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    latest = max((m.version for m in load_migrations()), default=0)
    for migration in applied:
        typer.echo(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        typer.echo(f"schema is up to date (version {latest})")
    else:
        typer.echo(f"schema is at version {latest}")
