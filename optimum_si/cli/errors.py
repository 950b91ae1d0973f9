"""The command line's one kind of user error."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""
