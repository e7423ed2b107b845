"""The PostgreSQL store: asyncpg, numbered SQL migrations, an embedded server for local use.

``PostgresStore`` is imported eagerly; ``EmbeddedPostgres`` lives in
:mod:`checkpoint.stores.postgres.embedded` and ``migrate`` in
:mod:`checkpoint.stores.postgres.migrate`.
"""

from checkpoint.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
