"""Silver tables written straight from events, as ingest lands them, without a broker: for benchmarks and tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import islice

import pyarrow as pa
from deltalake import write_deltalake

from edgelake.contracts import Event
from edgelake.ingest.columnar import columnar_contract
from edgelake.ingest.kafka_source import Fetched, OffsetRange
from edgelake.ingest.pipeline import bronze_rows, classify
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER

BATCH = 50_000


def silver_rows(events: Sequence[Event], partition: int = 0, first_offset: int = 0) -> pa.Table:
    """Events of one type as the silver rows ingest makes of them when read from one topic partition
    at consecutive offsets: the same bronze rows and classification as the pipeline."""
    event_type = type(events[0])
    offsets = range(first_offset, first_offset + len(events))
    fetched = Fetched(
        OffsetRange(event_type.topic, partition, offsets.start, offsets.stop),
        keys=[event.key for event in events],
        values=[event.to_bytes() for event in events],
        positions=list(offsets),
        timestamps_ms=[int(event.event_time.timestamp() * 1000) for event in events],
    )
    schema = SILVER[event_type.topic].schema
    chunk = classify(bronze_rows(fetched, datetime.now(UTC)), fetched.values, event_type, columnar_contract(event_type), schema)
    if chunk.quarantine.num_rows:
        reasons = chunk.quarantine["reason"].to_pylist()[:3]
        raise ValueError(f"{chunk.quarantine.num_rows} {event_type.__name__} events would be quarantined: {reasons}")
    return chunk.silver.select(schema.names).cast(schema)


def write_silver(lake: Lake, events: Iterable[Event]) -> None:
    """Append events of one type to their silver table, in batches, at consecutive offsets of partition 0."""
    offset = 0
    events = iter(events)
    while batch := list(islice(events, BATCH)):
        spec = SILVER[batch[0].topic]
        write_deltalake(
            lake.uri(spec), silver_rows(batch, first_offset=offset),
            mode="append", partition_by=list(spec.partition_by), schema_mode="merge", storage_options=lake.storage_options,
        )
        offset += len(batch)
