"""Shared fixtures: real brokers on loopback, settings isolated per test, the cached ULB data set, a local
S3-compatible server for lakes on object storage, a small silver camera-frames table of real Fashion-MNIST
frames and one vision model trained on it per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ObjectStore:
    """A local S3-compatible server; the standard AWS_* variables that deltalake reads point at it."""

    endpoint: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_lake(self) -> str:
        """The URI of a lake root in a fresh bucket."""
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return f"s3://{bucket}/lake"

    def copy_lake(self, root: str, layers: tuple[str, ...] = ("bronze", "silver", "gold", "quarantine")) -> str:
        """A fresh object-store lake holding every file of ``layers`` of the local lake at ``root``, byte for byte."""
        lake = self.new_lake()
        bucket, prefix = lake.removeprefix("s3://").split("/", 1)
        client = self.client()
        for path in Path(root).rglob("*"):
            if path.is_file() and path.relative_to(root).parts[0] in layers:
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root)}")
        return lake


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """moto's S3 server (a dev dependency, from PyPI) on a free loopback port, for this process and its children."""
    port, workdir = free_port(), tmp_path_factory.mktemp("s3")
    with open(workdir / "moto.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "edgelake-test", "AWS_SECRET_ACCESS_KEY": "edgelake-test",
    }  # fmt: skip
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"moto_server exited: {(workdir / 'moto.log').read_text()}"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"moto_server did not listen on port {port}"
            time.sleep(0.1)
        yield ObjectStore(endpoint)
    finally:
        process.terminate()
        process.wait(10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
