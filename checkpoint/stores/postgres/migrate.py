"""Apply Flowpoint's numbered SQL migrations to a PostgreSQL database.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied
in order, each in its own transaction, and recorded in
``flowpoint_migrations(version, name, applied_at)``. Every transaction first
takes a transaction-scoped advisory lock, so two processes migrating the same
database at once is safe (one waits, then finds the work done), and running
migrations again is a no-op.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from checkpoint.errors import ConfigError, StoreError, StoreUnavailableError

__all__ = ["MIGRATION_LOCK_KEY", "Migration", "apply_migrations", "load_migrations", "migrate"]

_log = logging.getLogger("flowpoint.migrate")

# An arbitrary, fixed 64-bit key ("flowpoint" in ASCII, truncated) for pg_advisory_xact_lock.
MIGRATION_LOCK_KEY = 0x666C6F77706F696E
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS flowpoint_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migrations, ordered by version."""
    found: list[Migration] = []
    folder = resources.files("checkpoint.stores.postgres") / "migrations"
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migration files share a version number: {versions}")
    return found


async def _applied(conn: asyncpg.Connection) -> set[int]:
    try:
        rows = await conn.fetch("SELECT version FROM flowpoint_migrations")
    except asyncpg.UndefinedTableError:
        return set()
    return {int(r["version"]) for r in rows}


async def apply_migrations(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply the missing migrations on ``conn``; return those this call applied."""
    todo = load_migrations() if migrations is None else migrations
    # Fast path (every store open runs this): nothing to lock when all are applied.
    done = await _applied(conn)
    if all(m.version in done for m in todo):
        return []
    applied: list[Migration] = []
    for migration in todo:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_CREATE_TABLE)
            already = await conn.fetchval(
                "SELECT 1 FROM flowpoint_migrations WHERE version = $1", migration.version
            )
            if already:
                continue
            _log.info("applying migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO flowpoint_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied


async def migrate(dsn: str) -> list[Migration]:
    """Connect to ``dsn`` and apply the missing migrations; return those applied.

    Raises :class:`ConfigError` for a malformed URL, :class:`StoreUnavailableError`
    when the server cannot be reached and :class:`StoreError` when a migration
    fails (nothing of that migration is kept).
    """
    try:
        conn = await asyncpg.connect(dsn)
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise ConfigError(f"invalid PostgreSQL URL: {exc}") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL to migrate: {exc}") from exc
    try:
        return await apply_migrations(conn)
    except asyncpg.PostgresError as exc:
        raise StoreError(f"migration failed: {exc}") from exc
    finally:
        await conn.close()
