"""``edgelake keys``: the API's keys, kept as hashes in the control-plane database."""

from __future__ import annotations

from enum import Enum
from typing import cast

import typer
from rich.table import Table

from edgelake.api.keys import ROLES, Role
from edgelake.cli.audit import admin_command
from edgelake.console import console, err_console, reported_errors
from edgelake.settings import Settings

RoleChoice = Enum("RoleChoice", {role: role for role in ROLES}, type=str)  # type: ignore[misc]  # mypy reads only literal members

app = typer.Typer(help="API keys: create (shown once), list and revoke; enrollment tokens for devices.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Who or what the key is for."),
    role: RoleChoice = typer.Option(..., "--role", help="What the key may do; admin may do everything."),
) -> None:
    """Create a key and print it; this is the only time it is shown."""
    from edgelake.control_db import ControlDb
    from edgelake.api.keys import KeyStore

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "keys create", name) as entry:
        key, token = KeyStore(ControlDb.from_settings(settings)).create(name, cast(Role, role.value))
        entry.update(target=key.id, detail=f"{key.role} key for {name}")
    print(token)
    err_console.print(f"created {key.id} ({key.role}) for {key.name}; the key above is not stored and will not be shown again", highlight=False)


@app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Every key: id, name, role, creation time and whether it is revoked."""
    from edgelake.control_db import ControlDb
    from edgelake.api.keys import KeyStore

    settings: Settings = ctx.obj
    listing = Table("id", "name", "role", "created (UTC)", "revoked")
    for key in KeyStore(ControlDb.from_settings(settings)).keys():
        listing.add_row(key.id, key.name, key.role, key.created.strftime("%Y-%m-%d %H:%M:%S"), "yes" if key.revoked else "no")
    console.print(listing)


@app.command("revoke")
def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id, from `edgelake keys list`.")) -> None:
    """Revoke a key; running servers refuse it within api_key_cache_s (1 s by default)."""
    from edgelake.control_db import ControlDb
    from edgelake.api.keys import KeyStore

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "keys revoke", key_id):
        key = KeyStore(ControlDb.from_settings(settings)).revoke(key_id)
    console.print(f"revoked {key.id} ({key.name})", highlight=False)


@app.command("enrollment-token")
def enrollment_token(
    ctx: typer.Context,
    name: str = typer.Option("", "--name", help="What the token is for, e.g. a site or a batch of devices."),
    uses: int = typer.Option(1, "--uses", min=1, help="How many devices may enroll with it."),
    expires_in_s: int = typer.Option(86_400, "--expires-in-s", min=1, help="Seconds until it expires."),
) -> None:
    """Issue a token devices enroll with (`POST /v1/devices/enroll`); it is shown this once."""
    from edgelake.control_db import ControlDb
    from edgelake.api.devices import DeviceStore

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "keys enrollment-token", name) as entry:
        record, token = DeviceStore(ControlDb.from_settings(settings)).issue_token(name, uses, expires_in_s)
        entry.update(target=record.id, detail=f"{uses} use(s) for {expires_in_s} s")
    print(token)
    expires = record.expires.strftime("%Y-%m-%d %H:%M:%S")
    err_console.print(f"issued {record.id} for {uses} enrollment(s) until {expires} UTC; the token above is not stored", highlight=False)
