"""Masking of sensitive fields in what a checkpoint stores (never in the live run).

A :class:`Redactor` replaces the value of every dict key equal,
case-insensitively, to one of the configured field names, at any depth, by
:data:`REDACTED`. It copies only the containers on the way to a match, so
values without sensitive keys are returned as they are (no copy at all).

A resumed node receives the redacted value (``"***REDACTED***"``) for those
fields: redact secrets a node can obtain again, not data it needs to resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "Redactor"]

REDACTED = "***REDACTED***"


class Redactor:
    """Callable masking ``fields`` (case-insensitive dict keys) anywhere in a value.

    >>> Redactor(["password"])({"user": "ann", "auth": [{"Password": "x"}]})
    {'user': 'ann', 'auth': [{'Password': '***REDACTED***'}]}
    """

    __slots__ = ("fields",)

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = frozenset(f.casefold() for f in fields)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __call__(self, value: Any) -> Any:
        if not self.fields:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            changed = False
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str) and key.casefold() in self.fields:
                    new: Any = REDACTED
                else:
                    new = self._walk(item)
                changed = changed or new is not item
                out[key] = new
            return out if changed else value
        if isinstance(value, (list, tuple)):
            items = [self._walk(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else tuple(items)
        # Sets hold only hashable values, which cannot be dicts: nothing to mask inside.
        return value
