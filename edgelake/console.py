"""What every command line (the ``edgelake`` CLI and the device's ``edgelake-edge``) shares: consoles and error reporting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from edgelake.errors import USER_ERRORS

console = Console()
err_console = Console(stderr=True)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the user's mistakes into a clear one-line message and exit status 2."""
    try:
        yield
    except USER_ERRORS as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None


def metric_text(value: float) -> str:
    """A model metric for people: counts and byte sizes as integers, scores to four decimals."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4f}"
