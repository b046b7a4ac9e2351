"""From a raw Kafka record value to a clean silver row, or to a rejection that says why not.

Records come from any producer, not only ours, so each one goes through the same stages:
``decode`` (UTF-8 JSON object), light cleaning, ``contract`` (the event's pydantic contract),
``sanity`` (plausible, representable values) and ``schema`` (fields outside the contract
becoming nullable silver columns). Everything here is a pure function of its arguments,
so it can run inside any Beam worker.

Python's ``json`` accepts the non-standard tokens ``NaN`` and ``Infinity`` and reads
``1e400`` as infinity. In a contract field the contract refuses them (stage ``contract``);
in an extra field they are rejected at stage ``sanity``, like integers that do not fit
64 bits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard, get_args

import pyarrow as pa
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from edgelake.contracts import EARLIEST_EVENT_TIME, MAX_CLOCK_SKEW, Event, InvalidEvent
from edgelake.lake.tables import LINEAGE

Stage = Literal["decode", "contract", "sanity", "schema"]
Scalar = bool | int | float | str | None

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UPPER_CASED = frozenset({"currency", "country"})
RESERVED = frozenset(field.name for field in LINEAGE)
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NEW_COLUMN_TYPES: dict[type, pa.DataType] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
_JSON_TYPES: dict[type, str] = {str: "string", dict: "object", list: "array"}


@dataclass(frozen=True)
class Rejection:
    """Why a record cannot become a silver row: the stage that refused it and a sentence naming the field."""

    stage: Stage
    reason: str


def clean_record(
    event_type: type[Event], value: bytes, silver_schema: pa.Schema, now: datetime
) -> dict[str, Any] | Rejection:
    """The silver row of one raw record value, or why it cannot be one.

    The row holds every contract field as the validated event's Python value, the extra
    fields' scalar values and ``event_date`` (the UTC date of ``event_time``); the caller
    adds the other lineage columns. ``silver_schema`` is the silver table's current schema,
    evolved columns included; ``now`` (timezone-aware) bounds how far ahead ``event_time`` may be.
    """
    as_sent = _valid_as_sent(event_type, value, now)
    if as_sent is not None:
        return as_sent
    document = _decode(value)
    if isinstance(document, Rejection):
        return document
    document = _clean(document, event_type)
    contract_part = {name: v for name, v in document.items() if name in event_type.model_fields}
    extras = {name: v for name, v in document.items() if name not in event_type.model_fields}
    try:
        event = event_type.parse(json.dumps(contract_part))
    except InvalidEvent as error:
        return Rejection("contract", f"field '{error.field}': {error.message}")
    fields = event.model_dump()
    rejection = _check_sanity(fields, extras, now)
    if rejection is not None:
        return rejection
    columns = _extra_columns(extras, event_type, silver_schema)
    if isinstance(columns, Rejection):
        return columns
    return {**fields, **columns, "event_date": event.event_time.astimezone(UTC).date()}


def rows_to_arrow(rows: list[dict[str, Any]], silver_schema: pa.Schema) -> pa.Table:
    """The rows as an Arrow table typed by the silver schema, with new columns typed by their values.

    Columns are the silver schema's columns that some row has, in schema order, then the
    columns new to silver in order of first appearance; rows without a column get nulls.
    No rows give an empty table of the whole silver schema. Raises ``ValueError`` when
    two rows give one new column incompatible types (callers keep such rows in separate
    batches), when new columns differ only in case, or when a non-nullable column lacks
    a value.
    """
    if not rows:
        return silver_schema.empty_table()
    present = dict.fromkeys(name for row in rows for name in row)
    known = set(silver_schema.names)
    if known.issuperset(present):
        fast = _from_pylist(rows, pa.schema([field for field in silver_schema if field.name in present]))
        if fast is not None:
            return fast
    fields = [field for field in silver_schema if field.name in present]
    new = [
        pa.field(name, _new_column_type(name, [row.get(name) for row in rows])) for name in present if name not in known
    ]
    _check_distinct_ignoring_case([field.name for field in fields + new])
    return pa.Table.from_arrays([_array(field, rows) for field in fields + new], schema=pa.schema(fields + new))


def _valid_as_sent(event_type: type[Event], value: bytes, now: datetime) -> dict[str, Any] | None:
    """The row of a record that needs no cleaning and passes every check as sent; None otherwise.

    Most records come from well-behaved producers: pydantic's Rust JSON validation is
    about four times faster than the stages below, which decide every other record.
    """
    try:
        event = event_type.model_validate_json(value)
    except ValidationError:
        return None
    fields = event.model_dump()
    for field_value in fields.values():
        if isinstance(field_value, str) and (not field_value or field_value != field_value.strip()):
            return None
        if type(field_value) is int and not INT64_MIN <= field_value <= INT64_MAX:
            return None
    if not EARLIEST_EVENT_TIME <= event.event_time <= now + MAX_CLOCK_SKEW:
        return None
    return {**fields, "event_date": event.event_time.astimezone(UTC).date()}


def split_type_conflicts(
    rows: list[dict[str, Any]], silver_schema: pa.Schema
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], Rejection]]]:
    """The rows ``rows_to_arrow`` can take together, and the others with why not.

    A column new to silver takes its type (numbers as one type) and its spelling from the
    first row that gives it a value; a later row disagreeing on either is refused.
    """
    known = set(silver_schema.names)
    columns: dict[str, tuple[str, type]] = {}  # lower-cased name -> (name, kind)
    kept: list[dict[str, Any]] = []
    refused: list[tuple[dict[str, Any], Rejection]] = []
    for row in rows:
        new = {name: _kind(value) for name, value in row.items() if name not in known and value is not None}
        clash = next(
            (
                (name, columns[name.lower()])
                for name, kind in new.items()
                if name.lower() in columns and columns[name.lower()] != (name, kind)
            ),
            None,
        )
        if clash is None:
            for name, kind in new.items():
                columns.setdefault(name.lower(), (name, kind))
            kept.append(row)
            continue
        name, (first_name, first_kind) = clash
        reason = (
            f"new field '{name}' ({_json_type(row[name])}) clashes with the column '{first_name}' "
            f"({first_kind.__name__}) that an earlier event in the batch created"
        )
        refused.append((row, Rejection("schema", reason)))
    return kept, refused


def _kind(value: Scalar) -> type:
    return float if type(value) is int else type(value)


def _decode(value: bytes) -> dict[str, Any] | Rejection:
    """The record's top-level JSON object, or why the value is not one."""
    try:
        document = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as error:
        return Rejection("decode", f"value is not UTF-8: {error.reason} at byte {error.start}")
    except json.JSONDecodeError as error:
        return Rejection("decode", f"value is not JSON: {error.msg} at line {error.lineno} column {error.colno}")
    except RecursionError:
        return Rejection("decode", "value is JSON nested too deeply to decode")
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        return Rejection("decode", f"value is not decodable JSON: {error}")
    if not isinstance(document, dict):
        return Rejection("decode", f"value is a JSON {_json_type(document)}, not an object")
    # A "\ud800" escape decodes to a string that no UTF-8 writer (pyarrow included) can encode.
    if any(_LONE_SURROGATE.search(text) for text in _strings(document)):
        return Rejection("decode", "value holds a \\u escape of an unpaired surrogate, not a Unicode character")
    return document


def _strings(document: Any) -> Iterator[str]:
    """Every string in a decoded JSON document, keys included, at any depth."""
    pending = [document]
    while pending:  # a loop, not recursion: documents can be as deep as json.loads allows
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _clean(document: dict[str, Any], event_type: type[Event]) -> dict[str, Any]:
    """Top-level strings stripped, currency and country upper-cased, "" as null in contract fields that allow null."""
    nullable = {name for name, info in event_type.model_fields.items() if _allows_none(info)}
    cleaned = {}
    for name, value in document.items():
        if isinstance(value, str):
            value = value.strip()
            if name in UPPER_CASED:
                value = value.upper()
            if value == "" and name in nullable:
                value = None
        cleaned[name] = value
    return cleaned


def _allows_none(info: FieldInfo) -> bool:
    """Whether a contract field accepts null."""
    return type(None) in get_args(info.annotation)


def _check_sanity(fields: dict[str, Any], extras: dict[str, Any], now: datetime) -> Rejection | None:
    """Why a contract-valid event is implausible or cannot be stored, if it is."""
    event_time: datetime = fields["event_time"]
    if event_time < EARLIEST_EVENT_TIME:
        earliest = EARLIEST_EVENT_TIME.isoformat()
        return Rejection("sanity", f"field 'event_time': {event_time.isoformat()} is before {earliest}")
    if event_time > now + MAX_CLOCK_SKEW:
        ahead = f"is more than a day after the ingest time {now.isoformat()}"
        return Rejection("sanity", f"field 'event_time': {event_time.isoformat()} {ahead}")
    for name, value in {**fields, **extras}.items():
        if isinstance(value, float) and not math.isfinite(value):
            return Rejection("sanity", f"field '{name}': {value} is not a finite number")
        if _is_integer(value) and not INT64_MIN <= value <= INT64_MAX:
            return Rejection("sanity", f"field '{name}': {value} does not fit a 64-bit integer")
    return None


def _extra_columns(
    extras: dict[str, Any], event_type: type[Event], silver_schema: pa.Schema
) -> dict[str, Scalar] | Rejection:
    """The extra fields as values of silver columns, existing or new, or why one cannot be a column."""
    # Delta Lake refuses column names that differ only in case.
    taken = {name.lower(): name for name in (*silver_schema.names, *event_type.model_fields)}
    columns: dict[str, Scalar] = {}
    for name, value in extras.items():
        if name in RESERVED:
            return Rejection("schema", f"field '{name}' is a lineage column the ingester sets, not the event")
        if taken.get(name.lower(), name) != name:
            return Rejection("schema", f"field '{name}' differs only in case from column '{taken[name.lower()]}'")
        if isinstance(value, (dict, list)):
            kind = _json_type(value)
            return Rejection("schema", f"field '{name}' is an {kind}: only scalar values can become new columns")
        if name in silver_schema.names:
            value = _fit(name, value, silver_schema.field(name).type)
            if isinstance(value, Rejection):
                return value
        taken[name.lower()] = name
        columns[name] = value
    return columns


def _fit(name: str, value: Scalar, column_type: pa.DataType) -> Scalar | Rejection:
    """A JSON scalar as the Python value of an existing silver column, or why it does not fit the column's type."""
    if value is None:
        return None
    if isinstance(value, bool):
        fits = pa.types.is_boolean(column_type)
    elif isinstance(value, int):
        fits = pa.types.is_int64(column_type) or pa.types.is_float64(column_type)
    elif isinstance(value, float):
        whole = value.is_integer() and INT64_MIN <= value <= INT64_MAX
        fits = pa.types.is_float64(column_type) or (pa.types.is_int64(column_type) and whole)
    else:
        fits = pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
    if not fits:
        kind = _json_type(value)
        found = f"{_article(kind)} {kind}"
        return Rejection("schema", f"field '{name}' is {column_type} in silver but this event has {found}")
    if pa.types.is_int64(column_type):
        return int(value)
    if pa.types.is_float64(column_type):
        return float(value)
    return value


def _is_integer(value: Any) -> TypeGuard[int]:
    """Whether a decoded JSON value is an integer (JSON booleans are Python ints too)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _article(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _json_type(value: Any) -> str:
    """The JSON type name of a decoded JSON value, telling integers from other numbers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return f"number ({value!r})"
    return _JSON_TYPES[type(value)]


def _new_column_type(name: str, values: list[Any]) -> pa.DataType:
    """The Arrow type of a column new to silver, from its values in a batch."""
    kinds = {type(value) for value in values if value is not None}
    if kinds == {int, float}:
        return pa.float64()
    if len(kinds) > 1 or not kinds <= _NEW_COLUMN_TYPES.keys():
        found = ", ".join(sorted(kind.__name__ for kind in kinds))
        raise ValueError(f"new column '{name}' has values of incompatible types in one batch: {found}")
    return _NEW_COLUMN_TYPES[kinds.pop()] if kinds else pa.string()


def _check_distinct_ignoring_case(names: list[str]) -> None:
    """Raise ValueError if two column names differ only in case."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise ValueError(f"columns '{other}' and '{name}' differ only in case")


def _from_pylist(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table | None:
    """Arrow's own conversion, several times faster than column by column; None where it cannot
    convert a value (an integer above 2**53 for a double column) or a non-nullable column has a null."""
    try:
        table = pa.Table.from_pylist(rows, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if any(table.column(f.name).null_count for f in schema if not f.nullable):
        return None
    return table


def _array(field: pa.Field, rows: list[dict[str, Any]]) -> pa.Array:
    """One column of the rows as an Arrow array of the field's type."""
    values = [row.get(field.name) for row in rows]
    if not field.nullable and any(value is None for value in values):
        raise ValueError(f"column '{field.name}' is not nullable but some rows have no value for it")
    if pa.types.is_float64(field.type):
        # pyarrow refuses integers above 2**53 for a double column rather than rounding them.
        values = [float(value) if _is_integer(value) else value for value in values]
    return pa.array(values, type=field.type)
