"""The lake's tables: one definition of each table's name, layer, schema and partitioning.

Silver schemas are derived from the event contracts, so a field added to a contract
is a column of its silver table without a second definition.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import pyarrow as pa
from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from edgelake.contracts import EVENT_TYPES, Event
from edgelake.lake.features.definitions import CARD_FEATURES

Layer = Literal["bronze", "silver", "gold", "quarantine"]
TIMESTAMP = pa.timestamp("us", tz="UTC")

# Columns every silver row carries about where it came from.
LINEAGE = [
    pa.field("_topic", pa.string(), nullable=False),
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_ingest_time", TIMESTAMP, nullable=False),
    pa.field("event_date", pa.date32(), nullable=False),
]


@dataclass(frozen=True)
class TableSpec:
    """A lake table: where it lives under the lake root and what it holds."""

    name: str
    layer: Layer
    schema: pa.Schema
    partition_by: tuple[str, ...]
    description: str

    @property
    def path(self) -> str:
        """The table's location relative to the lake root."""
        return f"{self.layer}/{self.name}"


# Raw Kafka records, exactly as consumed: the same columns for every topic.
BRONZE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary(), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp", TIMESTAMP),
        pa.field("ingest_time", TIMESTAMP, nullable=False),
        pa.field("ingest_date", pa.date32(), nullable=False),
    ]
)


def bronze_table(topic: str) -> TableSpec:
    """Raw Kafka records of one topic, exactly as consumed."""
    name = f"bronze_{topic.replace('-', '_')}"
    return TableSpec(name, "bronze", BRONZE_SCHEMA, ("ingest_date",), f"Raw records of the {topic} topic.")


def silver_table(event: type[Event]) -> TableSpec:
    """Validated, cleaned and deduplicated events of one type, partitioned by event date."""
    fields = [pa.field(name, arrow_type(info), nullable=not info.is_required()) for name, info in event.model_fields.items()]
    name = f"silver_{event.topic.replace('-', '_')}"
    return TableSpec(name, "silver", pa.schema(fields + LINEAGE), ("event_date",), f"Clean {event.__name__} events.")


QUARANTINE = TableSpec(
    "quarantine",
    "quarantine",
    pa.schema(
        [
            pa.field("key", pa.binary()),
            pa.field("value", pa.binary(), nullable=False),
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("ingest_time", TIMESTAMP, nullable=False),
            pa.field("ingest_date", pa.date32(), nullable=False),
        ]
    ),
    ("ingest_date",),
    "Records that could not become silver rows, with the stage and the reason.",
)

QUARANTINE_REPLAYS = TableSpec(
    "quarantine_replays",
    "quarantine",
    pa.schema(
        [
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("outcome", pa.string(), nullable=False),  # replayed, duplicate (already in silver) or refused
            pa.field("silver_version", pa.int64()),  # the silver version holding the event (replayed, duplicate)
            pa.field("stage", pa.string()),  # why it is still refused
            pa.field("reason", pa.string()),
            pa.field("replay_time", TIMESTAMP, nullable=False),
            pa.field("replay_date", pa.date32(), nullable=False),
        ]
    ),
    ("replay_date",),
    "Each replay of a quarantined record (by topic, partition and offset): into silver, at which version, or still refused and why.",
)

GOLD_CARD_FEATURES = TableSpec(
    "gold_card_features",
    "gold",
    pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("card_id", pa.string(), nullable=False),
            pa.field("event_time", TIMESTAMP, nullable=False),
            pa.field("amount", pa.float64(), nullable=False),
            pa.field("merchant_category", pa.string(), nullable=False),
            *(pa.field(f.name, pa.from_numpy_dtype(f.dtype), nullable=f.nullable) for f in CARD_FEATURES),
            pa.field("event_date", pa.date32(), nullable=False),
        ]
    ),
    ("event_date",),
    "Per-transaction card behaviour features, point in time (definitions in lake/features/definitions.py).",
)
GOLD_DEVICE_HEALTH = TableSpec(
    "gold_device_health",
    "gold",
    pa.schema(
        [
            pa.field("device_id", pa.string(), nullable=False),
            pa.field("sensor", pa.string(), nullable=False),
            pa.field("metric", pa.string(), nullable=False),  # a key of the readings' values
            pa.field("minute", TIMESTAMP, nullable=False),
            pa.field("readings", pa.int64(), nullable=False),
            pa.field("mean", pa.float64(), nullable=False),
            pa.field("min", pa.float64(), nullable=False),
            pa.field("max", pa.float64(), nullable=False),
            pa.field("anomaly_rate", pa.float64()),  # among readings with an anomaly flag; null if none has one
            pa.field("event_date", pa.date32(), nullable=False),
        ]
    ),
    ("event_date",),
    "Per device, sensor, metric and minute: readings, mean, min, max and anomaly rate.",
)
GOLD_FRAUD_RATES = TableSpec(
    "gold_fraud_rates",
    "gold",
    pa.schema(
        [
            pa.field("event_date", pa.date32(), nullable=False),
            pa.field("merchant_category", pa.string(), nullable=False),
            pa.field("transactions", pa.int64(), nullable=False),
            pa.field("labelled", pa.int64(), nullable=False),
            pa.field("frauds", pa.int64(), nullable=False),
            pa.field("fraud_rate", pa.float64()),  # frauds / labelled; null if none is labelled
            pa.field("amount", pa.float64(), nullable=False),
            pa.field("fraud_amount", pa.float64(), nullable=False),
        ]
    ),
    (),
    "Daily transactions and fraud rates by merchant category, by each transaction's latest label.",
)
GOLD = {spec.name: spec for spec in (GOLD_CARD_FEATURES, GOLD_DEVICE_HEALTH, GOLD_FRAUD_RATES)}


def current_schema(spec: TableSpec, written: pa.Schema) -> pa.Schema:
    """The schema a written table's next rows follow: its columns as written (evolved ones included), then the
    defined columns it lacks (fields its contract gained since), nullable because its earlier rows have none."""
    return pa.schema([*written, *(field.with_nullable(True) for field in spec.schema if field.name not in written.names)])


def table_uri(lake_root: str, spec: TableSpec) -> str:
    """The table's URI under ``lake_root`` (a path or any URI deltalake accepts)."""
    return f"{lake_root.rstrip('/')}/{spec.path}"


def arrow_type(info: FieldInfo) -> pa.DataType:
    """The Arrow type of a contract field."""
    return _arrow(info.annotation)


def _arrow(annotation: object) -> pa.DataType:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _arrow(args[0])
    if origin is typing.Annotated:
        return _arrow(args[0])
    if origin is Literal:
        return _arrow(type(args[0]))
    if origin is dict:
        return pa.map_(pa.string(), _arrow(args[1]))
    simple = {
        bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string(), bytes: pa.binary(),
        datetime: TIMESTAMP, AwareDatetime: TIMESTAMP,
    }
    if annotation in simple:
        return simple[annotation]
    raise TypeError(f"no Arrow type for {annotation!r}")


BRONZE = {event.topic: bronze_table(event.topic) for event in EVENT_TYPES}
SILVER = {event.topic: silver_table(event) for event in EVENT_TYPES}
CATALOG: dict[str, TableSpec] = {
    spec.name: spec for spec in (*BRONZE.values(), *SILVER.values(), QUARANTINE, QUARANTINE_REPLAYS, *GOLD.values())
}
