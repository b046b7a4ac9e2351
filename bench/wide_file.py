"""A seeded wide file of labelled card transactions, shaped like a user's own (the IEEE-CIS fraud data's layout).

Hundreds of numeric columns (heavy-tailed counts ``C*``, day gaps ``D*`` mostly missing, ``V*`` of many shapes
with missing cells), text columns (``ProductCD``, e-mail domains, device types, ``M*`` flags, ``id_*``), card ids,
and time as seconds after a start (``TransactionDT``). Two signals are planted, each independent of the other
given the label: frauds shift ``PLANTED_NUMERIC`` by one standard deviation (ROC-AUC about 0.76 on its own), and
``PLANTED_DOMAIN`` is the ``P_emaildomain`` of 45 % of frauds and 4 % of legitimate transactions (about 0.68 on
its own, a tenth of the column being missing). Amount, time, card and every other column carry no signal: the model's built-in inputs alone score
about 0.5. ``ALWAYS_EMPTY`` has no value and ``ALWAYS_SAME`` one value in every row.

Written in row groups of ``ROW_GROUP`` rows, so 600,000 rows × 400 columns never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROW_GROUP = 50_000
FRAUD_RATE = 0.035
PLANTED_NUMERIC = "V258"
PLANTED_DOMAIN = "protonmail.com"
ALWAYS_EMPTY = "D15"
ALWAYS_SAME = "C14"
# The mapping ``edgelake produce transactions|labels --source file --map`` takes for it.
WIDE_FILE_MAP = "event_id=TransactionID,event_time=TransactionDT,amount=TransactionAmt,card_id=card1,label=isFraud"

_DOMAINS = ("gmail.com", "yahoo.com", "hotmail.com", "anonymous.com", "aol.com", "outlook.com", "comcast.net", "icloud.com",
            *(f"mail{i}.example" for i in range(52)))
_TEXT_COLUMNS: dict[str, tuple[str, ...]] = {  # name: its values (missing cells apart)
    "ProductCD": ("W", "C", "R", "H", "S"),
    "P_emaildomain": _DOMAINS,
    "card4": ("visa", "mastercard", "american express", "discover"),
    "card6": ("debit", "credit"),
    "DeviceType": ("desktop", "mobile"),
    "DeviceInfo": tuple(f"device-{i}" for i in range(2_000)),
    "R_emaildomain": _DOMAINS,
    "M4": ("M0", "M1", "M2"),
}


@dataclass(frozen=True)
class PlantedSignals:
    """What a generated file holds: its columns, and where its signal lies."""

    numeric_columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    planted_numeric: str = PLANTED_NUMERIC
    planted_column: str = "P_emaildomain"
    planted_value: str = PLANTED_DOMAIN
    always_empty: str = ALWAYS_EMPTY
    always_same: str = ALWAYS_SAME


def write_wide_file(path: Path, rows: int, numeric_columns: int, categorical_columns: int, seed: int) -> PlantedSignals:
    """Write ``rows`` transactions with ``numeric_columns`` numeric and ``categorical_columns`` text columns (besides the
    id, time, amount, card and label) to a Parquet file at ``path``; what it planted."""
    rng = np.random.default_rng(seed)
    numeric = _numeric_names(numeric_columns)
    text = _text_names(categorical_columns)
    shapes = {name: _shape(name, rng) for name in numeric}
    vocabularies = {name: _TEXT_COLUMNS.get(name) or tuple(f"{name}-{v}" for v in range(int(rng.integers(2, 12)))) for name in text}
    missing = {name: 0.0 if name in (PLANTED_NUMERIC, ALWAYS_SAME) else float(rng.choice([0.0, 0.05, 0.3, 0.6, 0.9])) for name in numeric + text}
    missing.update({ALWAYS_EMPTY: 1.0, "P_emaildomain": 0.1})
    cards = max(50, rows // 8)
    clock = 86_400.0
    with pq.ParquetWriter(path, _schema(numeric, text)) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            fraud = rng.random(n) < FRAUD_RATE
            seconds = clock + np.cumsum(rng.exponential(30.0, n))
            clock = float(seconds[-1])
            columns: dict[str, pa.Array] = {
                "TransactionID": pa.array(np.arange(start + 1, start + n + 1)),
                "TransactionDT": pa.array(np.floor(seconds).astype(np.int64)),
                "TransactionAmt": pa.array(np.round(rng.lognormal(3.5, 1.2, n), 2)),
                "card1": pa.array(rng.integers(1_000, 1_000 + cards, n)),
                "isFraud": pa.array(fraud.astype(np.int64)),
            }
            for name in numeric:
                values = shapes[name](n) + (fraud if name == PLANTED_NUMERIC else 0.0)
                columns[name] = pa.array(values, mask=rng.random(n) < missing[name])
            for name in text:
                values = _text_values(name, vocabularies[name], fraud, rng)
                values[rng.random(n) < missing[name]] = None
                columns[name] = pa.array(values.tolist(), pa.string())
            writer.write_table(pa.table(columns))
    return PlantedSignals(tuple(numeric), tuple(text))


def _numeric_names(count: int) -> list[str]:
    """``C1..C14``, ``D1..D15``, then ``V1..``: ``count`` names, always holding the planted, empty and constant columns."""
    names = [*(f"C{i}" for i in range(1, 15)), *(f"D{i}" for i in range(1, 16))]
    names += [f"V{i}" for i in range(1, max(0, count - len(names)) + 1)]
    kept = [name for name in names if name not in (PLANTED_NUMERIC, ALWAYS_EMPTY, ALWAYS_SAME)][: count - 3]
    return [ALWAYS_SAME, ALWAYS_EMPTY, PLANTED_NUMERIC, *kept]


def _text_names(count: int) -> list[str]:
    names = list(_TEXT_COLUMNS)[:count]
    return names + [f"id_{12 + i}" for i in range(count - len(names))]


def _shape(name: str, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """A column's distribution: ``n`` -> ``n`` values."""
    if name == ALWAYS_SAME:
        return lambda n: np.ones(n)
    if name == PLANTED_NUMERIC:
        return lambda n: rng.normal(0.0, 1.0, n)
    if name.startswith("C"):  # counts, heavy-tailed
        return lambda n: np.asarray(rng.poisson(rng.lognormal(0.5, 1.5, n)), dtype=np.float64)
    if name.startswith("D"):  # days since something
        return lambda n: np.floor(rng.uniform(0, 600, n))
    scale, kind = float(rng.lognormal(0, 1)), int(rng.integers(3))
    if kind == 0:
        return lambda n: rng.normal(0.0, scale, n)
    if kind == 1:
        return lambda n: np.round(rng.lognormal(0.0, scale, n), 3)
    return lambda n: rng.integers(0, 4, n).astype(np.float64)


def _text_values(name: str, vocabulary: tuple[str, ...], fraud: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values drawn Zipf-like from ``vocabulary``; for ``P_emaildomain``, the planted domain at its rates."""
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    values = rng.choice(np.array(vocabulary, dtype=object), size=len(fraud), p=weights / weights.sum())
    if name == "P_emaildomain":
        planted = rng.random(len(fraud)) < np.where(fraud, 0.45, 0.04)
        values[planted] = PLANTED_DOMAIN
    return values


def _schema(numeric: list[str], text: list[str]) -> pa.Schema:
    return pa.schema([
        ("TransactionID", pa.int64()), ("TransactionDT", pa.int64()), ("TransactionAmt", pa.float64()), ("card1", pa.int64()),
        ("isFraud", pa.int64()), *((name, pa.float64()) for name in numeric), *((name, pa.string()) for name in text),
    ])


def silver_tables(path: Path, base_time: datetime) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The file's silver transactions and labels, a row group at a time, as ``produce --source file --map WIDE_FILE_MAP``
    and ingest land them (event times ``TransactionDT`` seconds after ``base_time``), built column-wise with Arrow:
    ingest's per-event validation takes milliseconds for an event of 400 attributes, too slow to land 600,000 of them
    for a benchmark. ``tests/training/test_wide_file.py`` checks both give the same rows."""
    from edgelake.lake.tables import SILVER

    transactions, labels = SILVER["transactions"].schema, SILVER["fraud-labels"].schema
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    numeric = [n for n in names if n not in _MAPPED and pa.types.is_floating(parquet.schema_arrow.field(n).type)]
    text = [n for n in names if n not in _MAPPED and pa.types.is_string(parquet.schema_arrow.field(n).type)]
    offset, ingested = 0, datetime.now(UTC)
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        n = table.num_rows
        event_id = pc.cast(table["TransactionID"], pa.string())
        event_time = pa.array(np.datetime64(base_time.replace(tzinfo=None), "us") + table["TransactionDT"].to_numpy().astype("timedelta64[s]"))
        event_time = pc.assume_timezone(event_time, "UTC")
        bronze = {
            "_partition": pa.array(np.zeros(n, np.int32)), "_offset": pa.array(np.arange(offset, offset + n)),
            "_ingest_time": pa.array(np.full(n, np.datetime64(ingested.replace(tzinfo=None), "us"))),
            "event_date": pc.cast(event_time, pa.date32()),
        }
        bronze["_ingest_time"] = pc.assume_timezone(bronze["_ingest_time"], "UTC")
        card = pc.cast(table["card1"], pa.string())
        yield (
            _cast({
                "event_id": event_id, "event_time": event_time, "schema_version": pa.array(np.ones(n, np.int64)), "card_id": card,
                "merchant_id": _same("unknown", n), "merchant_category": _same("unknown", n), "amount": table["TransactionAmt"],
                "currency": _same("EUR", n), "country": pa.nulls(n, pa.string()), "channel": _same("unknown", n),
                "terminal_id": pa.nulls(n, pa.string()), "attributes": _map(table, numeric, transactions.field("attributes").type),
                "categories": _map(table, text, transactions.field("categories").type), "_topic": _same("transactions", n), **bronze,
            }, transactions),
            _cast({
                "event_id": pc.binary_join_element_wise(event_id, "-label", ""), "event_time": event_time,
                "schema_version": pa.array(np.ones(n, np.int64)), "transaction_id": event_id, "card_id": card,
                "is_fraud": pc.cast(table["isFraud"], pa.bool_()), "source": _same("dataset", n), "_topic": _same("fraud-labels", n), **bronze,
            }, labels),
        )
        offset += n


_MAPPED = ("TransactionID", "TransactionDT", "TransactionAmt", "card1", "isFraud")


def _same(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _map(table: pa.Table, columns: list[str], map_type: pa.DataType) -> pa.Array:
    """Each row's non-null cells of ``columns`` as a map, in column order; text cells of blanks left out."""
    values = [table[c].combine_chunks() for c in columns]
    present = np.column_stack([v.is_valid().to_numpy(zero_copy_only=False) for v in values]) if values else np.zeros((table.num_rows, 0), bool)
    if pa.types.is_string(map_type.item_type):
        for j, v in enumerate(values):
            present[:, j] &= pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(v)), 0), False).to_numpy(zero_copy_only=False)
    items = np.empty(present.shape, dtype=object if pa.types.is_string(map_type.item_type) else np.float64)
    for j, v in enumerate(values):
        items[:, j] = v.to_numpy(zero_copy_only=False)
    keys = np.broadcast_to(np.array(columns, dtype=object), present.shape)[present]
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32)
    return pa.MapArray.from_arrays(pa.array(offsets), pa.array(keys, pa.string()), pa.array(items[present], map_type.item_type), type=map_type)


def _cast(columns: dict[str, pa.Array], schema: pa.Schema) -> pa.Table:
    return pa.table([columns[name] for name in schema.names], names=schema.names).cast(schema)
