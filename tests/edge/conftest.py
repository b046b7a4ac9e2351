"""A real cloud for edge agents: a lake whose registry holds vision models, a real API server and broker; agents as processes."""

from __future__ import annotations

from functools import cached_property

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore
from edgelake.broker import EmbeddedBroker, free_port
from edgelake.lake.catalog import Lake
from edgelake.settings import Settings
from support import REPO, isolated_settings
from tests.api.conftest import serving
from edgelake.training import registry

if TYPE_CHECKING:
    pass

VISION = "vision"


@dataclass
class Cloud:
    """The settings, the API's URL and port, and the registry of one edge test world."""

    settings: Settings
    port: int
    url: str
    stop_api: Callable[[], None] = field(repr=False)
    start_api: Callable[[], None] = field(repr=False)

    @property
    def lake(self) -> Lake:
        return Lake.from_settings(self.settings)

    @property
    def root(self) -> Path:
        return registry.registry_root(self.lake)

    @cached_property
    def models(self) -> registry.Registry:
        """The registry, with connections of its own kept for the test."""
        return registry.Registry.from_settings(self.settings)

    def enrollment_token(self, uses: int = 1) -> str:
        return DeviceStore(ControlDb.from_settings(self.settings)).issue_token("edge tests", uses, 3600)[1]

    def publish(self, files: Mapping[str, Path], extra: Mapping[str, Any], promote_to: str | None = "production", accuracy: float = 0.0) -> int:
        """Publish a vision version signed with the registry's key; its number."""
        version = registry.publish_run(
            self.lake, ControlDb.from_settings(self.settings), self.settings.data_dir / registry.KEYS_DIR, VISION, files, metrics={"int8_accuracy": accuracy},
            lineage={"silver_camera_frames": 1}, extra=extra, promote_to=promote_to,  # type: ignore[arg-type]
        )
        return version.version

    def version_dir(self, version: int) -> Path:
        return self.root / VISION / str(version)


@contextmanager
def cloud_world(base: Path, bootstrap_servers: str) -> Iterator[Cloud]:
    """A lake, an API server on a fixed port that a test may stop and start again, and its settings."""
    settings = isolated_settings(bootstrap_servers, base / "data")
    port = free_port()
    servers: list[AbstractContextManager[str]] = []

    def start_api() -> None:
        server = serving(create_app(settings), port)
        server.__enter__()
        servers.append(server)

    def stop_api() -> None:
        servers.pop().__exit__(None, None, None)

    start_api()
    try:
        yield Cloud(settings, port, f"http://127.0.0.1:{port}", stop_api, start_api)
    finally:
        while servers:
            stop_api()


@pytest.fixture
def cloud(kafka: EmbeddedBroker, tmp_path: Path) -> Iterator[Cloud]:
    with cloud_world(tmp_path / "cloud", kafka.bootstrap_servers) as world:
        yield world


@dataclass
class AgentProcess:
    """An agent running as a process: its state dir, and its output once it ended."""

    process: subprocess.Popen[bytes]
    state_dir: Path

    def installed(self) -> dict[str, Any]:
        path = self.state_dir / "models" / VISION / "installed.json"
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}

    def active(self) -> int | None:
        return self.installed().get("active")

    def finish(self, timeout_s: float = 180) -> dict[str, Any]:
        """Wait for the agent to exit 0; its JSON summary."""
        returncode = self.process.wait(timeout_s)
        log = (self.state_dir / "agent.log").read_text()
        assert returncode == 0, f"the agent exited {returncode}:\n{log[-4000:]}"
        return json.loads((self.state_dir / "agent.out").read_text().strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_agent(
    python: Path | str, cloud: Cloud, name: str, state_dir: Path, *options: str, token: str | None = None, env: Mapping[str, str] | None = None
) -> AgentProcess:
    """``python -m edge run`` as a device named ``name`` of ``cloud`` (``env`` added to its environment), with JSON logs in ``state_dir/agent.log``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), "-m", "edgelake.edge", "run", "--device-name", name, "--state-dir", str(state_dir), "--api-url", cloud.url,
        "--enrollment-token", token or cloud.enrollment_token(), *options,
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "EDGELAKE_LOG_FORMAT": "json",
        "EDGELAKE_DATA_DIR": str(state_dir / "data"),  # nothing of the cloud's: the device has its own
        "EDGELAKE_FASHION_MNIST_DIR": str(cloud.settings.fashion_mnist_dir),
        **(env or {}),
    }
    with (state_dir / "agent.out").open("wb") as out, (state_dir / "agent.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=out, stderr=log, env=env, cwd=state_dir)
    return AgentProcess(process, state_dir)


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60, agent: AgentProcess | None = None) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` (with the agent's log tail) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if agent is not None and agent.process.poll() is not None:
            break
        time.sleep(0.2)
    log = "" if agent is None else (agent.state_dir / "agent.log").read_text()[-4000:]
    pytest.fail(f"timed out waiting for {what}\n{log}")


def main_python() -> Path:
    return Path(sys.executable)


EDGE_VENVS = {"litert": REPO / ".venv-edge", "tflite_runtime": REPO / ".venv-edge-tflite"}


def edge_python(runtime: str) -> Path:
    """The python of the slim venv with only the edge extra for ``runtime``; fails the test when it is missing."""
    python = EDGE_VENVS[runtime] / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python.parent.parent} is missing: run `make test` or `bash infra/edge-venv.sh` first", pytrace=False)
    return python


def shifted_expectations(extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` whose smoke-test samples expect the wrong class for every input."""
    samples = dict(extra["samples"])
    samples["expected"] = [(int(value) + 1) % 10 for value in samples["expected"]]
    return {**extra, "samples": samples}


def color_model(directory: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """A real TFLite model for 28×28 RGB inputs, with samples it passes: it loads and passes its smoke test, but fails on
    the device's grayscale frames at run time."""
    import keras

    from edgelake.fashion_mnist import CLASSES
    from edgelake.interpreters import load_interpreter, predict
    from edgelake.training.tflite import float_tflite

    directory.mkdir(parents=True, exist_ok=True)
    model = keras.Sequential([keras.Input((28, 28, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    (directory / "color.tflite").write_bytes(float_tflite(model))
    inputs = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    expected = predict(load_interpreter(directory / "color.tflite"), inputs).argmax(axis=1)
    np.savez_compressed(directory / "samples.npz", inputs=inputs, expected=expected)
    extra = {"edge_model": "color.tflite", "classes": list(CLASSES), "samples": {"file": "samples.npz", "expected": expected.tolist()}}
    return {"color.tflite": directory / "color.tflite", "samples.npz": directory / "samples.npz"}, extra
