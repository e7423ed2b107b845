"""`flowpoint run FLOW.yaml` and `flowpoint resume RUN_ID`: run YAML flows from the shell.

``run`` loads the flow file (its nodes, checkpoint settings and store), runs
it, and prints the status, the nodes executed and skipped, the output, and
every pending input with its path, prompt and schema. It remembers which flow
file and store a run used in ``.flowpoint/cli-runs.json`` (in the current
directory), so ``resume RUN_ID`` finds them again; ``--flow`` and ``--store``
override that. Only the flow file the user names (or named at ``run``) is
ever loaded: nothing read from a checkpoint causes an import.

Exit status: 0 when the run completed or waits for input, 1 on an error or a
failed node (the message says how to resume), 2 on bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from checkpoint import FlowpointError
from flowpoint_cli import app
from flows.errors import NodeExecutionError
from flows.flow import Flow, RunResult
from flows.yaml_loader import LoadedFlow, load_flow_file

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

REGISTRY = Path(".flowpoint") / "cli-runs.json"

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="FLOWPOINT_STORE",
        help="Store URL overriding the flow file's (file:dir, sqlite:x.db, sidecar://...).",
    ),
]
WaitOpt = Annotated[
    float | None,
    typer.Option(
        "--wait-for-input",
        min=0,
        help="Seconds to wait in-process for a human answer before ending pending_input.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON line.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", soft_wrap=True)
    return typer.Exit(code)


def _parse_json(text: str, what: str) -> Any:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise _fail(f"{what}: cannot read {text[1:]!r}: {exc.strerror or exc}", 2) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _fail(f"{what} is not valid JSON ({exc}): {text[:200]!r}", 2) from exc


def _parse_answers(pairs: list[str]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for pair in pairs:
        path, sep, raw = pair.partition("=")
        if not sep or not path:
            raise _fail(f"--input {pair!r} must look like PATH=JSON (e.g. review=true)", 2)
        if path in answers:
            raise _fail(f"--input gives two answers for {path!r}", 2)
        answers[path] = _parse_json(raw, f"--input {path}")
    return answers


# -- the run registry ----------------------------------------------------------------------------


def _read_registry() -> dict[str, Any]:
    try:
        data = json.loads(REGISTRY.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(run_id: str, flow_file: Path, store: str | None) -> None:
    registry = _read_registry()
    registry[run_id] = {"flow": str(flow_file.resolve()), "store": store}
    try:
        REGISTRY.parent.mkdir(parents=True, exist_ok=True)
        tmp = REGISTRY.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(registry, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(REGISTRY)
    except OSError as exc:
        errors.print(
            f"[yellow]warning:[/yellow] could not record the run in {REGISTRY}: {exc}",
            soft_wrap=True,
        )


# -- output --------------------------------------------------------------------------------------


def _show(result: RunResult, flow: Flow, as_json: bool) -> None:
    pending = [
        {"path": p.path, "prompt": p.prompt, "schema": p.schema_} for p in result.pending_inputs
    ]
    if as_json:
        doc = {
            "run_id": result.run_id,
            "flow_id": flow.id,
            "status": result.status.value,
            "seq": result.seq,
            "executed": result.executed,
            "skipped": result.skipped,
            "output": result.output,
            "pending_inputs": pending,
        }
        print(json.dumps(doc, default=str, sort_keys=True), flush=True)
        return
    colour = {"completed": "green", "pending_input": "yellow"}.get(result.status.value, "red")
    console.print(
        f"run [bold]{result.run_id}[/bold] of flow {flow.id}: "
        f"[{colour}]{result.status.value}[/{colour}] (checkpoint seq {result.seq})"
    )
    console.print(f"executed: {', '.join(result.executed) or '-'}")
    console.print(f"skipped (restored): {', '.join(result.skipped) or '-'}")
    if result.output:
        console.print("output:")
        console.print_json(json.dumps(result.output, default=str))
    if pending:
        table = Table(title="pending inputs")
        table.add_column("path", no_wrap=True)  # copied into --input: never cut it
        table.add_column("prompt", overflow="fold")
        table.add_column("schema", overflow="fold")
        for item in pending:
            schema = json.dumps(item["schema"]) if item["schema"] is not None else "any JSON"
            table.add_row(str(item["path"]), str(item["prompt"]), schema)
        console.print(table)
        example = pending[0]["path"]
        console.print(
            f"answer with: flowpoint resume {result.run_id} --input '{example}=<JSON answer>'",
            soft_wrap=True,
        )


async def _close(flow: Flow) -> None:
    if flow.checkpoint is not None and flow.checkpoint.store is not None:
        await flow.checkpoint.store.close()


def _load(flow_file: Path, store: str | None) -> LoadedFlow:
    try:
        return load_flow_file(flow_file, store=store)
    except FlowpointError as exc:
        raise _fail(str(exc)) from exc


def _execute(loaded: LoadedFlow, work: Any) -> RunResult:
    async def main() -> RunResult:
        try:
            result: RunResult = await work(loaded.flow)
            return result
        finally:
            await _close(loaded.flow)

    try:
        return asyncio.run(main())
    except NodeExecutionError as exc:
        raise _fail(str(exc)) from exc
    except FlowpointError as exc:
        raise _fail(str(exc)) from exc


# -- commands ------------------------------------------------------------------------------------


@app.command("run")
def run_flow(
    flow_file: Annotated[Path, typer.Argument(help="The flow file (YAML).")],
    input: Annotated[
        str | None,
        typer.Option(
            "--input", help="The flow input as JSON (or @file.json); default: the file's input."
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="The run id (default: random).")
    ] = None,
    store: StoreOpt = None,
    wait_for_input: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a YAML flow; show its status, output and pending inputs."""
    loaded = _load(flow_file, store)
    flow_input = _parse_json(input, "--input") if input is not None else loaded.input
    if not loaded.flow.checkpointing and not as_json:
        errors.print(
            "[yellow]note:[/yellow] checkpointing is off for this flow (set checkpoint.enabled "
            "and a store in the file, or pass --store): the run cannot be resumed",
            soft_wrap=True,
        )
    result = _execute(
        loaded,
        lambda flow: flow.run(flow_input, run_id, wait_for_input_seconds=wait_for_input),
    )
    if loaded.flow.checkpointing:
        _remember(result.run_id, flow_file, store)
    _show(result, loaded.flow, as_json)


@app.command("resume")
def resume_flow(
    run_id: Annotated[str, typer.Argument(help="The run to resume.")],
    flow_file: Annotated[
        Path | None,
        typer.Option("--flow", help="The flow file (default: the one `flowpoint run` used)."),
    ] = None,
    input: Annotated[
        list[str] | None,
        typer.Option("--input", help="An answer: PATH=JSON (repeatable), e.g. review=true."),
    ] = None,
    store: StoreOpt = None,
    wait_for_input: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a run, answering pending inputs by path."""
    answers = _parse_answers(input or [])
    if flow_file is None or store is None:
        known = _read_registry().get(run_id)
        if flow_file is None:
            if not isinstance(known, dict) or not isinstance(known.get("flow"), str):
                raise _fail(
                    f"run {run_id!r} was not started by `flowpoint run` in this directory "
                    f"(no entry in {REGISTRY}): pass --flow FLOW.yaml"
                )
            flow_file = Path(known["flow"])
        if store is None and isinstance(known, dict) and isinstance(known.get("store"), str):
            store = known["store"]
    loaded = _load(flow_file, store)
    if not loaded.flow.checkpointing:
        raise _fail(
            f"{flow_file} has checkpointing off and no --store was given: there is nothing "
            "to resume from"
        )
    result = _execute(
        loaded,
        lambda flow: flow.resume(run_id, inputs=answers, wait_for_input_seconds=wait_for_input),
    )
    _show(result, loaded.flow, as_json)


__all__ = ["resume_flow", "run_flow"]
