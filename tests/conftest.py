"""Shared fixtures: real brokers on loopback, settings isolated per test, the cached ULB data set."""

from __future__ import annotations

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
