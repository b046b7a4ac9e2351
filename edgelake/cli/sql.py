"""``edgelake sql``: one guarded, read-only query over the lake's tables."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from edgelake.console import console, err_console, reported_errors
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.lake.sql import QueryResult


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def sql(
    ctx: typer.Context,
    statement: str = typer.Argument(..., help="One SELECT (or WITH … SELECT) over catalog tables."),
    output: Format = typer.Option(Format.table, "--format", help="table for people; csv or json on stdout for programs."),
    as_of: list[str] | None = typer.Option(
        None, "--as-of", metavar="VERSION | TABLE=VERSION", help="VERSION for a one-table query, or TABLE=VERSION (repeatable) to read older versions."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Most rows to return; default the sql_row_limit setting."),
    timeout: float | None = typer.Option(None, "--timeout", min=0.001, help="Seconds before the query is abandoned; default the sql_timeout_s setting."),
) -> None:
    """Run one read-only query over the lake's tables: no writes, no files, only catalog tables."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.sql import json_rows, run_query

    settings: Settings = ctx.obj
    versions = _as_of(as_of or [])
    with reported_errors():
        result = run_query(
            Lake.from_settings(settings), statement, as_of=versions,
            limit=limit or settings.sql_row_limit, max_bytes=settings.sql_byte_limit, timeout_s=timeout or settings.sql_timeout_s,
        )
    if output is Format.json:
        print(json.dumps(json_rows(result.table)))
    elif output is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.table.column_names)
        writer.writerows([_csv_cell(value) for value in row.values()] for row in json_rows(result.table))
    else:
        print_result(result)
    if result.truncated:
        err_console.print(f"[yellow]more rows than the limit of {result.table.num_rows:,}: the rest were cut off (raise --limit)[/]")


def print_result(result: QueryResult) -> None:
    """The rows as a table, then a footer with the row count, the table versions read and the time."""
    listing = Table(*result.table.column_names)
    for values in zip(*(column.to_pylist() for column in result.table.columns), strict=True):
        listing.add_row(*(Text("null", style="dim") if value is None else Text(str(value)) for value in values))
    console.print(listing)
    read = ", ".join(f"{name}@{version}" for name, version in result.tables.items()) or "none"
    rows = result.table.num_rows
    err_console.print(f"{rows:,} row{'' if rows == 1 else 's'} · tables read at versions {read} · {result.elapsed_s:.2f} s", highlight=False)


def _as_of(values: list[str]) -> dict[str, int] | int | None:
    """``--as-of`` as run_query takes it: one version, or a version per table."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return _version(values[0])
    pairs = [value.partition("=") for value in values]
    if not all(table and equals for table, equals, _ in pairs):
        raise typer.BadParameter("give one VERSION, or TABLE=VERSION for each table", param_hint="--as-of")
    return {table: _version(version) for table, _, version in pairs}


def _version(text: str) -> int:
    if not text.strip().isdigit():
        raise typer.BadParameter(f"'{text}' is not a table version (a whole number)", param_hint="--as-of")
    return int(text)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return value
