"""User-facing errors.

Anything a user can cause (bad id, bad flag, unreachable backend) is raised as a
:class:`UserError`; the CLI prints its message on one line and exits with its code,
so a user mistake never shows a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code ``exit_code``."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotFound(UserError):
    """The requested trace (or other object) does not exist in the backend."""


class BackendError(UserError):
    """A backend is down, timed out or answered with an error."""

    exit_code = 3
