"""``edgelake config``: the effective settings."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from edgelake.console import console
from edgelake.settings import Settings

app = typer.Typer(help="Show the effective settings (environment variables prefixed EDGELAKE_).", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every setting, its value and its environment variable."""
    settings: Settings = ctx.obj
    values = settings.model_dump(mode="json")
    if as_json:
        print(json.dumps(values, indent=2))
        return
    table = Table("setting", "value", "environment variable", "description")
    for name, field in Settings.model_fields.items():
        table.add_row(name, str(values[name]), f"EDGELAKE_{name.upper()}", field.description or "")
    console.print(table)
