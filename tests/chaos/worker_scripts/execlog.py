"""The execution log shared by worker processes: one line per event, appended atomically.

Every write opens the file with ``O_APPEND`` and issues one ``write`` of one short line,
so lines from successive (or killed) processes never interleave or tear, and their order
in the file is the order in which they happened. A SIGKILL loses nothing already written:
the kernel holds it. Lines (space-separated):

* ``proc PID MODE`` - a worker process began (before touching the store);
* ``go PID`` - it owns the run now (fresh run started, or claim taken and checkpoint loaded);
* ``start NODE PID ATTEMPT`` / ``end NODE PID ATTEMPT`` - a node execution began /
  returned its output (ATTEMPT is the runtime's count: 1 + the attempts a checkpoint
  recorded; an execution cut short before any checkpoint named it leaves no count);
* ``ack SEQ PID EVENT NODE`` - checkpoint SEQ was acknowledged as durable (``-`` for no node);
* ``done PID STATUS SEQ`` - the run call returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def append(path: str | os.PathLike[str], *fields: object) -> None:
    """Append one line made of ``fields`` with a single O_APPEND write."""
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Line:
    """One parsed line: its position in the file, kind and fields."""

    index: int
    kind: str
    fields: tuple[str, ...]

    @property
    def pid(self) -> int:
        """The process that wrote it."""
        position = {"proc": 0, "go": 0, "start": 1, "end": 1, "ack": 1, "done": 0}[self.kind]
        return int(self.fields[position])


def read(path: Path) -> list[Line]:
    """Every line of the log, in file order (an absent file is an empty log)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = []
    for index, raw in enumerate(text.splitlines()):
        kind, *fields = raw.split()
        lines.append(Line(index, kind, tuple(fields)))
    return lines
