"""Shared bits of the node scripts: an append-only event log and a logging scripted model."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.llm import ScriptedChat


def append(log: str | Path, line: str) -> None:
    """Append one line with a single O_APPEND write (safe across threads and processes)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def lines(log: str | Path) -> list[str]:
    """The log's lines (empty when it does not exist yet)."""
    try:
        return Path(log).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


class LoggedChat(ScriptedChat):
    """A ScriptedChat that logs ``model <i>`` per call and can SIGKILL its process on call n."""

    def __init__(self, script: list[Any], log: str, kill_on_call: int | None = None) -> None:
        super().__init__(script)
        self.log = log
        self.kill_on_call = kill_on_call

    async def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        index = sum(1 for m in messages if isinstance(m, Mapping) and m.get("role") == "assistant")
        append(self.log, f"model {index}")
        if self.kill_on_call is not None and self.calls + 1 == self.kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().chat(messages, tools)


def emit(doc: dict[str, Any]) -> None:
    """The script's result: one JSON line on stdout."""
    print(json.dumps(doc, default=str, sort_keys=True), flush=True)
