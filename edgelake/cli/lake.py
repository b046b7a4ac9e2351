"""``edgelake lake``: the lake's tables and their maintenance."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.lake.gold import GoldResult

app = typer.Typer(help="The lake's tables and their maintenance.", no_args_is_help=True)

MIN_RETENTION_HOURS = 168  # files younger than a week may still be read by a running job or a time-travel query


@app.command("tables")
def tables(ctx: typer.Context) -> None:
    """Every catalog table with its location and row count."""
    from edgelake.lake.catalog import Lake, row_count
    from edgelake.lake.tables import CATALOG

    lake = Lake.from_settings(ctx.obj)
    listing = Table("table", "layer", "rows", "partitioned by", "uri")
    for spec in CATALOG.values():
        rows = row_count(lake, spec.name)
        listing.add_row(spec.name, spec.layer, f"{rows:,}", ", ".join(spec.partition_by), lake.uri(spec))
    console.print(listing)


@app.command("describe")
def describe(ctx: typer.Context, table: str = typer.Argument(..., help="Catalog table name.")) -> None:
    """A table's definition, current version, size and columns (evolved ones included)."""
    from edgelake.lake import catalog

    with reported_errors():
        info = catalog.describe(catalog.Lake.from_settings(ctx.obj), table)
    console.print(f"[bold]{info.spec.name}[/] ({info.spec.layer}) — {info.spec.description}", highlight=False)
    console.print(f"uri: {info.uri}", highlight=False)
    console.print(
        f"version {info.version} · {info.rows:,} rows · {info.files} files · {info.size_bytes / 1e6:,.1f} MB · "
        f"partitioned by {', '.join(info.spec.partition_by) or 'nothing'}"
    )
    columns = Table("column", "type", "nullable", "defined in the catalog")
    defined = set(info.spec.schema.names)
    for field in info.schema:
        columns.add_row(field.name, str(field.type), "yes" if field.nullable else "no", "yes" if field.name in defined else "evolved")
    console.print(columns)


@app.command("history")
def history(
    ctx: typer.Context,
    table: str = typer.Argument(..., help="Catalog table name."),
    limit: int = typer.Option(20, "--limit", min=1, help="Newest commits to show."),
) -> None:
    """A table's commits, newest first: each version's time, operation and what it did."""
    from edgelake.lake import catalog

    with reported_errors():
        commits = catalog.history(catalog.Lake.from_settings(ctx.obj), table, limit)
    listing = Table("version", "time (UTC)", "operation", "rows added", "files +/-", "metadata")
    for commit in commits:
        metrics = commit["metrics"]
        files = f"+{metrics.get('num_added_files', metrics.get('numFilesAdded', 0))}/-{metrics.get('num_removed_files', metrics.get('numFilesRemoved', 0))}"
        when = commit["time"].strftime("%Y-%m-%d %H:%M:%S") if commit["time"] else ""
        meta = ", ".join(f"{k}={v}" for k, v in commit["metadata"].items())
        listing.add_row(str(commit["version"]), when, commit["operation"] or "", f"{metrics.get('num_added_rows', '')}", files, meta)
    console.print(listing)


@app.command("optimize")
def optimize(
    ctx: typer.Context, table: str = typer.Argument(..., help="Catalog table name, or 'all'.")
) -> None:
    """Compact a table's small files and write a checkpoint (the ingester does this every N batches)."""
    from edgelake.lake import catalog

    lake = catalog.Lake.from_settings(ctx.obj)
    with reported_errors():
        names = catalog.existing(lake) if table == "all" else [catalog.spec_of(table).name]
        for name in names:
            metrics = catalog.optimize(lake, name)
            console.print(f"{name}: {metrics['numFilesRemoved']} files compacted into {metrics['numFilesAdded']}")


@app.command("build-gold")
def build_gold(
    ctx: typer.Context,
    master: str | None = typer.Option(None, "--master", help="Spark master URL; default: the spark_master setting."),
) -> None:
    """Bring the gold tables up to date from silver with Spark: card features, device health, fraud rates."""
    settings: Settings = ctx.obj
    with reported_errors():
        run_build_gold(settings, master or settings.spark_master)


def run_build_gold(settings: Settings, master: str) -> list[GoldResult]:
    """Build gold on ``master``, showing progress, and print what each table's build did; each table's result."""
    from edgelake.lake import gold
    from edgelake.lake.catalog import Lake
    from edgelake.lake.spark import spark_session

    with console.status(f"starting Spark on {master}…") as status:
        spark = spark_session(master, "edgelake-build-gold", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
        results = gold.build_gold(spark, Lake.from_settings(settings), on_start=lambda name: status.update(f"building {name}…"))
    listing = Table("table", "silver rows in", "gold rows out", "time", "what was done")
    for result in results:
        listing.add_row(result.table, f"{result.rows_in:,}", f"{result.rows_out:,}", f"{result.seconds:.1f} s", result.detail)
    console.print(listing)
    return results


@app.command("vacuum")
def vacuum(
    ctx: typer.Context,
    table: str = typer.Argument(..., help="Catalog table name, or 'all'."),
    retention_hours: int = typer.Option(MIN_RETENTION_HOURS, "--retention-hours", min=0, help="Keep files removed more recently than this."),
    force: bool = typer.Option(False, "--force", help=f"Allow a retention below {MIN_RETENTION_HOURS} h."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted, delete nothing."),
) -> None:
    """Delete data files no longer referenced by the table, older than the retention."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.tables import CATALOG

    lake = Lake.from_settings(ctx.obj)
    with reported_errors():
        names = list(CATALOG) if table == "all" else [table]
        unknown = [name for name in names if name not in CATALOG]
        if unknown:
            raise UserError(f"no table {', '.join(unknown)}; see `edgelake lake tables`")
        if retention_hours < MIN_RETENTION_HOURS and not force:
            raise UserError(
                f"a retention of {retention_hours} h could delete files that running readers or time travel "
                f"still need; the minimum is {MIN_RETENTION_HOURS} h unless --force is given"
            )
        for name in names:
            found = lake.find(name)
            if found is None:
                continue
            deleted = found.vacuum(
                retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False
            )
            verb = "would delete" if dry_run else "deleted"
            console.print(f"{name}: {verb} {len(deleted)} file(s)")
