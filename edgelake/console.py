"""What every command line (the ``edgelake`` CLI and the device's ``edgelake-edge``) shares: consoles and error reporting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from edgelake.errors import UserError

console = Console()
err_console = Console(stderr=True)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a UserError into a clear one-line message and exit status 2; any other error keeps its traceback."""
    try:
        yield
    except UserError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None


def metric_text(value: float, name: str = "") -> str:
    """A model metric for people, by its ``name``: durations with their unit (``seconds`` in the name, ``*_s``, ``*_ms``),
    rates (``*per_s``) and counts and byte sizes as integers, scores to four decimals."""
    if name.endswith("per_s"):
        return f"{value:,.0f}/s"
    if "seconds" in name or name.endswith("_s"):
        return f"{value:,.1f} s"
    if name.endswith("_ms"):
        return f"{value:,.3f} ms"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4f}"
