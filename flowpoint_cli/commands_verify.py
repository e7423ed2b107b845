"""`flowpoint verify`: re-read stored checkpoints and check every one of them.

Each checkpoint is read back from the store (paged: ``--page-size`` runs or checkpoints
per query, a few reads in flight), decrypted when it is encrypted at rest, decompressed,
hashed and compared with the SHA-256 recorded at write time, then parsed and matched
against the row it sits in. A rich table sums up what was found and lists every bad row.

Exit codes: 0 all good; 1 at least one checkpoint is corrupt or cannot be decrypted here
(its key is missing); 2 the verification itself could not run (bad options, store down).
Checkpoints pruned while the command runs are counted as ``vanished``, not as errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from checkpoint.errors import (
    ConfigError,
    CorruptCheckpointError,
    EncryptionKeyMissingError,
    FlowpointError,
    UnknownSchemaVersionError,
)
from checkpoint.store import BaseStore
from flowpoint_cli import app

__all__ = ["BadCheckpoint", "VerifyReport", "open_verify_store", "verify", "verify_store"]

Problem = Literal["corrupt", "key_missing", "unknown_schema"]
DEFAULT_STORE = "sidecar://127.0.0.1:4318"


@dataclass(slots=True)
class BadCheckpoint:
    """A checkpoint that did not verify."""

    run_id: str
    seq: int
    problem: Problem
    error: str
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """What a verification found."""

    runs: int = 0
    checked: int = 0
    ok: int = 0
    corrupt: int = 0
    key_missing: int = 0
    unknown_schema: int = 0
    vanished: int = 0
    raw_bytes: int = 0
    seconds: float = 0.0
    bad: list[BadCheckpoint] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when a checkpoint is corrupt or cannot be opened with the keys at hand."""
        return bool(self.corrupt or self.key_missing)


async def _run_ids(store: BaseStore, run_id: str | None, page: int) -> AsyncIterator[str]:
    if run_id is not None:
        yield run_id
        return
    cursor: str | None = None
    while True:
        result = await store.list_runs(limit=page, cursor=cursor)  # every tenant
        for run in result.runs:
            yield run.run_id
        if result.next_cursor is None:
            return
        cursor = result.next_cursor


async def _check_one(store: BaseStore, run_id: str, seq: int, report: VerifyReport) -> None:
    problem: Problem
    error: FlowpointError
    try:
        record = await store.get_sealed(run_id, seq)
        if record is None:
            report.vanished += 1  # pruned or deleted since it was listed
            return
        await store.open_record(record)  # decrypt, decompress, SHA-256, parse, row match
    except EncryptionKeyMissingError as exc:
        problem, error = "key_missing", exc
    except UnknownSchemaVersionError as exc:
        problem, error = "unknown_schema", exc
    except CorruptCheckpointError as exc:
        problem, error = "corrupt", exc
    else:
        report.checked += 1
        report.ok += 1
        report.raw_bytes += record.raw_size
        return
    report.checked += 1
    setattr(report, problem, getattr(report, problem) + 1)
    report.bad.append(BadCheckpoint(run_id, seq, problem, type(error).__name__, str(error)))


async def verify_store(
    store: BaseStore,
    *,
    run_id: str | None = None,
    page: int = 200,
    concurrency: int = 4,
    progress: Callable[[VerifyReport], None] | None = None,
) -> VerifyReport:
    """Check every stored checkpoint (of ``run_id`` only, when given) and report.

    Raises :class:`FlowpointError` when the store cannot be read at all (not for bad
    checkpoints: those are in the report).
    """
    started = time.perf_counter()
    report = VerifyReport()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def check(run: str, seq: int) -> None:
        async with gate:
            await _check_one(store, run, seq, report)

    async for run in _run_ids(store, run_id, page):
        report.runs += 1
        before: int | None = None
        while True:
            rows = await store.list_checkpoints(run, limit=page, before_seq=before)
            if not rows:
                break
            await asyncio.gather(*(check(run, row.seq) for row in rows))
            if progress is not None:
                progress(report)
            if len(rows) < page:
                break
            before = rows[-1].seq
    report.seconds = time.perf_counter() - started
    return report


def open_verify_store(database_url: str | None, store_url: str | None) -> BaseStore:
    """The store to verify: ``--store`` wins, else ``--database-url``, else the sidecar.

    A PostgreSQL store is opened without migrating: verifying never changes the schema.
    """
    from checkpoint.stores.postgres import PostgresStore
    from checkpoint.stores.url import store_from_url

    if store_url:
        store = store_from_url(store_url)
    elif database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "--database-url must be a postgresql:// URL, got "
                f"{database_url.split('://')[0]}://..."
            )
        store = PostgresStore(database_url, max_size=4)
    else:
        store = store_from_url(DEFAULT_STORE)
    if isinstance(store, PostgresStore):
        store.migrate = False
    return store


def _print_report(console: Console, report: VerifyReport) -> None:
    summary = Table(title="flowpoint verify", show_header=True)
    summary.add_column("runs", justify="right")
    summary.add_column("checked", justify="right")
    summary.add_column("ok", justify="right", style="green")
    summary.add_column("corrupt", justify="right", style="red" if report.corrupt else None)
    summary.add_column("key missing", justify="right", style="red" if report.key_missing else None)
    summary.add_column("newer schema", justify="right")
    summary.add_column("vanished", justify="right")
    summary.add_column("raw MiB", justify="right")
    summary.add_column("seconds", justify="right")
    summary.add_row(
        str(report.runs),
        str(report.checked),
        str(report.ok),
        str(report.corrupt),
        str(report.key_missing),
        str(report.unknown_schema),
        str(report.vanished),
        f"{report.raw_bytes / 2**20:.1f}",
        f"{report.seconds:.2f}",
    )
    console.print(summary)
    if report.bad:
        bad = Table(title="checkpoints that did not verify", show_lines=False)
        # The row's key is never cut short, whatever the terminal width: the detail folds.
        bad.add_column("run_id", no_wrap=True, min_width=max(len(b.run_id) for b in report.bad))
        bad.add_column("seq", no_wrap=True, min_width=max(len(str(b.seq)) for b in report.bad))
        bad.add_column("problem", no_wrap=True)
        bad.add_column("error", overflow="fold")
        bad.add_column("detail", overflow="fold")
        for item in sorted(report.bad, key=lambda b: (b.run_id, b.seq)):
            bad.add_row(item.run_id, str(item.seq), item.problem, item.error, item.detail)
        console.print(bad)


@app.command()
def verify(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="FLOWPOINT_DATABASE_URL",
            help="PostgreSQL URL to verify directly (postgresql://...).",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="FLOWPOINT_STORE",
            help="Any store URL (sidecar://, postgresql://, sqlite:, file:, redis://). "
            f"Default: --database-url, else {DEFAULT_STORE}.",
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Verify only this run's checkpoints.")
    ] = None,
    encryption_keys_file: Annotated[
        Path | None,
        typer.Option(
            "--encryption-keys-file",
            envvar="FLOWPOINT_ENCRYPTION_KEYS_FILE",
            help="Keys to decrypt payloads encrypted at rest (else $FLOWPOINT_ENCRYPTION_KEYS).",
        ),
    ] = None,
    page_size: Annotated[
        int, typer.Option(min=1, max=1000, help="Runs or checkpoints read per query.")
    ] = 200,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Reads in flight.")] = 4,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
) -> None:
    """Re-read stored checkpoints, check every checksum, report corrupt rows (exit 1)."""
    from checkpoint.crypto import Keyring
    from checkpoint.ids import validate_id

    console = Console(stderr=False, soft_wrap=False)

    async def main() -> VerifyReport:
        target = open_verify_store(database_url, store)
        try:
            target.keyring = Keyring.load(encryption_keys_file)
            if run is not None:
                validate_id(run, "run_id")
                if await target.get_run(run) is None:
                    raise ConfigError(f"no run {run!r} in this store")
            return await verify_store(target, run_id=run, page=page_size, concurrency=concurrency)
        finally:
            await target.close()

    try:
        report = asyncio.run(main())
    except FlowpointError as exc:
        typer.echo(f"flowpoint verify: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        doc = asdict(report)
        doc["failed"] = report.failed
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_report(console, report)
        if report.failed:
            console.print(
                f"[red]{report.corrupt + report.key_missing} checkpoint(s) did not verify[/red]"
            )
        else:
            console.print(f"[green]all {report.ok} checkpoint(s) verified[/green]")
    if report.failed:
        raise typer.Exit(1)
