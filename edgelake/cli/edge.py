"""``edgelake edge``: the device agent's own commands, and a fleet of agents run on this machine for demos and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from edgelake.console import console, err_console, reported_errors
from edgelake.edge.cli import FramesOption
from edgelake.edge.cli import app as device_app
from edgelake.errors import UserError
from edgelake.settings import Settings

app = typer.Typer(help=device_app.info.help, no_args_is_help=True)
app.registered_commands.extend(device_app.registered_commands)


@app.command("fleet")
def fleet(
    ctx: typer.Context,
    devices: int = typer.Option(20, "--devices", min=1, max=500, help="How many agents to run as processes."),
    state_root: Path | None = typer.Option(None, "--state-root", help="One state dir per device under it; default <data_dir>/fleet."),
    api_url: str | None = typer.Option(None, "--api-url", help="The edgelake API; default the api_url setting."),
    enrollment_token: str | None = typer.Option(
        None, "--enrollment-token", help="Good for every device; by default one is issued from this machine's data dir."
    ),
    name_prefix: str = typer.Option("edge", "--name-prefix", help="Devices are named PREFIX-00, PREFIX-01, ..."),
    frames: str = FramesOption,
    fps: float = typer.Option(5.0, "--fps", min=0.01, help="Frames a second per device."),
    heartbeat_s: float = typer.Option(2.0, "--heartbeat-s", min=0.1, help="Seconds between each device's heartbeats."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Results per device; then each agent stops."),
    duration_s: float | None = typer.Option(None, "--duration-s", min=1, help="Stop every agent after this many seconds."),
) -> None:
    """Run a fleet of agents on this machine and show each device's model, results and queue as they go."""
    from edgelake.edge.fleet import FleetOptions, run_fleet

    settings: Settings = ctx.obj
    with reported_errors():
        if max_frames is None and duration_s is None:
            raise UserError("give --max-frames or --duration-s (or both), so the fleet ends")
        options = FleetOptions(
            devices=devices, state_root=state_root or settings.data_dir / "fleet", api_url=api_url or settings.api_url,
            enrollment_token=enrollment_token or issue_local_enrollment_token(settings, devices, name_prefix), name_prefix=name_prefix,
            fps=fps, heartbeat_s=heartbeat_s, max_frames=max_frames, duration_s=duration_s, frames=frames,
        )
        with Live(fleet_table([]), console=console, refresh_per_second=1, transient=False) as live:
            runs = run_fleet(options, lambda statuses: live.update(fleet_table(statuses)))
    failed = [run for run in runs if run.returncode not in (0, 3)]  # 3: stopped with results still queued for the next run
    for run in failed:
        err_console.print(f"[red]{run.name} exited {run.returncode}[/]; see {options.state_root / run.name / 'agent.log'}", highlight=False)
    if failed:
        raise typer.Exit(1)


def issue_local_enrollment_token(settings: Settings, devices: int, name: str) -> str:
    """An enrollment token for ``devices`` devices from this machine's device store (the API's data dir)."""
    try:
        from edgelake.control_db import ControlDb
        from edgelake.api.devices import DeviceStore
    except ImportError:
        raise UserError("no API on this machine to issue an enrollment token: give --enrollment-token") from None
    _, token = DeviceStore(ControlDb.from_settings(settings)).issue_token(f"fleet {name}", devices, 3600)
    return token


def fleet_table(statuses: list[dict[str, Any]]) -> Table:
    """One row per device, from its last heartbeat: model version, results made, delivered, queued and dropped, accuracy, runtime."""
    table = Table("device", "model", "frames", "delivered", "queued", "dropped", "accuracy", "runtime", title="edge fleet")
    for status in statuses:
        health = status.get("health", {})
        models = ", ".join(f"{name} v{version}" for name, version in status.get("models", {}).items())
        accuracy = "" if health.get("accuracy") is None else f"{health['accuracy']:.3f}"
        table.add_row(
            status.get("device_name", "?"), models, *(str(health.get(key, "")) for key in ("frames", "delivered", "queued", "dropped")),
            accuracy, str(health.get("runtime") or ""),
        )
    return table
