"""Many agents as processes on one machine, for demos and tests: each its own device, state and camera offset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelake.edge.agent import STATUS

FRAMES_APART = 500  # each device's camera starts this many Fashion-MNIST images after the previous one's


@dataclass(frozen=True)
class FleetOptions:
    devices: int
    state_root: Path
    api_url: str
    enrollment_token: str
    name_prefix: str = "edge"
    fps: float = 5.0
    heartbeat_s: float = 2.0
    max_frames: int | None = None
    duration_s: float | None = None
    frames: str = "fashion-mnist"


@dataclass(frozen=True)
class DeviceRun:
    """One agent process of the fleet: how it ended and the summary it printed."""

    name: str
    returncode: int | None
    summary: dict[str, Any] | None


def device_names(options: FleetOptions) -> list[str]:
    return [f"{options.name_prefix}-{index:02d}" for index in range(options.devices)]


def run_fleet(
    options: FleetOptions, on_tick: Callable[[list[dict[str, Any]]], None] | None = None, stop: threading.Event | None = None
) -> list[DeviceRun]:
    """Start every agent, call ``on_tick`` with their latest statuses about once a second, and wait for them.

    Agents end on their own after ``max_frames``; after ``duration_s``, or once ``stop`` is
    set, the rest are stopped (SIGTERM: each finishes its frame and keeps its queue for the next run).
    """
    stop = stop or threading.Event()
    processes = {name: _start(options, index, name) for index, name in enumerate(device_names(options))}
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s
    try:
        while any(process.poll() is None for process in processes.values()):
            if on_tick:
                on_tick(statuses(options))
            if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                break
            stop.wait(1.0)
    finally:
        _stop(processes.values())
    if on_tick:
        on_tick(statuses(options))
    return [DeviceRun(name, process.returncode, _summary(options.state_root / name)) for name, process in processes.items()]


def statuses(options: FleetOptions) -> list[dict[str, Any]]:
    """The last heartbeat each agent delivered (an empty one for an agent that has not yet)."""
    found = []
    for name in device_names(options):
        path = options.state_root / name / STATUS
        try:
            found.append(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            found.append({"device_name": name})
    return found


def _start(options: FleetOptions, index: int, name: str) -> subprocess.Popen[bytes]:
    directory = options.state_root / name
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "edgelake.edge", "run", "--device-name", name, "--state-dir", str(directory), "--api-url", options.api_url,
        "--enrollment-token", options.enrollment_token, "--frames", options.frames, "--frame-offset", str(index * FRAMES_APART),
        "--fps", str(options.fps), "--heartbeat-s", str(options.heartbeat_s),
        *(["--max-frames", str(options.max_frames)] if options.max_frames is not None else []),
    ]
    env = {**os.environ, "EDGELAKE_LOG_FORMAT": "json"}
    with (directory / "agent.out").open("wb") as out, (directory / "agent.log").open("ab") as log:
        return subprocess.Popen(command, stdout=out, stderr=log, env=env)


def _stop(processes: Any) -> None:
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _summary(directory: Path) -> dict[str, Any] | None:
    try:
        lines = (directory / "agent.out").read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
