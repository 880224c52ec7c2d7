"""One exception type for everything the user can fix.

The CLI turns a `UserError` into a single line on stderr and exit code 2; any other
exception is a bug in fastheads and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request: the message says what, where, and how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line
