"""The error a command reports to people in one line: a mistake in their input or environment."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or environment, said in words they can act on.

    Commands report it in one line with exit status 2; any other exception is a bug and keeps its traceback.
    Subclasses that other code catches by a built-in type also derive from it (``class UnknownTable(UserError, LookupError)``).
    """
