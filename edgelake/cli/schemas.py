"""``edgelake schemas``: the event contracts as JSON Schema."""

from __future__ import annotations

from pathlib import Path

import typer

from edgelake.console import console
from edgelake.contracts import export_json_schemas

app = typer.Typer(help="Export the event contracts as JSON Schema.", no_args_is_help=True)


@app.command("export")
def export(directory: Path = typer.Argument(..., help="Folder to write <event>.v<version>.json files into.")) -> None:
    """Write one JSON Schema file per event type."""
    for path in export_json_schemas(directory):
        console.print(f"wrote {path}")
