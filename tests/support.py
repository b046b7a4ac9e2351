"""Helpers for tests that need a broker, settings or lake tables of their own."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from pydantic import SecretStr

from edgelake.bench.silver import silver_rows
from edgelake.broker import EmbeddedBroker, free_ports
from edgelake.contracts import Event
from edgelake.kafka import ensure_topics
from edgelake.settings import Settings
from edgelake.lake.tables import QUARANTINE, SILVER, table_uri

REPO = Path(__file__).resolve().parents[1]
# Data sets are fetched once and kept between runs (gitignored).
DATASET_CACHE = Path(os.environ.get("EDGELAKE_TEST_CACHE", REPO / ".edgelake" / "cache"))
JARS_DIR = Settings().jars_path.resolve()  # where `make setup` fetched the JVM jars


def embedded_kafka(directory: Path, brokers: int = 1, start: bool = True) -> EmbeddedBroker:
    """Apache Kafka with ``brokers`` nodes on free loopback ports, its state under ``directory``; started unless ``start`` is false."""
    broker = EmbeddedBroker(free_ports(2 * brokers), directory, JARS_DIR, brokers)
    if start:
        broker.start()
    return broker


def isolated_settings(bootstrap_servers: str, data_dir: Path) -> Settings:
    """Settings on fresh topics of their own, so tests never see each other's events."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        data_dir=data_dir,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
        lake_root=str(data_dir / "lake"),
    )
    ensure_topics(settings, bootstrap_servers)
    return settings


def command_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with ``settings``' broker, topics, lake, data dir and control-plane database (and registry
    folder, if set), for an ``edgelake`` command run as a process."""
    shared = {"EDGELAKE_CONTROL_DB_URL": settings.control_db_url.get_secret_value()} if settings.control_db_url else {}
    if settings.registry_dir is not None:
        shared["EDGELAKE_REGISTRY_DIR"] = str(settings.registry_dir)
    return {
        **os.environ, "EDGELAKE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "EDGELAKE_TOPIC_PREFIX": settings.topic_prefix,
        "EDGELAKE_LAKE_ROOT": settings.lake_root, "EDGELAKE_DATA_DIR": str(settings.data_dir), **shared, **extra,
    }


def quarantine_rows(first: int, count: int, **extra: object) -> pa.Table:
    """Quarantine rows at offsets ``first``.., with ``extra`` columns new to the table."""
    now = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [
        {
            "key": None, "value": b"bad %d" % i, "topic": "t", "partition": 0, "offset": i, "stage": "decode",
            "reason": "value is not JSON", "ingest_time": now, "ingest_date": date(2026, 1, 2), **extra,
        }
        for i in range(first, first + count)
    ]
    schema = QUARANTINE.schema
    for name, value in extra.items():
        schema = schema.append(pa.field(name, pa.array([value]).type))
    return pa.Table.from_pylist(rows, schema)


def append_silver(lake_root: str, events: Sequence[Event], partition: int = 0, first_offset: int = 0) -> int:
    """Commit ``bench.silver.silver_rows(...)`` to the events' silver table, as ingest would (without its offsets); the new version."""
    spec = SILVER[type(events[0]).topic]
    uri = table_uri(lake_root, spec)
    DeltaTable.create(uri, spec.schema, mode="ignore", partition_by=list(spec.partition_by), name=spec.name)
    write_deltalake(uri, silver_rows(events, partition, first_offset), mode="append", schema_mode="merge")
    return DeltaTable(uri).version()



def copy_world(settings: Settings, directory: Path, **changes: object) -> Settings:
    """``settings`` over a copy, under ``directory``, of their lake's model registry and of their (SQLite) control-plane
    database with its keys and stage books: what a test changes there leaves the original alone. Topics ``changes``
    name are created."""
    from edgelake.control_db import copy_embedded, embedded_control_db
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry

    source = embedded_control_db(settings)
    assert source is not None, "copy_world copies the embedded control-plane database only"
    shutil.copytree(registry.registry_root(Lake.from_settings(settings)), directory / "lake" / "models")
    copy_embedded(source, directory / "control.sqlite")
    url = SecretStr(f"sqlite:///{directory / 'control.sqlite'}")
    copied = settings.model_copy(update={"lake_root": str(directory / "lake"), "control_db_url": url, **changes})
    if copied.topic_prefix != settings.topic_prefix:
        # a producer waits for a topic that does not exist (its metadata), and a server stopping waits for its producer
        ensure_topics(copied, copied.kafka_bootstrap_servers)
    return copied


def copy_stage_books(source: Settings, target: Settings) -> None:
    """Give ``target``'s control-plane database the published versions, stage book and rollout policy of every model in
    ``source``'s registry."""
    import sqlalchemy as sa

    from edgelake.control_db import model_versions, rollout_policies
    from edgelake.training import registry
    from edgelake.training.registry.stages import stage_book

    origin, copy = registry.Registry.from_settings(source), registry.Registry.from_settings(target)
    for name in registry.models(origin):
        book = registry.read_book(origin, name)
        with stage_book(copy, name) as copied:
            copied.stages.update(book.stages)
            copied.history.extend(book.history)
    for table in (model_versions, rollout_policies):
        with origin.db.transaction() as connection:
            rows = [dict(row._mapping) for row in connection.execute(sa.select(table))]
        if rows:
            with copy.db.transaction() as connection:
                connection.execute(sa.insert(table), rows)
