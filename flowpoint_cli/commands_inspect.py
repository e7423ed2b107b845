"""`flowpoint runs ...` and `flowpoint checkpoints ...`: look into any store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from checkpoint import CheckpointStatus, FlowpointError, checkpoint_to_bytes
from checkpoint.store import BaseStore
from checkpoint.stores.url import store_from_url
from flowpoint_cli import app

T = TypeVar("T")
console = Console()

runs_app = typer.Typer(help="List and show runs.", no_args_is_help=True)
checkpoints_app = typer.Typer(help="List, show and diff a run's checkpoints.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(checkpoints_app, name="checkpoints")

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="FLOWPOINT_STORE",
        help="Store URL: sidecar://127.0.0.1:4318, postgresql://..., sqlite:x.db, file:dir.",
    ),
]
DEFAULT_STORE = "sidecar://127.0.0.1:4318"


def with_store(url: str, work: Callable[[BaseStore], Awaitable[T]]) -> T:
    """Open the store, run ``work`` on it, close it; print a clean error instead of a traceback."""

    async def main() -> T:
        store = store_from_url(url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except FlowpointError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@runs_app.command("list")
def runs_list(
    store: StoreOpt = DEFAULT_STORE,
    flow_id: Annotated[str | None, typer.Option(help="Only this flow.")] = None,
    status: Annotated[CheckpointStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Runs, newest first."""
    page = with_store(store, lambda s: s.list_runs(flow_id=flow_id, status=status, limit=limit))
    table = Table("run_id", "flow_id", "status", "latest seq", "updated")
    for run in page.runs:
        table.add_row(
            run.run_id, run.flow_id, run.status.value, str(run.latest_seq), str(run.updated_at)
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


@runs_app.command("show")
def runs_show(run_id: str, store: StoreOpt = DEFAULT_STORE) -> None:
    """A run's summary: status, latest seq, pending inputs, claim."""
    run = with_store(store, lambda s: s.get_run(run_id))
    if run is None:
        console.print(f"[red]error:[/red] no run {run_id!r} in {store}")
        raise typer.Exit(1)
    console.print_json(run.model_dump_json())


@checkpoints_app.command("list")
def checkpoints_list(
    run_id: str,
    store: StoreOpt = DEFAULT_STORE,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """A run's checkpoints, newest first."""
    rows = with_store(store, lambda s: s.list_checkpoints(run_id, limit=limit))
    table = Table("seq", "status", "created", "raw bytes", "stored bytes", "sha256")
    for row in rows:
        table.add_row(
            str(row.seq),
            row.status.value,
            str(row.created_at),
            str(row.raw_size),
            str(row.stored_size),
            row.sha256[:16],
        )
    console.print(table)


def _load_json(store: str, run_id: str, seq: int | None) -> dict[str, Any]:
    cp = with_store(store, lambda s: s.get(run_id, seq))
    if cp is None:
        where = "latest" if seq is None else f"seq {seq}"
        console.print(f"[red]error:[/red] run {run_id!r} has no checkpoint ({where})")
        raise typer.Exit(1)
    doc: dict[str, Any] = json.loads(checkpoint_to_bytes(cp))
    return doc


@checkpoints_app.command("show")
def checkpoints_show(
    run_id: str,
    seq: Annotated[int | None, typer.Argument(help="Seq; latest when omitted.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """One checkpoint, verified, as JSON."""
    console.print_json(json.dumps(_load_json(store, run_id, seq)))


@checkpoints_app.command("diff")
def checkpoints_diff(run_id: str, seq_a: int, seq_b: int, store: StoreOpt = DEFAULT_STORE) -> None:
    """What changed between two checkpoints of a run (status, node states, pending inputs)."""
    a, b = _load_json(store, run_id, seq_a), _load_json(store, run_id, seq_b)
    table = Table("field", f"seq {seq_a}", f"seq {seq_b}")
    for key in ("status", "pending_inputs"):
        if a.get(key) != b.get(key):
            table.add_row(key, json.dumps(a.get(key))[:80], json.dumps(b.get(key))[:80])
    nodes_a, nodes_b = a.get("node_states", {}), b.get("node_states", {})
    for node_id in sorted(set(nodes_a) | set(nodes_b)):
        na, nb = nodes_a.get(node_id), nodes_b.get(node_id)
        if na != nb:
            table.add_row(
                f"node {node_id}",
                na["status"] if na else "-",
                nb["status"] if nb else "-",
            )
    console.print(table)
