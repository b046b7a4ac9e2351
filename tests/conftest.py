"""Shared fixtures: real brokers on loopback, settings isolated per test, the cached ULB data set."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgelake.broker import EmbeddedBroker, free_port
from edgelake.settings import Settings
from support import DATASET_CACHE, isolated_settings


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
