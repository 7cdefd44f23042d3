"""The project's one user-error type.

Anything a user can get wrong (a name, a path, a file, an option value) raises
:class:`HarnessError` with a one-line message. The CLI prints that line on stderr and exits
with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A user error: unknown name, bad path, malformed file, invalid option."""
