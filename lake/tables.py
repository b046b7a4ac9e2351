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
    }  # fmt: skip
    if annotation in simple:
        return simple[annotation]  # type: ignore[index]
    raise TypeError(f"no Arrow type for {annotation!r}")


BRONZE = {event.topic: bronze_table(event.topic) for event in EVENT_TYPES}
SILVER = {event.topic: silver_table(event) for event in EVENT_TYPES}
CATALOG: dict[str, TableSpec] = {spec.name: spec for spec in (*BRONZE.values(), *SILVER.values(), QUARANTINE)}


def row_count(lake_root: str, spec: TableSpec) -> int:
    """Rows in the table's current version; 0 if it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri(lake_root, spec)).count()
    except TableNotFoundError:
        return 0
