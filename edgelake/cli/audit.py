"""``edgelake audit``: the control plane's audit log, and the entry each admin command adds to it (``admin_command``)."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.table import Table

from edgelake.console import console, reported_errors
from edgelake.settings import Settings

app = typer.Typer(help="The audit log: admin actions and refused requests; its copy in the lake.", no_args_is_help=True)


@contextmanager
def admin_command(settings: Settings, action: str, target: str) -> Iterator[dict[str, str]]:
    """Log the command the block runs in the control plane's audit log; the block may set the entry's ``target`` and ``detail``."""
    from edgelake.api.audit import AuditLog, audited
    from edgelake.control_db import ControlDb

    log = AuditLog(ControlDb.from_settings(settings))
    with audited(log, actor=f"cli:{getpass.getuser()}", action=action, target=target, client=socket.gethostname()) as entry:
        yield entry


@app.command("list")
def list_entries(
    ctx: typer.Context,
    after: int = typer.Option(0, "--after", min=0, help="Only entries with a larger id."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="Most entries shown."),
) -> None:
    """Entries oldest first: when, who, what, on what, how it ended and why."""
    from edgelake.api.audit import AuditLog
    from edgelake.control_db import ControlDb

    settings: Settings = ctx.obj
    with reported_errors():
        entries = AuditLog(ControlDb.from_settings(settings)).events(after=after, limit=limit)
    listing = Table("id", "time (UTC)", "actor", "action", "target", "outcome", "client", "detail")
    for entry in entries:
        outcome = entry.outcome if entry.status is None else f"{entry.outcome} {entry.status}"
        listing.add_row(
            str(entry.id), f"{entry.time:%Y-%m-%d %H:%M:%S}", entry.actor, entry.action, entry.target, outcome, entry.client, entry.detail
        )
    console.print(listing)


@app.command("export")
def export(ctx: typer.Context) -> None:
    """Copy the entries not yet copied to the lake's audit-log topic now (API servers do it every audit_export_s)."""
    from edgelake.api.audit import AuditLog
    from edgelake.api.audit_export import AuditExporter
    from edgelake.control_db import ControlDb
    from edgelake.contracts import AuditRecord

    settings: Settings = ctx.obj
    with reported_errors():
        exporter = AuditExporter(settings, AuditLog(ControlDb.from_settings(settings)))
        try:
            exported = exporter.export()
        finally:
            exporter.close()
    console.print(f"{exported:,} audit entries sent to {settings.topic(AuditRecord.topic)}; ingest lands them in silver_audit_log", highlight=False)
