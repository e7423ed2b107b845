"""Run Flowpoint's benchmarks: ``python -m load.bench`` (what ``make bench`` runs).

Each section is a module ``load/bench_<name>.py`` exposing ``run(print_fn=print)``:
``codec`` (codec throughput), ``flow`` (the workflow runtime), ``ingest`` (the sidecar's
CPU per checkpoint), ``sidecar`` (end-to-end saves through the sidecar). A module that is
not there is reported as not available; one that fails is reported and makes the exit
status 1, after the other sections ran.

    python -m load.bench                      # every available section
    python -m load.bench --only codec,flow    # a selection, in the order given
    python -m load.bench --quick              # shorter phases where a section supports it
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SECTIONS: dict[str, str] = {
    "codec": "codec throughput: FlowCheckpoint <-> sealed bytes",
    "flow": "workflow runtime: runs, resumes and checkpoint overhead",
    "ingest": "the sidecar's CPU per checkpoint on its ingest path (one process, no I/O)",
    "sidecar": "end-to-end saves through the sidecar into PostgreSQL",
}

PrintFn = Callable[[str], Any]
Outcome = Literal["ok", "not available", "failed"]


@dataclass(frozen=True)
class SectionResult:
    """How one section went."""

    name: str
    outcome: Outcome
    seconds: float = 0.0
    detail: str = ""


def _header(name: str, print_fn: PrintFn) -> None:
    title = f"{name}: {SECTIONS.get(name, '')}".rstrip(": ")
    print_fn("")
    print_fn(f"=== {title} " + "=" * max(3, 76 - len(title)))


def _load(name: str) -> Any | None:
    """The section's module, or None when it does not exist (other import errors raise)."""
    module_name = f"load.bench_{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the section itself missing means "not available"; a missing dependency
        # inside an existing section is a failure worth seeing.
        if exc.name == module_name:
            return None
        raise


def run_section(name: str, print_fn: PrintFn = print, *, quick: bool = False) -> SectionResult:
    """Import and run one section, printing its header and output."""
    _header(name, print_fn)
    started = time.perf_counter()
    try:
        module = _load(name)
        if module is None:
            print_fn(f"not available (no load/bench_{name}.py)")
            return SectionResult(name, "not available")
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"load/bench_{name}.py has no run(print_fn=print) function")
        kwargs: dict[str, Any] = {"print_fn": print_fn}
        if quick and "quick" in inspect.signature(run).parameters:
            kwargs["quick"] = True
        result = run(**kwargs)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    except Exception as exc:  # a failing section must not hide the others' figures
        print_fn(traceback.format_exc().rstrip())
        print_fn(f"{name}: FAILED ({type(exc).__name__}: {exc})")
        return SectionResult(name, "failed", time.perf_counter() - started, str(exc))
    elapsed = time.perf_counter() - started
    print_fn(f"({name}: {elapsed:.1f} s)")
    return SectionResult(name, "ok", elapsed)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def parse_only(value: str | None) -> list[str]:
    """Section names from ``--only`` (comma separated), validated, in the order given."""
    if not value:
        return list(SECTIONS)
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown benchmark section(s) {unknown or value!r}: choose from {', '.join(SECTIONS)}"
        )
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None, print_fn: PrintFn = print) -> int:
    """Run the selected sections; returns the exit status (1 when a section failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m load.bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--only", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="shorter phases where supported")
    args = parser.parse_args(argv)
    try:
        names = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    results = [run_section(name, print_fn, quick=args.quick) for name in names]
    print_fn("")
    print_fn(
        "summary: "
        + ", ".join(
            f"{r.name} {r.outcome}" + (f" ({r.seconds:.1f} s)" if r.outcome == "ok" else "")
            for r in results
        )
    )
    return 1 if any(r.outcome == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
