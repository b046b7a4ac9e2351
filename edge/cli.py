"""``edgelake-edge`` (also ``python -m edgelake.edge``, and ``edgelake edge`` in the cloud's CLI): run a device agent.

Only the edge's own dependencies are needed: nothing here imports TensorFlow, Spark, Beam or deltalake.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from pathlib import Path

import typer

from edgelake.console import reported_errors
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
    from edgelake.edge.agent import Agent
    from edgelake.edge.options import AgentOptions

    settings: Settings = ctx.obj
    with reported_errors():
        options = AgentOptions.from_settings(
            settings, device_name, state_dir=state_dir, api_url=api_url, enrollment_token=enrollment_token, registry_key=registry_key,
            model=model, frames=frames, frame_offset=frame_offset, fps=fps, max_frames=max_frames, heartbeat_s=heartbeat_s,
            drain_timeout_s=drain_timeout_s,
        )
        agent = Agent(options)
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: agent.stop.set())
        summary = agent.run()
    print(json.dumps(asdict(summary)), flush=True)
    if summary.queued:
        raise typer.Exit(3)



def main() -> None:
    """``edgelake-edge`` and ``python -m edgelake.edge``: the edge commands with the settings from the environment."""
    from edgelake.logs import configure_logging

    def root(ctx: typer.Context) -> None:
        settings = Settings()
        configure_logging(settings)
        ctx.obj = settings

    app.callback()(root)
    app(prog_name="edgelake-edge")
