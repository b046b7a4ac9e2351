"""The columnar fast lane against ``clean_record``: what it accepts, ``clean_record`` accepts with the same row.

Real events from every source, and a corpus of hostile variants of them, go through both
paths. The fast lane may send any record on to ``clean_record``; it must never accept a
record ``clean_record`` refuses, nor give an accepted record a different row.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pytest
from pydantic import Field

from edgelake.contracts import EdgeInference, Event, FraudLabel, ImageFrame, IoTReading, Transaction
from edgelake.ingest.clean import Rejection, clean_record
from edgelake.ingest.columnar import ColumnarContract, columnar_contract
from edgelake.ingest.kafka_source import Fetched, OffsetRange
from edgelake.ingest.pipeline import Chunk, bronze_rows, classify
from edgelake.ingest.sources import shuttle, synthetic, ulb
from edgelake.lake.tables import SILVER

NOW = datetime.now(UTC)
BASE = datetime(2013, 9, 1, tzinfo=UTC)
DROP = object()

HOSTILE_VALUES: list[Any] = [
    None, DROP, "", " ", " padded", "padded ", "\u00a0nbsp", "nbsp\u2003", "tab\t", "x" * 129, "x" * 128,
    "Zürich", "ÄÖÜ", "a\u0000b", "a\nb", "\u2028", 0, 1, -1, 1.5, -0.0, 2**63, -(2**63) - 1, 2**53 + 1, 1e308, True,
    False, [], [1], {}, {"a": 1}, "USD", "usd", "US", "pos", "POS", "dataset",
]
HOSTILE_TIMES = [
    "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456+02:00", "2024-01-01T00:00:00.1234567Z",
    "2024-01-01 00:00:00Z", "2024-01-01t00:00:00z", "2024-01-01T00:00:00", "2024-02-30T00:00:00Z",
    "2024-01-01T24:00:00Z", "2024-01-01T00:00:60Z", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+23:59",
    "1989-12-31T23:59:59Z", "1990-01-01T00:00:00Z", (NOW + timedelta(days=2)).isoformat(), "2024-01-01",
    "20240101T000000Z", " 2024-01-01T00:00:00Z", "2024-01-01T00:00:00.Z", "+12024-01-01T00:00:00Z",
]
HOSTILE_MAPS: list[Any] = [
    {}, {"a": 1}, {"a": 1.5, "b": -2}, {"a": None}, {"a": "1"}, {"a": True}, {"a": {"b": 1}}, {"a": [1]},
    {"": 1.0}, {"A": 1, "a": 2}, [], "x", 1, None, DROP,
    # maps of text (a transaction's categories)
    {"a": "x"}, {"a": ""}, {"a": " "}, {"a": "\u2003\t"}, {"a": "\x1c"}, {"a": " x"}, {"a": "x\u2003"}, {"a": "x" * 256}, {"a": "x" * 257},
    {"a": "Zürich", "b": "W"}, {"a": "x", "b": 2}, {"a": "x", "b": None}, {"a": ["x"]},
]
RAW_VARIANTS = [
    lambda v: b" " + v, lambda v: v + b"\n", lambda v: v[:-1] + b',"extra": 1}', lambda v: v + v, lambda v: b"",
    lambda v: b"{}", lambda v: v[: len(v) // 2], lambda v: v.replace(b":", b": \n", 1), lambda v: b"\xff" + v,
    lambda v: v.replace(b'"event_id":', b'"event_id":"dup","event_id":', 1), lambda v: b"[" + v + b"]",
    lambda v: v.replace(b'"', b'"\\ud800', 1), lambda v: v[:-1] + b',"attributes":{}}', lambda v: b"null",
    lambda v: v.replace(b'"categories":', b'"categorie\\u0073":', 1), lambda v: v.replace(b'"categories":', b'"categorie\\u0073":null,"categories":', 1),
    lambda v: v.replace(b'"categories":', b'"categories":null,"x":', 1), lambda v: v.replace(b'"categories":{}', b'"categorie\\u0073":null', 1),
]


def real_events(ulb_csv: Path) -> dict[type[Event], list[Event]]:
    return {
        Transaction: [
            *ulb.transactions(ulb_csv, BASE, count=40),
            *synthetic.transactions(synthetic.SyntheticConfig(seed=5), 40),
            *(
                t.model_copy(update={"categories": {"ProductCD": "W", **({"P_emaildomain": "gmail.com"} if i % 2 else {})}})
                for i, t in enumerate(synthetic.transactions(synthetic.SyntheticConfig(seed=6), 10))
            ),
        ],
        FraudLabel: [*ulb.labels(ulb_csv, BASE, count=20), *synthetic.labels(synthetic.SyntheticConfig(seed=5), 40)],
        IoTReading: list(shuttle.readings(BASE, count=60)),
        EdgeInference: [
            EdgeInference(
                event_id=f"inf-{i}", event_time=NOW - timedelta(minutes=i), device_id=f"cam-{i % 3}",
                model_name="vision", model_version="3", input_ref=f"frame-{i}", prediction=str(i % 10),
                confidence=i / 40, latency_ms=0.5 + i, label=None if i % 2 else str(i % 10),
            )
            for i in range(40)
        ],
    }


def hostile(events: list[Event]) -> list[bytes]:
    """Every top-level field of the first events set to every hostile value, and the raw variants of each event."""
    records = []
    for event in events[:3]:
        document = json.loads(event.to_bytes())
        for name, value in itertools.product(list(document), HOSTILE_VALUES + HOSTILE_TIMES + HOSTILE_MAPS):
            changed = dict(document)
            if value is DROP:
                del changed[name]
            else:
                changed[name] = value
            records.append(json.dumps(changed).encode())
        records.append(json.dumps({**document, "extra": 1}).encode())
    for event, variant in itertools.product(events[:5], RAW_VARIANTS):
        records.append(variant(event.to_bytes()))
    return records


def as_python(table: pa.Table) -> list[dict[str, Any]]:
    """Rows with maps as dicts, as ``clean_record`` gives them."""
    maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
    rows = table.to_pylist()
    for row in rows:
        for name in maps:
            row[name] = None if row[name] is None else dict(row[name])
    return rows


@pytest.mark.parametrize("event_type", [Transaction, FraudLabel, IoTReading, EdgeInference], ids=lambda e: e.__name__)
def test_the_fast_lane_accepts_only_what_clean_record_accepts_with_the_same_row(
    event_type: type[Event], ulb_csv: Path
) -> None:
    lane = columnar_contract(event_type)
    assert lane is not None
    events = real_events(ulb_csv)[event_type]
    pristine = [event.to_bytes() for event in events]
    records = pristine + hostile(events)
    schema = SILVER[event_type.topic].schema

    accepted = lane.accept(records, NOW)

    # Every pristine record is accepted, even with hostile ones in the same chunk.
    assert set(range(len(pristine))) <= set(accepted.indices)
    assert sorted(accepted.indices + accepted.rest) == list(range(len(records)))
    rows = as_python(accepted.table)
    for index, row in zip(accepted.indices, rows, strict=True):
        slow = clean_record(event_type, records[index], schema, NOW)
        assert not isinstance(slow, Rejection), (records[index], slow)
        assert slow == row, records[index]
    # The corpus is hostile enough to matter: most of it goes on to clean_record.
    refused = [i for i in accepted.rest if isinstance(clean_record(event_type, records[i], schema, NOW), Rejection)]
    assert len(refused) > len(records) // 3


def test_records_the_lane_passes_on_are_decided_by_clean_record_one_by_one(ulb_csv: Path) -> None:
    events = real_events(ulb_csv)[Transaction]
    padded = json.loads(events[0].to_bytes()) | {"currency": " usd "}
    records = [events[1].to_bytes(), json.dumps(padded).encode(), b"not json"]

    accepted = columnar_contract(Transaction).accept(records, NOW)  # type: ignore[union-attr]

    assert accepted.indices == [0]
    assert accepted.rest == [1, 2]
    assert clean_record(Transaction, records[1], SILVER["transactions"].schema, NOW)["currency"] == "USD"  # type: ignore[index]


def classified(values: list[bytes], lane: ColumnarContract | None) -> Chunk:
    """Transaction records as the pipeline classifies them, read from one partition, with or without the fast lane."""
    fetched = Fetched(OffsetRange("transactions", 0, 0, len(values)), [None] * len(values), values, list(range(len(values))), [0] * len(values))
    return classify(bronze_rows(fetched, NOW), values, Transaction, lane, SILVER["transactions"].schema)


def test_categories_keep_transactions_on_the_fast_lane_and_bad_ones_are_quarantined_as_record_by_record(ulb_csv: Path) -> None:
    events = [event.to_bytes() for event in real_events(ulb_csv)[Transaction]]
    # as producers from before categories send them: some blocks without the field at all, others mixed
    older = [json.dumps({k: v for k, v in json.loads(event).items() if k != "categories"}).encode() for event in events]
    pristine = events + older + [b for pair in zip(events, older, strict=True) for b in pair]
    document = json.loads(events[-1])
    bad = {
        "": "String should have at least 1 character",
        " ": "String should match pattern '\\S'",
        "W" * 257: "String should have at most 256 characters",
        7: "Input should be a valid string",
    }
    records = pristine + [json.dumps({**document, "categories": {"ProductCD": value}}).encode() for value in bad]
    lane = columnar_contract(Transaction)
    assert lane is not None and any(b'"categories":{"' in record for record in events)

    assert sorted(lane.accept(records, NOW).indices) == list(range(len(pristine)))
    fast, slow = classified(records, lane), classified(records, None)
    assert as_python(fast.silver.sort_by("_offset")) == as_python(slow.silver.sort_by("_offset"))
    assert fast.quarantine.equals(slow.quarantine)
    assert fast.quarantine["reason"].to_pylist() == [f"field 'categories.ProductCD': {message}" for message in bad.values()]


def test_a_chunk_with_nothing_acceptable_gives_an_empty_table_of_the_silver_columns() -> None:
    accepted = columnar_contract(FraudLabel).accept([b"", b"[]", b"{}"], NOW)  # type: ignore[union-attr]
    assert accepted.indices == [] and accepted.rest == [0, 1, 2]
    assert accepted.table.num_rows == 0
    assert set(accepted.table.column_names) == set(FraudLabel.model_fields) | {"event_date"}


class Odd(Event):
    type_name = "odd"
    topic = "odd"
    key_field = "event_id"
    partitions = 1

    batch: Annotated[int, Field(multiple_of=5)]


def test_contracts_with_validators_or_unknown_constraints_get_no_fast_lane() -> None:
    assert columnar_contract(ImageFrame) is None  # a model validator
    assert columnar_contract(Odd) is None  # multiple_of


def test_records_whose_maps_lack_keys_others_have_stay_on_the_fast_lane_unless_they_may_give_one_null() -> None:
    """A null elsewhere in a record (an optional field) makes a key it lacks ambiguous only if the record spells that key."""
    lane = columnar_contract(Transaction)
    assert lane is not None
    events = list(synthetic.transactions(synthetic.SyntheticConfig(seed=8), 40))
    records = []
    for i, event in enumerate(events):
        document = json.loads(event.to_bytes()) | {"terminal_id": None}  # a JSON null in every record
        document["attributes"] = {f"V{n}": float(n) for n in range(1, 30) if (i + n) % 3}  # each record lacks other keys
        records.append(json.dumps(document).encode())
    given_null = json.loads(records[0])
    missing = next(f"V{n}" for n in range(1, 30) if f"V{n}" not in given_null["attributes"])
    records.append(json.dumps(given_null | {"attributes": {**given_null["attributes"], missing: None}}).encode())
    spelled = json.loads(records[1]) | {"merchant_id": next(f"V{n}" for n in range(1, 30) if f"V{n}" not in json.loads(records[1])["attributes"])}
    records.append(json.dumps(spelled).encode())

    accepted = lane.accept(records, NOW)

    assert sorted(accepted.indices)[: len(events)] == list(range(len(events)))
    assert len(events) not in accepted.indices  # a key given null: clean_record decides (and refuses it)
    assert isinstance(clean_record(Transaction, records[len(events)], SILVER[Transaction.topic].schema, NOW), Rejection)
    rows = {index: row for index, row in zip(accepted.indices, as_python(accepted.table), strict=True)}
    for index in accepted.indices:
        assert rows[index] == clean_record(Transaction, records[index], SILVER[Transaction.topic].schema, NOW)
