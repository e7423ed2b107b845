"""The ``flowpoint`` command line. Each command group lives in its own module.

Every option also reads ``FLOWPOINT_<NAME>`` from the environment.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="flowpoint",
    help="Checkpoint/resume for agent workflows.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"auto_envvar_prefix": "FLOWPOINT"},
)


def _register() -> None:
    # Imported here so each module can `from flowpoint_cli import app` to add its commands.
    from flowpoint_cli import (  # noqa: F401
        commands_db,
        commands_demo,
        commands_flow,
        commands_inspect,
        commands_serve,
        commands_verify,
    )


def main() -> None:
    """Console-script entry point."""
    _register()
    app()
