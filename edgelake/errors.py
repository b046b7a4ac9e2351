"""The error a command reports to people in one line: a mistake in their input or environment."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or environment, said in words they can act on."""


# Errors that mean the user's input or environment is wrong: reported in one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    LookupError,
    TimeoutError,
    ValueError,
    RuntimeError,
)
