"""Cleaning raw records into silver rows: real contract events, mutated the ways foreign producers get them wrong."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from edgelake.contracts import Event, ImageFrame, IoTReading, Transaction
from edgelake.ingest.clean import Rejection, clean_record, rows_to_arrow
from edgelake.lake.tables import SILVER

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
TX_SCHEMA = SILVER["transactions"].schema
DROP = object()


def transaction(**changes: Any) -> Transaction:
    fields: dict[str, Any] = dict(
        event_id="tx-1",
        event_time=NOW - timedelta(hours=1),
        card_id="card-1",
        merchant_id="m-1",
        merchant_category="5411",
        amount=12.5,
        currency="EUR",
        country="DE",
        channel="pos",
        attributes={"v1": -1.25, "v2": 0.5},
    )
    return Transaction(**{**fields, **changes})


def image_frame() -> ImageFrame:
    pixels = bytes(range(12))  # 2 x 2 pixels x 3 channels
    return ImageFrame(
        event_id="img-1", event_time=NOW, device_id="cam-1", frame_id="f-1",
        width=2, height=2, channels=3, image=pixels, label=7,
    )


def mutated(event: Event, **changes: Any) -> bytes:
    """The event's wire JSON with top-level fields replaced, added or (with DROP) removed."""
    document = json.loads(event.to_bytes())
    for name, value in changes.items():
        if value is DROP:
            del document[name]
        else:
            document[name] = value
    return json.dumps(document).encode()


def clean_tx(value: bytes, schema: pa.Schema = TX_SCHEMA) -> dict[str, Any] | Rejection:
    return clean_record(Transaction, value, schema, NOW)


def rejected(outcome: dict[str, Any] | Rejection, stage: str) -> str:
    """The reason of a rejection at ``stage``; fails the test if the outcome is anything else."""
    assert isinstance(outcome, Rejection), f"expected a {stage} rejection, got a row: {outcome}"
    assert outcome.stage == stage, outcome
    return outcome.reason


def with_lineage(row: dict[str, Any], offset: int = 0) -> dict[str, Any]:
    return {**row, "_topic": "transactions", "_partition": 0, "_offset": offset, "_ingest_time": NOW}


def test_a_valid_event_becomes_its_validated_fields_plus_event_date() -> None:
    event = transaction(event_time=datetime(2024, 5, 31, 23, 30, tzinfo=UTC))
    row = clean_tx(event.to_bytes())

    assert row == {**event.model_dump(), "event_date": date(2024, 5, 31)}
    assert not any(name.startswith("_") for name in row)


def test_event_date_is_the_utc_date_of_an_offset_event_time() -> None:
    value = mutated(transaction(), event_time="2024-06-01T01:30:00+05:00")

    row = clean_tx(value)

    assert isinstance(row, dict)
    assert row["event_date"] == date(2024, 5, 31)
    assert row["event_time"] == datetime(2024, 5, 31, 20, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b'{"event_id": "tx-1",', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2, 3]", "JSON array, not an object"),
        (b'"just a string"', "JSON string, not an object"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"event_id": "\\ud800"}', "unpaired surrogate"),
        (b'{"extra": {"\\udfff": 1}}', "unpaired surrogate"),
        (b'{"n": ' + b"1" * 5000 + b"}", "not decodable JSON"),
    ],
    ids=["truncated", "not-utf8", "array", "string", "deep", "surrogate", "nested-surrogate-key", "huge-integer"],
)
def test_values_that_are_not_a_json_object_are_rejected_at_decode(value: bytes, words: str) -> None:
    assert words in rejected(clean_tx(value), "decode")


def test_a_paired_surrogate_escape_is_an_ordinary_character() -> None:
    value = mutated(transaction(), merchant_id="caf\U0001f600")
    assert b"\\ud83d\\ude00" in value

    row = clean_tx(value)

    assert isinstance(row, dict) and row["merchant_id"] == "caf\U0001f600"


def test_a_missing_field_is_rejected_naming_it() -> None:
    reason = rejected(clean_tx(mutated(transaction(), currency=DROP)), "contract")
    assert reason == "field 'currency': Field required"


def test_a_field_whose_type_changed_is_an_incompatible_change() -> None:
    reason = rejected(clean_tx(mutated(transaction(), amount="12.50")), "contract")
    assert reason.startswith("field 'amount': ")


def test_a_nan_token_in_a_contract_field_is_refused_by_the_contract() -> None:
    value = mutated(transaction(), amount=float("nan"))
    assert b'"amount": NaN' in value

    reason = rejected(clean_tx(value), "contract")

    assert reason == "field 'amount': Input should be a finite number"


def test_a_nan_in_a_map_value_names_the_key() -> None:
    reason = rejected(clean_tx(mutated(transaction(), attributes={"v1": float("nan")})), "contract")
    assert reason.startswith("field 'attributes.v1': ")


@pytest.mark.parametrize(("token", "literal"), [(float("nan"), b"NaN"), (float("inf"), b"Infinity")])
def test_non_finite_extra_fields_are_rejected_at_sanity(token: float, literal: bytes) -> None:
    value = mutated(transaction(), risk=token)
    assert literal in value

    assert "field 'risk'" in rejected(clean_tx(value), "sanity")


def test_a_number_too_large_for_a_double_is_infinite_and_rejected() -> None:
    value = mutated(transaction()).replace(b'"amount": 12.5', b'"amount": 1e400')
    assert b"1e400" in value

    assert rejected(clean_tx(value), "contract").startswith("field 'amount': ")


def test_an_event_time_two_days_ahead_is_rejected() -> None:
    event = transaction(event_time=NOW + timedelta(days=2))

    reason = rejected(clean_tx(event.to_bytes()), "sanity")

    assert "field 'event_time'" in reason and "2024-06-03T12:00:00" in reason


def test_an_event_time_within_a_day_of_now_is_accepted() -> None:
    assert isinstance(clean_tx(transaction(event_time=NOW + timedelta(hours=23)).to_bytes()), dict)


def test_an_event_time_in_1970_is_rejected() -> None:
    reason = rejected(clean_tx(transaction(event_time=datetime(1970, 1, 1, tzinfo=UTC)).to_bytes()), "sanity")
    assert "field 'event_time'" in reason and "1970-01-01" in reason


def test_an_event_time_whose_utc_date_cannot_exist_is_rejected_not_raised() -> None:
    value = mutated(transaction(), event_time="0001-01-01T00:00:00+05:00")
    assert "field 'event_time'" in rejected(clean_tx(value), "sanity")


def test_strings_are_stripped_and_currency_and_country_upper_cased() -> None:
    value = mutated(transaction(), currency="  eur ", country="de\n", card_id="\tcard-1  ")

    row = clean_tx(value)

    assert isinstance(row, dict)
    assert (row["currency"], row["country"], row["card_id"]) == ("EUR", "DE", "card-1")


def test_an_empty_string_is_null_only_where_the_contract_allows_null() -> None:
    row = clean_tx(mutated(transaction(), terminal_id="  ", country=""))
    assert isinstance(row, dict)
    assert (row["terminal_id"], row["country"]) == (None, None)

    assert rejected(clean_tx(mutated(transaction(), channel="")), "contract").startswith("field 'channel': ")


def test_a_new_scalar_extra_field_becomes_a_new_column() -> None:
    promos = [3, 2.5, None]
    values = [mutated(transaction(event_id=f"tx-{i}"), promo=promo, note=" hi ") for i, promo in enumerate(promos)]
    rows = [clean_tx(value) for value in values]
    assert all(isinstance(row, dict) for row in rows)
    assert [row["promo"] for row in rows] == [3, 2.5, None]  # type: ignore[index]
    assert rows[0]["note"] == "hi"  # type: ignore[index]

    table = rows_to_arrow([with_lineage(row, i) for i, row in enumerate(rows)], TX_SCHEMA)  # type: ignore[arg-type]

    assert table.schema.names == TX_SCHEMA.names + ["promo", "note"]
    assert table.schema.field("promo").type == pa.float64()
    assert table.column("promo").to_pylist() == [3.0, 2.5, None]
    assert table.schema.field("note").type == pa.string()


def test_an_extra_field_conflicting_with_an_evolved_column_is_rejected() -> None:
    evolved = TX_SCHEMA.append(pa.field("promo", pa.int64()))

    reason = rejected(clean_tx(mutated(transaction(), promo="ten"), evolved), "schema")

    assert reason == "field 'promo' is int64 in silver but this event has a string"


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        (pa.int64(), 3.0, 3),
        (pa.float64(), 3, 3.0),
        (pa.bool_(), True, True),
        (pa.string(), "x", "x"),
        (pa.int64(), None, None),
    ],
)
def test_an_extra_field_that_fits_an_evolved_column_takes_its_type(
    column_type: pa.DataType, value: Any, expected: Any
) -> None:
    row = clean_tx(mutated(transaction(), promo=value), TX_SCHEMA.append(pa.field("promo", column_type)))

    assert isinstance(row, dict)
    assert row["promo"] == expected and type(row["promo"]) is type(expected)


@pytest.mark.parametrize(
    ("column_type", "value", "found"),
    [
        (pa.int64(), 2.5, "a number (2.5)"),
        (pa.int64(), 1e300, "a number (1e+300)"),
        (pa.int64(), True, "a boolean"),
        (pa.bool_(), 1, "an integer"),
    ],
)
def test_an_extra_field_that_does_not_fit_an_evolved_column_is_rejected(
    column_type: pa.DataType, value: Any, found: str
) -> None:
    outcome = clean_tx(mutated(transaction(), promo=value), TX_SCHEMA.append(pa.field("promo", column_type)))
    assert rejected(outcome, "schema") == f"field 'promo' is {column_type} in silver but this event has {found}"


@pytest.mark.parametrize(("value", "kind"), [({"a": 1}, "object"), ([1, 2], "array")])
def test_a_nested_extra_field_is_rejected(value: Any, kind: str) -> None:
    reason = rejected(clean_tx(mutated(transaction(), device=value)), "schema")
    assert reason == f"field 'device' is an {kind}: only scalar values can become new columns"


@pytest.mark.parametrize(
    ("name", "words"), [("_offset", "lineage"), ("event_date", "lineage"), ("Amount", "differs only in case")]
)
def test_an_extra_field_that_would_clash_with_a_column_name_is_rejected(name: str, words: str) -> None:
    reason = rejected(clean_tx(mutated(transaction(), **{name: 5})), "schema")
    assert reason.startswith(f"field '{name}'") and words in reason


def test_two_extra_fields_differing_only_in_case_are_rejected() -> None:
    assert "differs only in case" in rejected(clean_tx(mutated(transaction(), promo=1, Promo=2)), "schema")


def test_an_integer_beyond_64_bits_is_rejected() -> None:
    big = 2**64
    frame = mutated(image_frame(), label=big)
    assert rejected(clean_record(ImageFrame, frame, SILVER["camera-frames"].schema, NOW), "sanity") == (
        f"field 'label': {big} does not fit a 64-bit integer"
    )
    assert "field 'clicks'" in rejected(clean_tx(mutated(transaction(), clicks=-(2**63) - 1)), "sanity")


def test_image_frames_round_trip_with_their_bytes() -> None:
    frame = image_frame()
    schema = SILVER["camera-frames"].schema

    row = clean_record(ImageFrame, frame.to_bytes(), schema, NOW)

    assert isinstance(row, dict)
    assert row["image"] == frame.image and isinstance(row["image"], bytes)
    lineage = {"_topic": "camera-frames", "_partition": 1, "_offset": 9, "_ingest_time": NOW}
    table = rows_to_arrow([{**row, **lineage}], schema)
    assert table.schema == schema
    assert table.column("image").to_pylist() == [frame.image]
    assert ImageFrame.parse({name: table.column(name)[0].as_py() for name in ImageFrame.model_fields}) == frame


def test_image_frame_contract_rules_apply() -> None:
    value = mutated(image_frame(), image_uri="s3://frames/f-1.raw")
    reason = rejected(clean_record(ImageFrame, value, SILVER["camera-frames"].schema, NOW), "contract")
    assert "exactly one of 'image' and 'image_uri'" in reason


def test_rows_to_arrow_types_contract_and_lineage_columns_from_silver() -> None:
    events = [transaction(event_id="a"), transaction(event_id="b", attributes={}, country=None)]
    rows = [with_lineage(clean_tx(event.to_bytes()), i) for i, event in enumerate(events)]  # type: ignore[arg-type]

    table = rows_to_arrow(rows, TX_SCHEMA)

    assert table.schema == TX_SCHEMA
    assert pa.types.is_map(table.schema.field("attributes").type)
    assert table.column("attributes").to_pylist() == [[("v1", -1.25), ("v2", 0.5)], []]
    assert table.column("country").to_pylist() == ["DE", None]
    assert table.column("event_time").to_pylist() == [e.event_time for e in events]
    assert table.column("_partition").type == pa.int32()


def test_rows_to_arrow_builds_iot_value_maps() -> None:
    values = {"a1": 1.0, "a2": -3.5}
    reading = IoTReading(event_id="r-1", event_time=NOW, device_id="d-1", sensor="shuttle", values=values)
    schema = SILVER["iot-readings"].schema
    row = clean_record(IoTReading, reading.to_bytes(), schema, NOW)
    assert isinstance(row, dict)

    lineage = {"_topic": "iot-readings", "_partition": 0, "_offset": 0, "_ingest_time": NOW}
    table = rows_to_arrow([{**row, **lineage}], schema)

    assert table.schema == schema
    assert table.column("values").to_pylist() == [[("a1", 1.0), ("a2", -3.5)]]
    assert table.column("anomaly").to_pylist() == [None]


def test_rows_to_arrow_keeps_only_the_silver_columns_the_rows_have_and_fills_gaps() -> None:
    rows = [{"event_id": "a", "terminal_id": "t-1", "extra": 1}, {"event_id": "b", "country": "FR"}]

    table = rows_to_arrow(rows, TX_SCHEMA)

    assert table.schema.names == ["event_id", "country", "terminal_id", "extra"]
    assert table.column("terminal_id").to_pylist() == ["t-1", None]
    assert table.column("country").to_pylist() == [None, "FR"]
    assert table.column("extra").to_pylist() == [1, None]
    assert table.schema.field("extra").type == pa.int64()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, None], pa.bool_()),
        ([1, 2], pa.int64()),
        ([1, 2**60, 0.5], pa.float64()),
        (["x"], pa.string()),
        ([None, None], pa.string()),
    ],
)
def test_rows_to_arrow_infers_new_column_types(values: list[Any], expected: pa.DataType) -> None:
    table = rows_to_arrow([{"event_id": str(i), "new": v} for i, v in enumerate(values)], TX_SCHEMA)

    assert table.schema.field("new").type == expected
    assert table.column("new").to_pylist() == values


def test_an_integer_beyond_2_to_the_53_still_fits_an_evolved_double_column() -> None:
    table = rows_to_arrow([{"event_id": "a", "score": 2**60 + 1}], TX_SCHEMA.append(pa.field("score", pa.float64())))
    assert table.column("score").to_pylist() == [float(2**60)]


@pytest.mark.parametrize(("first", "second"), [(1, "one"), (True, 1), ("x", 2.5)])
def test_rows_to_arrow_refuses_a_new_column_with_conflicting_types(first: Any, second: Any) -> None:
    with pytest.raises(ValueError, match="new column 'promo' has values of incompatible types"):
        rows_to_arrow([{"event_id": "a", "promo": first}, {"event_id": "b", "promo": second}], TX_SCHEMA)


def test_rows_to_arrow_refuses_new_columns_differing_only_in_case() -> None:
    with pytest.raises(ValueError, match="differ only in case"):
        rows_to_arrow([{"event_id": "a", "promo": 1}, {"event_id": "b", "PROMO": 2}], TX_SCHEMA)


def test_rows_to_arrow_refuses_a_null_in_a_non_nullable_column() -> None:
    with pytest.raises(ValueError, match="column 'amount' is not nullable"):
        rows_to_arrow([{"event_id": "a", "amount": 1.0}, {"event_id": "b"}], TX_SCHEMA)


def test_rows_to_arrow_of_no_rows_is_an_empty_silver_table() -> None:
    table = rows_to_arrow([], TX_SCHEMA)
    assert table.num_rows == 0 and table.schema == TX_SCHEMA


def test_the_future_bound_comes_from_now_not_the_clock() -> None:
    value = mutated(transaction(), promo=1)
    assert clean_tx(value) == clean_tx(value)
    assert isinstance(clean_record(Transaction, value, TX_SCHEMA, NOW - timedelta(days=3)), Rejection)
