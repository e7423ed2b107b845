"""Validation of the ids that end up in file names, URLs, Redis keys and SQL."""

from __future__ import annotations

import re

from checkpoint.errors import InvalidIdError

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe id, else raise :class:`InvalidIdError`.

    >>> validate_id("run-42", "run_id")
    'run-42'
    """
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise InvalidIdError(
            f"invalid {what} {value!r}: use 1-128 characters from [A-Za-z0-9._:-], "
            "starting with a letter or digit, without '..'"
        )
    return value


def is_valid_id(value: object) -> bool:
    """True when :func:`validate_id` would accept ``value``."""
    return isinstance(value, str) and bool(_ID.fullmatch(value)) and ".." not in value
