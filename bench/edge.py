"""Edge inference: the int8 vision model against the float one on this CPU, and the running agent's memory.

Latency is per frame, a batch of one, on one thread with each runtime's default delegates
(XNNPACK under LiteRT): the median over ``FRAMES`` Fashion-MNIST test frames of each
frame's median invocation time, the two models measured in turn on the same frame so that
other work on the machine weighs on both alike. Size is the float file's bytes over the
int8 file's.

Memory is that of a real agent (``python -m edge run``, in a child process) on a scratch
world: its own data dir, lake and topics, and a private broker where the embedded one is
used, so the user's fleet and lake stay out of it. A real API server on loopback serves
the int8 model, published signed to the scratch registry with smoke-test samples; the agent
enrolls, receives it over the air, classifies Fashion-MNIST frames at ``FPS``, forwards
every result and exits. Its peak resident set is the kernel's high-water mark of its
memory, watched until it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore
from edgelake.bench.scratch import scratch_settings
from edgelake.broker import free_port
from edgelake.errors import UserError
from edgelake.fashion_mnist import SIDE, Split, read_split
from edgelake.interpreters import Interpreter, latency_ms, load_interpreter, predict, runtime_name
from edgelake.lake.catalog import Lake
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.vision import FLOAT_TFLITE, INT8_TFLITE, SAMPLES_FILE

MODEL = "vision"
FRAMES = 10  # test frames each model is timed on
FPS = 50.0
HEARTBEAT_S = 1.0
POLL_S = 0.02  # between reads of the agent's memory high-water mark
ROOT = Path(__file__).resolve().parents[1]


class NoVisionModel(UserError, FileNotFoundError):
    """No vision model to benchmark: the directory given lacks its TFLite files, or the registry has no production one."""


def run(settings: Settings, model_dir: Path | None, runs: int, agent_frames: int) -> dict[str, Any]:
    """Time both models of ``model_dir`` (None: the registry's production vision version) ``runs`` times on each frame,
    then run an agent on the int8 one for ``agent_frames`` frames.

    ``load_average`` is the machine's 1-minute load before the run: other work competing for its cores.
    """
    load_average = round(os.getloadavg()[0], 2)
    directory = model_dir or production_dir(settings)
    missing = [name for name in (FLOAT_TFLITE, INT8_TFLITE) if not (directory / name).is_file()]
    if missing:
        raise NoVisionModel(f"{directory} lacks {', '.join(missing)}: give a vision model's version or training directory")
    frames = sample_frames(settings.fashion_mnist_dir, FRAMES)
    float_model, int8_model = (load_interpreter(directory / name) for name in (FLOAT_TFLITE, INT8_TFLITE))
    float_ms, int8_ms = paired_latency_ms(float_model, int8_model, frames, runs)
    float_bytes, int8_bytes = ((directory / name).stat().st_size for name in (FLOAT_TFLITE, INT8_TFLITE))
    rss_mb, agent_seconds = agent_peak_rss_mb(settings, directory / INT8_TFLITE, frames, agent_frames)
    return {
        "float_ms": round(float_ms, 4),
        "int8_ms": round(int8_ms, 4),
        "size_ratio": round(float_bytes / int8_bytes, 2),
        "agent_rss_mb": rss_mb,
        "float_bytes": float_bytes,
        "int8_bytes": int8_bytes,
        "runtime": runtime_name(int8_model),
        "model": str(model_dir) if model_dir else f"{MODEL} v{directory.name}",
        "agent_frames": agent_frames,
        "agent_seconds": agent_seconds,
        "load_average": load_average,
    }


def run_on_any_model(settings: Settings, model_dir: Path | None, runs: int, agent_frames: int, scratch: Path) -> dict[str, Any]:
    """:func:`run` on ``model_dir``, else the production vision model, else a stand-in trained in ``scratch`` for this run."""
    if model_dir is not None or has_production_model(settings):
        return run(settings, model_dir, runs, agent_frames)
    return {**run(settings, stand_in_model(settings, scratch), runs, agent_frames), "model": STAND_IN}


# The vision model ``bench all`` trains where the registry has none: real, small, a few seconds on CPU.
STAND_IN_FRAMES: dict[Split, int] = {"train": 4000, "test": 1000}
STAND_IN_EPOCHS = 2
STAND_IN = (
    f"a stand-in vision model trained for this run ({STAND_IN_FRAMES['train']:,} Fashion-MNIST frames, "
    f"{STAND_IN_EPOCHS} epochs): the registry has no production vision model"
)


def stand_in_model(settings: Settings, scratch: Path) -> Path:
    """A small real vision model (float and int8 TFLite) trained on the first Fashion-MNIST frames; its directory."""
    from edgelake.bench.silver import write_silver
    from edgelake.ingest.sources.fashion_mnist import frames
    from edgelake.training.vision import train_vision

    lake, model_dir = Lake(str(scratch / "vision-lake")), scratch / "vision"
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for split, count in STAND_IN_FRAMES.items():
        write_silver(lake, frames(settings.fashion_mnist_dir, start, count=count, splits=(split,)))
    train_vision(lake, model_dir, device="cpu", epochs=STAND_IN_EPOCHS, batch_size=64)
    return model_dir


def has_production_model(settings: Settings) -> bool:
    try:
        production_dir(settings)
    except FileNotFoundError:
        return False
    return True


def production_dir(settings: Settings) -> Path:
    """The version directory of the production vision model in the settings' registry."""
    models = registry.Registry.from_settings(settings)
    advice = "run `edgelake train vision --promote-to production` or `make demo`, or pass --model-dir"
    if MODEL not in registry.models(models) or (version := registry.current(models, MODEL)) is None:
        raise NoVisionModel(f"no production {MODEL} model in the registry at {models.location}: {advice}")
    return registry.get(models, MODEL, version).path


def sample_frames(fashion_mnist_dir: Path, count: int) -> np.ndarray:
    """The first ``count`` Fashion-MNIST test images, as a batch of raw 28×28×1 uint8 pixels."""
    images = [image for image, _ in islice(read_split(fashion_mnist_dir, "test"), count)]
    return np.frombuffer(b"".join(images), np.uint8).reshape(len(images), SIDE, SIDE, 1)


def paired_latency_ms(first: Interpreter, second: Interpreter, frames: np.ndarray, runs: int) -> tuple[float, float]:
    """Each model's median over ``frames`` of its median milliseconds per frame, the two timed in turn on each frame."""
    timings = [(latency_ms(first, frame[np.newaxis], runs), latency_ms(second, frame[np.newaxis], runs)) for frame in frames]
    first_ms, second_ms = np.median(np.array(timings), axis=0)
    return float(first_ms), float(second_ms)


def agent_peak_rss_mb(settings: Settings, int8_model: Path, samples: np.ndarray, frames: int) -> tuple[float, float]:
    """The peak resident MiB of an agent that classifies ``frames`` frames with ``int8_model`` on a scratch world, and its seconds."""
    with scratch_settings(settings) as scratch, tempfile.TemporaryDirectory(prefix="edgelake-bench-edge-") as work:
        world = scratch.model_copy(update={"data_dir": Path(work) / "data", "log_level": "WARNING", "control_db_url": None, "registry_dir": None})
        publish_edge_model(world, int8_model, samples, Path(work) / "publish")
        _, token = DeviceStore(ControlDb.from_settings(world)).issue_token("bench edge agent", uses=1, expires_in_s=3600)
        with serving(world) as url:
            command = [
                sys.executable, "-m", "edgelake.edge", "run", "--device-name", f"bench-{uuid.uuid4().hex[:6]}", "--api-url", url,
                "--enrollment-token", token, "--state-dir", str(Path(work) / "agent"), "--frames", "fashion-mnist",
                "--fps", str(FPS), "--max-frames", str(frames), "--heartbeat-s", str(HEARTBEAT_S),
            ]
            env = {**os.environ, "EDGELAKE_DATA_DIR": str(world.data_dir), "EDGELAKE_FASHION_MNIST_DIR": str(settings.fashion_mnist_dir)}
            return peak_rss_mb(command, env, Path(work) / "agent.log", timeout_s=60 + 3 * frames / FPS)


def publish_edge_model(world: Settings, int8_model: Path, samples: np.ndarray, work: Path) -> None:
    """Publish ``int8_model`` to ``world``'s registry as the production vision model, with ``samples`` as its smoke test.

    The samples' expected classes are the model's own on this machine's runtime, which the agent runs too.
    """
    work.mkdir(parents=True)
    expected = predict(load_interpreter(int8_model), samples).argmax(axis=1)
    np.savez_compressed(work / SAMPLES_FILE, inputs=samples, expected=expected)
    registry.publish_run(
        Lake.from_settings(world), ControlDb.from_settings(world), world.data_dir / registry.KEYS_DIR, MODEL,
        {INT8_TFLITE: int8_model, SAMPLES_FILE: work / SAMPLES_FILE},
        metrics={}, lineage={}, extra={"edge_model": INT8_TFLITE, "samples": {"file": SAMPLES_FILE, "expected": expected.tolist()}},
        promote_to="production",
    )


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The API over ``settings`` under a real uvicorn server on a free loopback port, in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"bench-edge-api-{port}", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the bench's API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def peak_rss_mb(command: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, float]:
    """Run ``command`` to its end; its peak resident MiB and its seconds.

    The peak is the last ``VmHWM`` read from ``/proc`` before it exits, polled every
    ``POLL_S``: the high-water mark of its own image. ``ru_maxrss`` would not do, as it also
    counts the pages the child shared with this (much larger) process before its exec.
    RuntimeError, with the end of its output in ``log``, when it fails or outlives ``timeout_s``.
    """
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    status = Path(f"/proc/{process.pid}/status")
    peak_kib = 0
    try:
        while process.poll() is None:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the edge agent ran past {timeout_s:.0f} s: {log.read_text(errors='replace')[-2000:]}")
            peak_kib = max(peak_kib, _high_water_kib(status))
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the edge agent exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
    return round(peak_kib / 1024, 1), round(time.monotonic() - started, 2)


def _high_water_kib(status: Path) -> int:
    """The ``VmHWM`` of a process's ``/proc/<pid>/status``, in KiB; 0 once it has exited."""
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)
