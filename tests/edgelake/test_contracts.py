import json
from datetime import datetime, UTC

import pytest

from edgelake.contracts import (
    EVENT_BY_TOPIC,
    AuditRecord,
    EVENT_TYPES,
    EdgeInference,
    Event,
    FraudLabel,
    FraudScore,
    ImageFrame,
    InvalidEvent,
    IoTReading,
    Transaction,
    export_json_schemas,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EXAMPLES: dict[type[Event], dict] = {
    Transaction: dict(
        event_id="tx-1", event_time=NOW, card_id="c1", merchant_id="m1", merchant_category="grocery",
        amount=12.5, currency="EUR", country="DE", channel="pos", terminal_id="t1", attributes={"V1": -1.5},
        categories={"ProductCD": "W", "P_emaildomain": "gmail.com"},
    ),
    FraudLabel: dict(event_id="tx-1-label", event_time=NOW, transaction_id="tx-1", card_id="c1", is_fraud=True),
    IoTReading: dict(event_id="r-1", event_time=NOW, device_id="d1", sensor="temp", values={"c": 21.5}, anomaly=False),
    ImageFrame: dict(
        event_id="f-1", event_time=NOW, device_id="cam", frame_id="f-1", width=2, height=3, image=bytes(range(6)), label=4
    ),
    EdgeInference: dict(
        event_id="e-1", event_time=NOW, device_id="d1", model_name="vision", model_version="3", input_ref="f-1",
        prediction="bag", confidence=0.93, latency_ms=1.2,
    ),
    FraudScore: dict(
        event_id="s-1", event_time=NOW, transaction_id="tx-1", card_id="c1", score=0.42, decision="approve",
        model_name="fraud", model_version=2, features={"tx_count_1h": 3.0}, latency_ms=0.8,
    ),
    AuditRecord: dict(
        event_id="audit-7", event_time=NOW, actor="key_0a1b2c3d4e5f", role="admin", action="PUT /v1/models/{name}/rollout",
        target="name=vision", outcome="done", status=200, client="10.0.0.7",
    ),
}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.type_name)
def test_every_event_round_trips_through_json(event_type: type[Event]) -> None:
    event = event_type.parse(EXAMPLES[event_type])
    wire = event.to_bytes()
    assert event_type.parse(wire) == event
    assert event.key == EXAMPLES[event_type][event_type.key_field].encode()
    assert json.loads(wire)["schema_version"] == 1


def test_every_topic_maps_to_one_event_type() -> None:
    assert {t.topic for t in EVENT_TYPES} == set(EVENT_BY_TOPIC)
    assert len(EVENT_BY_TOPIC) == len(EVENT_TYPES)


BAD_TRANSACTIONS = [
    ("amount", {"amount": float("nan")}, "finite"),
    ("amount", {"amount": float("inf")}, "finite"),
    ("amount", {"amount": "12.5"}, "number"),
    ("amount", {"amount": -1.0}, "greater than or equal"),
    ("attributes.V2", {"attributes": {"V2": float("-inf")}}, "finite"),
    ("categories.ProductCD", {"categories": {"ProductCD": ""}}, "at least 1"),
    ("categories.ProductCD", {"categories": {"ProductCD": " \t"}}, "pattern"),
    ("categories.ProductCD", {"categories": {"ProductCD": "W" * 257}}, "at most 256"),
    ("categories.ProductCD", {"categories": {"ProductCD": 3}}, "string"),
    ("categories.ProductCD", {"categories": {"ProductCD": None}}, "string"),
    ("card_id", {"card_id": 42}, "string"),
    ("card_id", {"card_id": ""}, "at least 1"),
    ("currency", {"currency": "euro"}, "pattern"),
    ("event_time", {"event_time": datetime(2026, 1, 1)}, "timezone"),
    ("channel", {"channel": "carrier-pigeon"}, "Input should be"),
    ("surprise", {"surprise": 1}, "Extra inputs"),
]


@pytest.mark.parametrize(("field", "change", "message"), BAD_TRANSACTIONS, ids=[c[0] + ":" + c[2] for c in BAD_TRANSACTIONS])
def test_invalid_transaction_names_the_field(field: str, change: dict, message: str) -> None:
    with pytest.raises(InvalidEvent) as error:
        Transaction.parse({**EXAMPLES[Transaction], **change})
    assert error.value.field == field
    assert message in error.value.message
    assert f"'{field}'" in str(error.value)


@pytest.mark.parametrize("missing", ["event_id", "event_time", "card_id", "amount", "currency"])
def test_missing_required_field_is_named(missing: str) -> None:
    data = {k: v for k, v in EXAMPLES[Transaction].items() if k != missing}
    with pytest.raises(InvalidEvent, match=f"'{missing}': Field required"):
        Transaction.parse(data)


def test_wire_json_with_wrong_types_is_refused() -> None:
    wire = Transaction.parse(EXAMPLES[Transaction]).to_bytes().replace(b'"amount":12.5', b'"amount":"lots"')
    with pytest.raises(InvalidEvent, match="'amount'"):
        Transaction.parse(wire)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": bytes(5)}, "expected 6"),
        ({"image": None}, "exactly one"),
        ({"image_uri": "s3://frames/f-1.png"}, "exactly one"),
        ({"width": 0}, "greater than 0"),
    ],
)
def test_invalid_image_frames_are_refused(change: dict, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        ImageFrame.parse({**EXAMPLES[ImageFrame], **change})


def test_confidence_must_be_a_probability() -> None:
    with pytest.raises(InvalidEvent, match="'confidence'"):
        EdgeInference.parse({**EXAMPLES[EdgeInference], "confidence": 1.5})


def test_json_schemas_are_exported_per_event_and_version(tmp_path) -> None:
    paths = export_json_schemas(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{t.type_name}.v1.json" for t in EVENT_TYPES)
    schema = json.loads((tmp_path / "transaction.v1.json").read_text())
    assert schema["$id"] == "urn:edgelake:event:transaction:v1"
    assert schema["x-topic"] == "transactions" and schema["x-key"] == "card_id"
    assert {"event_id", "card_id", "amount", "currency", "event_time"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
