"""``edgelake edge`` (also ``python -m edge``): run a device agent, or a fleet of them on this machine.

Only the ``edge`` extra is needed: nothing here imports TensorFlow, Spark, Beam or deltalake.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from edgelake.cli.common import console, err_console, reported_errors
from edgelake.settings import Settings

app = typer.Typer(help="The edge device agent: enroll, take models over the air, infer locally, store and forward results.", no_args_is_help=True)

FramesOption = typer.Option("fashion-mnist", "--frames", help="Camera: 'fashion-mnist' (its labelled test images) or a folder of .npy/.pgm images.")


@app.command("run")
def run(
    ctx: typer.Context,
    device_name: str = typer.Option(..., "--device-name", help="The device's name, reported at enrollment."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Credentials, models and queue; default <data_dir>/edge/<name>."),
    api_url: str | None = typer.Option(None, "--api-url", help="The edgelake API; default the api_url setting."),
    enrollment_token: str | None = typer.Option(None, "--enrollment-token", help="Spent on the first run to enroll."),
    registry_key: Path | None = typer.Option(None, "--registry-key", help="PEM key to pin instead of the one handed out at enrollment."),
    model: str = typer.Option("vision", "--model", help="The registry model the camera frames go through."),
    frames: str = FramesOption,
    frame_offset: int = typer.Option(0, "--frame-offset", min=0, help="Fashion-MNIST image to start from."),
    fps: float | None = typer.Option(None, "--fps", min=0.01, help="Frames a second; default the edge_frames_per_s setting."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Stop after this many results, once they are delivered."),
    heartbeat_s: float | None = typer.Option(None, "--heartbeat-s", min=0.1, help="Seconds between heartbeats."),
    drain_timeout_s: float = typer.Option(120.0, "--drain-timeout-s", min=0, help="How long to wait at the end for queued results to be delivered."),
) -> None:
    """Run one device agent until --max-frames results are delivered, or until stopped (Ctrl-C, SIGTERM).

    Prints a JSON summary on exit. Exit 3 when results are still queued (they are sent on the next run).
    """
    from edge.agent import Agent, AgentOptions, NotEnrolled

    settings: Settings = ctx.obj
    with reported_errors():
        options = AgentOptions.from_settings(
            settings, device_name, state_dir=state_dir, api_url=api_url, enrollment_token=enrollment_token, registry_key=registry_key,
            model=model, frames=frames, frame_offset=frame_offset, fps=fps, max_frames=max_frames, heartbeat_s=heartbeat_s,
            drain_timeout_s=drain_timeout_s,
        )  # fmt: skip
        agent = Agent(options)
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: agent.stop.set())
        try:
            summary = agent.run()
        except NotEnrolled as error:
            raise ValueError(str(error)) from None
    print(json.dumps(asdict(summary)), flush=True)
    if summary.queued:
        raise typer.Exit(3)


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
    from edge.fleet import FleetOptions, run_fleet

    settings: Settings = ctx.obj
    with reported_errors():
        if max_frames is None and duration_s is None:
            raise ValueError("give --max-frames or --duration-s (or both), so the fleet ends")
        options = FleetOptions(
            devices=devices, state_root=state_root or settings.data_dir / "fleet", api_url=api_url or settings.api_url,
            enrollment_token=enrollment_token or issue_local_enrollment_token(settings, devices, name_prefix), name_prefix=name_prefix,
            fps=fps, heartbeat_s=heartbeat_s, max_frames=max_frames, duration_s=duration_s, frames=frames,
        )  # fmt: skip
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
        from api.devices import DeviceStore, devices_path
    except ImportError:
        raise ValueError("no API on this machine to issue an enrollment token: give --enrollment-token") from None
    _, token = DeviceStore(devices_path(settings.data_dir)).issue_token(f"fleet {name}", devices, 3600)
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
        )  # fmt: skip
    return table


def main() -> None:
    """``python -m edge``: the edge commands with the settings from the environment."""
    from edgelake.logs import configure_logging

    def root(ctx: typer.Context) -> None:
        settings = Settings()
        configure_logging(settings)
        ctx.obj = settings

    app.callback()(root)
    app(prog_name="python -m edge")
