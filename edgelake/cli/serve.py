"""``edgelake serve``: the API under uvicorn, in the foreground or detached in the background."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import typer

from edgelake.console import console, reported_errors
from edgelake.daemons import process_alive, terminate_group
from edgelake.errors import UserError
from edgelake.settings import Settings


def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, "--host", help="Interface to listen on; default the host of the api_url setting."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="Port; default the port of the api_url setting."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (metrics are per worker; rate limits too unless rate_limits=redis)."),
    detach: bool = typer.Option(False, "--detach", help="Run in the background (pid and log in <data_dir>/api/); stop with --stop."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server started with --detach."),
) -> None:
    """Serve the API: scoring, SQL, catalog, model registry, devices and the dashboard."""
    settings: Settings = ctx.obj
    address = urlparse(settings.api_url)
    host = host or address.hostname or "127.0.0.1"
    port = port if port is not None else address.port or 8000
    with reported_errors():
        if stop:
            console.print("API server stopped" if stop_background(settings) else "no API server was running in the background")
        elif detach:
            console.print(f"API server running at {start_background(settings, host, port, workers)}", highlight=False)
        else:
            import uvicorn

            uvicorn.run(
                "edgelake.api.app:app_from_env", factory=True, workers=workers, host=host, port=port, log_level=settings.log_level.lower()
            )


def start_background(settings: Settings, host: str, port: int, workers: int = 1, timeout_s: float = 60.0) -> str:
    """Start ``edgelake serve`` detached unless one started so still runs; wait until it is healthy; its URL."""
    import httpx2

    url = f"http://{host}:{port}"
    pid_file = _pid_file(settings)
    if _running(pid_file):
        return json.loads(pid_file.read_text())["url"]
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "edgelake", "serve", "--host", host, "--port", str(port), "--workers", str(workers)]
    log_path = pid_file.parent / "server.log"
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:  # only its owner reads it
        log_path.chmod(0o600)  # one written by an older version
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(json.dumps({"pid": process.pid, "url": url}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the API server exited with status {process.returncode}; see {pid_file.parent / 'server.log'}")
        try:
            if httpx2.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return url
        except httpx2.TransportError:
            time.sleep(0.2)
    stop_background(settings)
    raise UserError(f"the API server did not answer at {url} within {timeout_s:g} s; see {pid_file.parent / 'server.log'}")


def stop_background(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Stop the detached server, if one runs; whether one was stopped."""
    pid_file = _pid_file(settings)
    if not _running(pid_file):
        pid_file.unlink(missing_ok=True)
        return False
    terminate_group(json.loads(pid_file.read_text())["pid"], timeout_s)
    pid_file.unlink(missing_ok=True)
    return True


def _pid_file(settings: Settings) -> Path:
    return settings.data_dir / "api" / "server.pid"


def _running(pid_file: Path) -> bool:
    try:
        return process_alive(json.loads(pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
