"""``edgelake serve`` as a user runs it: a real process with two workers answering on its port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from edgelake.broker import free_port


def test_serve_runs_the_app_factory_in_several_workers(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "lake").mkdir()
    env = {**os.environ, "EDGELAKE_DATA_DIR": str(tmp_path), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"), "EDGELAKE_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelake", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx2.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert response.status_code == 200 and response.json()["status"] == "degraded"  # a lake without a fraud model
        assert httpx2.get(f"http://127.0.0.1:{port}/v1/tables", timeout=2).status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output


def test_serve_detached_runs_in_the_background_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "lake").mkdir()
    env = {**os.environ, "EDGELAKE_DATA_DIR": str(tmp_path), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "edgelake", "serve", "--host", "127.0.0.1", "--port", str(port)]

    key = "elk_" + "Zq9" * 14  # the shape of a key; the page is served to anyone, its data only to a key
    try:
        started = subprocess.run([*command, "--detach"], env=env, capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, started.stderr
        assert f"API server running at http://127.0.0.1:{port}" in started.stdout
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        again = subprocess.run([*command, "--detach"], env=env, capture_output=True, text=True, timeout=90)
        assert f"http://127.0.0.1:{port}" in again.stdout  # the running one, not a second server
        page = httpx2.get(f"http://127.0.0.1:{port}/?key={key}", timeout=5)
        assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    finally:  # a failed assertion must not leave the server running
        stopped = subprocess.run([*command, "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "API server stopped" in stopped.stdout
    try:
        httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        raise AssertionError("the server still answers after --stop")
    except httpx2.TransportError:
        pass
    assert not (tmp_path / "api" / "server.pid").exists()
    log = tmp_path / "api" / "server.log"
    assert "GET /?key=[redacted]" in log.read_text() and key not in log.read_text()  # the live key was logged as sent
    assert log.stat().st_mode & 0o777 == 0o600
