"""Event contracts: the one definition of every event that crosses a Kafka topic.

Events travel as JSON, keyed by ``card_id`` or ``device_id``. Each class carries its
topic, key field and schema version; ``export_json_schemas`` publishes them for
producers written in other languages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgelake.errors import UserError

Id = Annotated[str, Field(min_length=1, max_length=128)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# One of a transaction's categories: text that is not only blanks (a missing category is an absent key).
CategoryValue = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]
Channel = Literal["pos", "ecom", "atm", "moto", "unknown"]
# The event times consumers accept (ingest's cleaning, the scorer's card histories): from 1990 to a producer's
# plausible clock skew ahead of now. The contract itself admits any time; a consumer checks against its own "now".
EARLIEST_EVENT_TIME = datetime(1990, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(days=1)


class InvalidEvent(UserError, ValueError):
    """An event that does not satisfy its contract; ``field`` names the first offending field."""

    def __init__(self, event_type: str, field: str, message: str) -> None:
        self.event_type = event_type
        self.field = field
        self.message = message
        super().__init__(f"invalid {event_type}: field '{field}': {message}")

    @classmethod
    def from_validation_error(cls, event_type: str, error: ValidationError) -> InvalidEvent:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "<event>"
        extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return cls(event_type, field, first["msg"] + extra)


class Event(BaseModel):
    """Base of every event: strict types, no unknown fields, no NaN or infinity."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )

    type_name: ClassVar[str]
    topic: ClassVar[str]
    key_field: ClassVar[str]
    partitions: ClassVar[int]

    event_id: Id
    event_time: AwareDatetime

    @property
    def key(self) -> bytes:
        return str(getattr(self, self.key_field)).encode()

    def to_bytes(self) -> bytes:
        """The event's JSON wire format."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def parse(cls, data: Any) -> Event:
        """Validate a mapping, an instance or JSON bytes; raise ``InvalidEvent`` naming the field."""
        try:
            if isinstance(data, cls):
                return data
            if isinstance(data, (bytes, str)):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as error:
            raise InvalidEvent.from_validation_error(cls.type_name, error) from None


class Transaction(Event):
    """A card payment authorisation."""

    type_name = "transaction"
    topic = "transactions"
    key_field = "card_id"
    partitions = 4

    schema_version: Literal[1] = 1
    card_id: Id
    merchant_id: Id
    merchant_category: Id
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    channel: Channel = "unknown"
    terminal_id: Id | None = None
    attributes: dict[str, FiniteFloat] = Field(default_factory=dict)
    categories: dict[str, CategoryValue] = Field(default_factory=dict)  # text attributes: product code, e-mail domain, device type


class FraudLabel(Event):
    """A label that arrives after its transaction: a chargeback, an analyst verdict or a data set's class."""

    type_name = "fraud_label"
    topic = "fraud-labels"
    key_field = "card_id"
    partitions = 2

    schema_version: Literal[1] = 1
    transaction_id: Id
    card_id: Id
    is_fraud: bool
    source: Literal["chargeback", "analyst", "dataset"] = "chargeback"


class IoTReading(Event):
    """One sample of a device's sensor, possibly several values at once."""

    type_name = "iot_reading"
    topic = "iot-readings"
    key_field = "device_id"
    partitions = 4

    schema_version: Literal[1] = 1
    device_id: Id
    sensor: Id
    values: Annotated[dict[str, FiniteFloat], Field(min_length=1)]
    anomaly: bool | None = None


class ImageFrame(Event):
    """A camera frame, inline (``image``) or by reference (``image_uri``)."""

    type_name = "image_frame"
    topic = "camera-frames"
    key_field = "device_id"
    partitions = 2

    schema_version: Literal[1] = 1
    device_id: Id
    frame_id: Id
    encoding: Literal["raw_u8", "png", "jpeg"] = "raw_u8"
    width: Annotated[int, Field(gt=0, le=8192)]
    height: Annotated[int, Field(gt=0, le=8192)]
    channels: Literal[1, 3, 4] = 1
    image: bytes | None = None
    image_uri: str | None = None
    label: Annotated[int, Field(ge=0)] | None = None
    split: Literal["train", "test"] | None = None

    @model_validator(mode="after")
    def _one_image(self) -> ImageFrame:
        if (self.image is None) == (self.image_uri is None):
            raise ValueError("exactly one of 'image' and 'image_uri' must be set")
        expected = self.width * self.height * self.channels
        if self.encoding == "raw_u8" and self.image is not None and len(self.image) != expected:
            raise ValueError(f"raw_u8 image has {len(self.image)} bytes, expected {expected}")
        return self


class EdgeInference(Event):
    """A prediction made on an edge device; ``event_id`` is the result's unique id."""

    type_name = "edge_inference"
    topic = "edge-inferences"
    key_field = "device_id"
    partitions = 2

    schema_version: Literal[1] = 1
    device_id: Id
    model_name: Id
    model_version: Id
    input_ref: Id
    prediction: Id
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    label: Id | None = None


class FraudScore(Event):
    """The API's verdict on a transaction; ``event_id`` is the score's unique id.

    ``features`` holds the card features the model saw, by ``lake.features`` name; a null
    one (``seconds_since_previous`` of a card's first transaction) is left out. A ``shadow``
    score is the canary version's, made beside production's on the same inputs and never
    answered to the caller: the rollout gate's evidence.
    """

    type_name = "fraud_score"
    topic = "fraud-scores"
    key_field = "card_id"
    partitions = 2

    schema_version: Literal[1] = 1
    transaction_id: Id
    card_id: Id
    score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    decision: Literal["approve", "review", "decline"]
    model_name: Id
    model_version: Annotated[int, Field(ge=1)]
    features: dict[str, FiniteFloat] = Field(default_factory=dict)
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    shadow: bool = False


class AuditRecord(Event):
    """An entry of the API's audit log, exported to the lake: who did what, when, from where and how it ended.

    ``event_id`` is ``audit-<its id in the log>`` and ``event_time`` when it happened; the control
    plane's audit log (``api/audit.py``) is the source, this topic its copy for SQL over the lake.
    """

    type_name = "audit_record"
    topic = "audit-log"
    key_field = "actor"
    partitions = 1

    schema_version: Literal[1] = 1
    actor: Id
    role: Id | None = None
    action: Annotated[str, Field(min_length=1, max_length=256)]
    target: Annotated[str, Field(max_length=1024)]
    outcome: Literal["done", "failed", "refused"]
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    client: Annotated[str, Field(max_length=256)]
    detail: Annotated[str, Field(max_length=1000)] = ""


EVENT_TYPES: tuple[type[Event], ...] = (Transaction, FraudLabel, IoTReading, ImageFrame, EdgeInference, FraudScore, AuditRecord)
EVENT_BY_TOPIC: dict[str, type[Event]] = {event.topic: event for event in EVENT_TYPES}


def json_schema(event: type[Event]) -> dict[str, Any]:
    """The JSON Schema of one event's wire format."""
    schema = event.model_json_schema(mode="serialization")
    version = event.model_fields["schema_version"].default
    schema["$id"] = f"urn:edgelake:event:{event.type_name}:v{version}"
    schema["x-topic"] = event.topic
    schema["x-key"] = event.key_field
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one ``<type>.v<version>.json`` per event into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event in EVENT_TYPES:
        version = event.model_fields["schema_version"].default
        path = directory / f"{event.type_name}.v{version}.json"
        path.write_text(json.dumps(json_schema(event), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
