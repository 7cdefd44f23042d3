"""The project's one user-error type.

Anything a user can get wrong (a name, a path, a file, an option value) raises
:class:`HarnessError` with a one-line message. The CLI prints that line on stderr and exits
with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user error: unknown name, bad path, malformed file, invalid option."""


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of ``exc``'s message (``default`` when it has none): what a one-line
    error quotes of a foreign exception."""
    return (str(exc).strip().splitlines() or [default])[0]
