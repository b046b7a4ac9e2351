"""Shared fixtures: real brokers on loopback, settings isolated per test, the cached ULB data set, a local
S3-compatible server for lakes on object storage, a small silver camera-frames table of real Fashion-MNIST
frames and one vision model trained on it per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from edgelake.broker import EmbeddedBroker, free_port
from edgelake.contracts import ImageFrame
from edgelake.settings import Settings
from support import DATASET_CACHE, JARS_DIR, append_silver, embedded_kafka, isolated_settings

if TYPE_CHECKING:
    from edgelake.training.vision import VisionResult


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Apache Kafka broker (KRaft) on loopback for the whole session; tests keep apart by topic prefix."""
    broker = embedded_kafka(tmp_path_factory.mktemp("kafka"))
    yield broker
    broker.stop()


@pytest.fixture
def settings(kafka: EmbeddedBroker, tmp_path: Path) -> Settings:
    return isolated_settings(kafka.bootstrap_servers, tmp_path)


@pytest.fixture(scope="session")
def ulb_csv() -> Path:
    from edgelake.ingest.sources import ulb

    return ulb.fetch_csv(DATASET_CACHE)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for every test that needs one (each start costs seconds)."""
    from edgelake.lake.spark import spark_session

    session = spark_session("local[2]", "edgelake-tests", shuffle_partitions=2, jars_dir=JARS_DIR)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's, see infra/system-packages.sh) on a free loopback port, without persistence; its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run infra/system-packages.sh (Debian package redis-server)"
    port, workdir = free_port(), tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    with server_process("redis-server", command, workdir, lambda: _answers(port, b"PING\r\n", b"+PONG")):
        yield f"redis://127.0.0.1:{port}/0"


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server (Debian's) on loopback: the control plane every API replica shares."""

    port: int

    def new_database(self) -> str:
        """The SQLAlchemy URL of a fresh, empty database of its own."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://edgelake@127.0.0.1:{self.port}/{name}"

    def answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=edgelake dbname={database}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free loopback port (trusting loopback, no fsync), removed afterwards."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert initdb, "PostgreSQL is missing: run infra/system-packages.sh (Debian package postgresql)"
    binaries = initdb[-1].parent
    workdir = Path(tempfile.mkdtemp(prefix="edgelake-postgres-"))  # not under pytest's root-only folders: its owner must reach it
    owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the package's postgres user runs it
        shutil.chown(workdir, "postgres", "postgres")
        owner = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    cluster = workdir / "cluster"
    subprocess.run(
        [*owner, str(binaries / "initdb"), "-D", str(cluster), "-U", "edgelake", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True,
    )
    server = Postgres(free_port())
    command = [
        *owner, str(binaries / "postgres"), "-D", str(cluster), "-p", str(server.port), "-k", str(workdir),
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300",
    ]
    try:
        with server_process("postgres", command, workdir, server.answers, timeout_s=60):
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def server_process(name: str, command: list[str], workdir: Path, ready: Callable[[], bool], timeout_s: float = 20) -> Iterator[None]:
    """``command`` running in ``workdir`` (logging there) until the block ends, from when ``ready()``."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert process.poll() is None, f"{name} exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"{name} was not ready in {timeout_s:g} s: {log_path.read_text()[-2000:]}"
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(port: int, request: bytes, prefix: bytes) -> bool:
    """Whether a server on loopback ``port`` answers ``request`` with ``prefix``."""
    with socket.socket() as sock:
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(request)
            return sock.recv(64).startswith(prefix)
        except OSError:
            return False


@dataclass(frozen=True)
class ObjectStore:
    """A local S3-compatible server; the standard AWS_* variables that deltalake reads point at it."""

    endpoint: str

    def client(self):
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
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "edgelake-test", "AWS_SECRET_ACCESS_KEY": "edgelake-test",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    try:
        with server_process("moto_server", command, tmp_path_factory.mktemp("s3"), lambda: _answers(port, b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1")):
            yield ObjectStore(endpoint)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any test imports TensorFlow
os.environ["EDGELAKE_JARS_DIR"] = str(JARS_DIR)  # commands run with a data dir of their own still find Kafka's jars

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
    from edgelake.ingest.sources.fashion_mnist import frames

    lake = FramesLake(str(tmp_path_factory.mktemp("vision") / "lake"), train=4000, test=1000, unusable=3)
    directory = Settings().fashion_mnist_dir
    for split, count in (("train", lake.train), ("test", lake.test)):
        append_silver(lake.root, list(frames(directory, FRAMES_START, count=count, splits=(split,))))
    append_silver(lake.root, unusable_frames())
    return lake


@pytest.fixture(scope="session")
def vision_run(frames_lake: FramesLake, tmp_path_factory: pytest.TempPathFactory) -> VisionResult:
    """The vision model trained for 2 epochs on ``frames_lake`` (a few seconds on two CPU cores)."""
    from edgelake.lake.catalog import Lake
    from edgelake.training.vision import train_vision

    return train_vision(Lake(frames_lake.root), tmp_path_factory.mktemp("vision-out"), device="cpu", epochs=2, batch_size=64, seed=0)


@pytest.fixture(scope="session")
def vision_dir(vision_run: VisionResult) -> Path:
    """Where the session's vision run wrote its files."""
    return vision_run.files["metrics.json"].parent
