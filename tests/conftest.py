"""Shared fixtures: real brokers on loopback, settings isolated per test, the cached ULB data set, a small
silver camera-frames table of real Fashion-MNIST frames and one vision model trained on it per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from edgelake.broker import EmbeddedBroker, free_port
from edgelake.contracts import ImageFrame
from edgelake.settings import Settings
from support import DATASET_CACHE, append_silver, isolated_settings

if TYPE_CHECKING:
    from training.vision import VisionResult


def _broker(impl: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(impl, free_port(), tmp_path_factory.mktemp(f"broker-{impl}"))  # type: ignore[arg-type]
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def noida_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    yield from _broker("noida", tmp_path_factory)


@pytest.fixture(scope="session", params=["noida", pytest.param("tansu", marks=pytest.mark.tansu)])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Each Kafka-compatible broker in turn; tests using it run once per broker."""
    if request.param == "noida":
        yield request.getfixturevalue("noida_broker")
    else:
        yield from _broker(request.param, tmp_path_factory)


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return isolated_settings(broker.bootstrap_servers, tmp_path)


@pytest.fixture(scope="session")
def ulb_csv() -> Path:
    from ingest.sources import ulb

    return ulb.fetch_csv(DATASET_CACHE)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for every test that needs one (each start costs seconds)."""
    from lake.spark import spark_session

    session = spark_session("local[2]", "edgelake-tests", shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's, see infra/system-packages.sh) on a free loopback port, without persistence; its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run infra/system-packages.sh (Debian package redis-server)"
    port, workdir = free_port(), tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    with open(workdir / "redis.log", "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"redis-server exited: {(workdir / 'redis.log').read_text()}"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            assert time.monotonic() < deadline, f"redis-server did not answer on port {port}"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any test imports TensorFlow

FRAMES_START = datetime(2024, 1, 1, tzinfo=UTC)


class FramesLake(NamedTuple):
    """A lake whose silver camera-frames table holds ``train`` frames at version 1, also ``test``
    frames at 2, and also ``unusable`` frames (which the vision model skips) at 3."""

    root: str
    train: int
    test: int
    unusable: int


def unusable_frames() -> list[ImageFrame]:
    """Frames the vision model cannot use: a PNG, one by reference, one without a label."""
    common = {"event_time": FRAMES_START, "device_id": "camera-x", "width": 28, "height": 28}
    return [
        ImageFrame(event_id="png", frame_id="png", encoding="png", image=b"\x89PNG", label=1, split="train", **common),
        ImageFrame(event_id="uri", frame_id="uri", image_uri="s3://frames/1.raw", label=1, split="train", **common),
        ImageFrame(event_id="nolabel", frame_id="nolabel", image=bytes(784), split="test", **common),
    ]


@pytest.fixture(scope="session")
def frames_lake(tmp_path_factory: pytest.TempPathFactory) -> FramesLake:
    """The first 4,000 train and 1,000 test frames of Fashion-MNIST, then the unusable ones."""
    from ingest.sources.fashion_mnist import frames

    lake = FramesLake(str(tmp_path_factory.mktemp("vision") / "lake"), train=4000, test=1000, unusable=3)
    directory = Settings().fashion_mnist_dir
    for split, count in (("train", lake.train), ("test", lake.test)):
        append_silver(lake.root, list(frames(directory, FRAMES_START, count=count, splits=(split,))))
    append_silver(lake.root, unusable_frames())
    return lake


@pytest.fixture(scope="session")
def vision_run(frames_lake: FramesLake, tmp_path_factory: pytest.TempPathFactory) -> VisionResult:
    """The vision model trained for 2 epochs on ``frames_lake`` (a few seconds on two CPU cores)."""
    from training.vision import train_vision

    return train_vision(frames_lake.root, tmp_path_factory.mktemp("vision-out"), device="cpu", epochs=2, batch_size=64, seed=0)


@pytest.fixture(scope="session")
def vision_dir(vision_run: VisionResult) -> Path:
    """Where the session's vision run wrote its files."""
    return vision_run.files["metrics.json"].parent
