"""Helpers every command group shares: console and error reporting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from edgelake.broker import BrokerUnavailable
from edgelake.contracts import InvalidEvent

console = Console()
err_console = Console(stderr=True)

# Errors that mean the user's input or environment is wrong: reported in one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    InvalidEvent,
    BrokerUnavailable,
    FileNotFoundError,
    LookupError,
    TimeoutError,
    ValueError,
    RuntimeError,
)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn expected failures into a clear one-line message and exit status 2."""
    try:
        yield
    except USER_ERRORS as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None


def metric_text(value: float) -> str:
    """A model metric for people: counts and byte sizes as integers, scores to four decimals."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4f}"
