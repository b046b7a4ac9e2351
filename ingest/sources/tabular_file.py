"""Events from a user's own CSV or Parquet file through a column mapping.

``mapping`` maps contract fields to column names (``{"amount": "Amount"}``). The columns
no field maps go to the event's free-form maps: numeric ones to ``attributes`` (a reading's
``values``), booleans among them as 0 or 1, and a transaction's text ones to ``categories``.
An empty cell (null, NaN or blank text) is left out: a missing value. Other unmapped columns
(dates, binary data, a reading's text) are left aside. ``event_time`` may be an ISO timestamp,
a datetime, or a number of seconds after ``base_time``. A missing ``event_id`` becomes
``<file stem>-<row>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any, get_args

from edgelake.contracts import Event, FraudLabel, InvalidEvent, IoTReading, Transaction
from edgelake.errors import UserError

# Values used when the file has no column for a required field.
DEFAULTS: dict[type[Event], dict[str, Any]] = {
    Transaction: {"card_id": "unknown", "merchant_id": "unknown", "merchant_category": "unknown", "currency": "EUR"},
    FraudLabel: {"card_id": "unknown", "source": "dataset"},
    IoTReading: {"device_id": "unknown", "sensor": "file"},
}
FREE_FORM: dict[type[Event], str] = {Transaction: "attributes", IoTReading: "values"}
TEXT_FORM: dict[type[Event], str] = {Transaction: "categories"}
SUPPORTED = tuple(DEFAULTS)


class MappingError(UserError, ValueError):
    """The mapping names a field or column that does not exist."""


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``["amount=Amount", "card_id=Card"]`` (or one comma-separated string) as ``{"amount": "Amount", ...}``."""
    mapping = {}
    for item in ",".join(pairs).split(","):
        if not item.strip():
            continue
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise MappingError(f"mapping '{item}' is not FIELD=COLUMN")
        mapping[field.strip()] = column.strip()
    return mapping


def events(
    path: Path, event_type: type[Event], mapping: Mapping[str, str], base_time: datetime, count: int | None = None
) -> Iterator[Event]:
    """The file's rows as ``event_type`` events; an invalid row raises ``InvalidEvent`` naming row and field."""
    if event_type not in SUPPORTED:
        raise MappingError(f"the file source produces {', '.join(t.type_name for t in SUPPORTED)}")
    fields = _event_fields(event_type, mapping)
    free_form, text_form = FREE_FORM.get(event_type), TEXT_FORM.get(event_type)
    mapped = set(mapping.values())
    for row, record in enumerate(_records(path, count)):
        if row == 0:
            _check_columns(mapping, record)
        data = dict(DEFAULTS[event_type])
        data.update(
            {field: _cell(event_type, field, record[column]) for field, column in fields.items() if record[column] is not None}
        )
        data.setdefault("event_id", f"{path.stem}-{row}")
        if "event_time" in data:
            data["event_time"] = _event_time(data["event_time"], base_time)
        if event_type is FraudLabel:
            data.setdefault("transaction_id", f"{path.stem}-{row}")
            data["event_id"] = f"{data['transaction_id']}-label"
        if free_form is not None:
            data[free_form] = {
                column: float(value)
                for column, value in record.items()
                if column not in mapped and isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
            }
        if text_form is not None:
            data[text_form] = {
                column: value for column, value in record.items() if column not in mapped and isinstance(value, str) and value.strip()
            }
        try:
            yield event_type.parse(data)
        except InvalidEvent as error:
            raise InvalidEvent(f"{error.event_type} at row {row}", error.field, error.message) from None


def _event_fields(event_type: type[Event], mapping: Mapping[str, str]) -> dict[str, str]:
    """The mapping entries that apply to ``event_type``, as its field names.

    One mapping serves every event type of a file: ``label`` is ``is_fraud`` for labels
    and ``anomaly`` for readings, and a transaction's ``event_id`` is its label's
    ``transaction_id``. Entries naming no field of any type are refused.
    """
    unknown = set(mapping) - set().union(*(t.model_fields for t in SUPPORTED)) - {"label"}
    if unknown:
        raise MappingError(f"no event has the field(s) {', '.join(sorted(unknown))}")
    aliases = {FraudLabel: {"label": "is_fraud", "event_id": "transaction_id"}, IoTReading: {"label": "anomaly"}}
    renamed = {aliases.get(event_type, {}).get(field, field): column for field, column in mapping.items()}
    if event_type is FraudLabel and "is_fraud" not in renamed:
        raise MappingError("labels need the label column: --map label=COLUMN")
    return {field: column for field, column in renamed.items() if field in event_type.model_fields}


def _records(path: Path, count: int | None) -> Iterator[dict[str, Any]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
    elif suffix in (".csv", ".txt"):
        batches = pacsv.open_csv(path)
    else:
        raise MappingError(f"{path.name}: the file source reads .csv and .parquet files")
    produced = 0
    for batch in batches:
        for record in batch.to_pylist():
            if count is not None and produced >= count:
                return
            produced += 1
            yield {column: _plain(value) for column, value in record.items()}


def _plain(value: Any) -> Any:
    """Naive datetimes are taken as UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _cell(event_type: type[Event], field: str, value: Any) -> Any:
    """A cell as its field's type where the reading is unambiguous: numeric ids as text, 0/1 labels as booleans."""
    annotation = event_type.model_fields[field].annotation
    accepted = (annotation, *get_args(annotation))
    if str in accepted and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    if bool in accepted and value in (0, 1, "0", "1", "true", "false", "True", "False"):
        return str(value).lower() in ("1", "true")
    return value


def _event_time(value: Any, base_time: datetime) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return base_time + timedelta(seconds=float(value))
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value  # left for the contract to refuse with the field's name
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _check_columns(mapping: Mapping[str, str], record: Mapping[str, Any]) -> None:
    missing = sorted(set(mapping.values()) - set(record))
    if missing:
        raise MappingError(f"columns {', '.join(missing)} are not in the file (it has {', '.join(record)})")
