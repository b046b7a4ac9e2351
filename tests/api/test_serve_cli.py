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
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx2.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert response.json() == {"status": "ready"}
        assert httpx2.get(f"http://127.0.0.1:{port}/v1/tables", timeout=2).status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
