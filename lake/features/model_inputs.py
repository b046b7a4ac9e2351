"""The fraud model's inputs: which columns it reads, how each path gets them, and ``InputSpec``, its input matrix.

A transaction's own fields plus its card features (``definitions``) make the input columns:
training gets them from Spark (``batch_input_columns``: silver transactions joined with
``gold_card_features``, read back as Arrow batches by ``arrow_columns``), online scoring
from the transactions it scores and their ``CardHistory`` values (``online_input_columns``).

Which inputs a model has comes from the data it learnt from, not from a list written for
one data set: every numeric attribute (``Transaction.attributes``) and every categorical
one (``Transaction.categories``, and the ``CATEGORICAL_FIELDS``) that training found
usable, beside the built-in inputs every model has (amount, time of day, channel, card
features). ``lake.features.input_profile`` decides them from the training rows; the
resulting ``InputSpec`` is stored with each model version and turns either path's columns
into the model's input matrix the same way (``InputSpec.matrix``):

- a numeric attribute is its value, the training mean where missing, and, if some training
  rows lacked it, a 0/1 ``<name>_missing`` indicator;
- a categorical one is one 0/1 input per value of its vocabulary (the values common enough
  in training), then ``<name>=other`` and ``<name>=missing``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from edgelake.contracts import Channel, Transaction
from edgelake.lake.features.definitions import CARD_FEATURES, FEATURE_VERSION, FeatureValues

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

CHANNELS: tuple[str, ...] = get_args(Channel)
# Transaction fields read as categories; the model's drift monitoring also compares their mix in live traffic with training's.
CATEGORICAL_FIELDS = ("merchant_category", "country")
WATCHED_FIELDS = CATEGORICAL_FIELDS
MAPS = ("attributes", "categories")  # the transaction's free-form numeric and categorical attributes
# Columns ``InputSpec.matrix`` reads: the transaction's own fields, then the card features.
INPUT_COLUMNS = ("amount", "event_time", "channel", *CATEGORICAL_FIELDS, *MAPS, *(feature.name for feature in CARD_FEATURES))
# The inputs every model has, whatever its data: amount, time of day, channel and the card features.
BUILT_IN_INPUTS: tuple[str, ...] = (
    "log_amount",
    "hour_sin",
    "hour_cos",
    *(f"channel_{channel}" for channel in CHANNELS),
    *(f"log1p_{f.name}" for f in CARD_FEATURES if f.kind in ("count", "amount_sum", "distinct_merchants")),
    "log1p_seconds_since_previous",
    "is_first_transaction",
    "amount_to_card_mean",
)
# Bumped with any change here or in the card features: models record it, scorers check it.
INPUTS_VERSION = f"{FEATURE_VERSION}.2"
INPUTS_FILE = "inputs.json"


@dataclass(frozen=True)
class NumericInput:
    """A numeric attribute the model reads."""

    name: str
    fill: float  # where the value is missing: the training rows' mean
    indicator: bool  # whether a ``<name>_missing`` input says it was (some training rows lacked it)


@dataclass(frozen=True)
class CategoricalInput:
    """A categorical attribute (or field) the model reads, one-hot over its vocabulary."""

    name: str
    vocabulary: tuple[str, ...]  # most frequent first; any other value is ``other``

    @property
    def names(self) -> tuple[str, ...]:
        return (*(f"{self.name}={value}" for value in self.vocabulary), f"{self.name}=other", f"{self.name}=missing")


@dataclass(frozen=True)
class InputSpec:
    """A model's inputs: the attributes it reads and how, and the columns of the data it set aside, with why."""

    numeric: tuple[NumericInput, ...] = ()
    categorical: tuple[CategoricalInput, ...] = ()
    set_aside: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The input matrix's columns: the numeric attributes, the built-in inputs, the missing indicators, the one-hots."""
        return (
            *(n.name for n in self.numeric),
            *BUILT_IN_INPUTS,
            *(f"{n.name}_missing" for n in self.numeric if n.indicator),
            *(name for c in self.categorical for name in c.names),
        )

    def matrix(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The model's input matrix (float32, one row per transaction, ``names`` order) from ``INPUT_COLUMNS``.

        Each column holds one value per transaction: a list, a NumPy array, or (``arrow_columns``) an Arrow array.
        ``attributes`` and ``categories`` hold a mapping per transaction (an Arrow map array, or dicts). ``event_time``
        holds datetime64 values or datetimes, naive ones taken as UTC. Null card features are None or NaN: a null
        ``seconds_since_previous`` counts as the card's first transaction, a null ``amount_to_card_mean`` as 1 (an
        amount like the card's usual).
        """
        rows = len(columns["amount"])
        numeric = np.full((rows, len(self.numeric)), np.nan)
        at_rows, which, values = _map_entries(columns["attributes"], self._numeric_positions)
        numeric[at_rows, which] = values.astype(np.float64)
        missing = np.isnan(numeric)
        numeric[missing] = np.take(self._fills, np.nonzero(missing)[1])
        parts = [numeric, _built_in(columns)]
        parts.append(missing[:, [i for i, n in enumerate(self.numeric) if n.indicator]].astype(np.float64))
        parts.append(self._one_hot(columns, rows))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def report(self) -> dict[str, Any]:
        """What the model reads and what it set aside, for people: its metrics and ``edgelake models show``."""
        return {
            "count": len(self.names),
            "attributes": [n.name for n in self.numeric],
            "missing_indicators": [n.name for n in self.numeric if n.indicator],
            "categories": {c.name: list(c.vocabulary) for c in self.categorical},
            "set_aside": dict(self.set_aside),
        }

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> InputSpec:
        """The spec ``write`` wrote; ValueError if the file is not one."""
        try:
            data = json.loads(path.read_text())
            return cls(
                tuple(NumericInput(n["name"], float(n["fill"]), bool(n["indicator"])) for n in data["numeric"]),
                tuple(CategoricalInput(c["name"], tuple(map(str, c["vocabulary"]))) for c in data["categorical"]),
                {str(k): str(v) for k, v in data["set_aside"].items()},
            )
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path.name} is not an input spec: {error!r}") from None

    @cached_property
    def _numeric_positions(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.numeric)}

    @cached_property
    def _fills(self) -> np.ndarray:
        return np.array([n.fill for n in self.numeric], dtype=np.float64)

    @cached_property
    def _categorical_positions(self) -> dict[str, int]:
        return {c.name: i for i, c in enumerate(self.categorical) if c.name not in CATEGORICAL_FIELDS}

    @cached_property
    def _codes(self) -> list[dict[str, int]]:
        return [{value: code for code, value in enumerate(c.vocabulary)} for c in self.categorical]

    def _one_hot(self, columns: Mapping[str, Any], rows: int) -> np.ndarray:
        values = np.full((rows, len(self.categorical)), None, dtype=object)
        at_rows, which, found = _map_entries(columns["categories"], self._categorical_positions)
        values[at_rows, which] = found
        for i, c in enumerate(self.categorical):
            if c.name in CATEGORICAL_FIELDS:
                values[:, i] = _objects(columns[c.name])
        one_hot = np.zeros((rows, sum(len(c.names) for c in self.categorical)), dtype=np.float64)
        start = 0
        for i, (c, codes) in enumerate(zip(self.categorical, self._codes, strict=True)):
            other, missing = len(c.vocabulary), len(c.vocabulary) + 1
            code = [missing if v is None else codes.get(v, other) for v in values[:, i]]
            one_hot[np.arange(rows), start + np.array(code, dtype=np.int64)] = 1.0
            start += len(c.names)
        return one_hot


def batch_input_columns(transactions: DataFrame, card_features: DataFrame) -> DataFrame:
    """Silver ``transactions`` with ``INPUT_COLUMNS`` (and ``event_id``), their card features from ``gold_card_features`` rows."""
    from pyspark.sql import functions as F

    if "categories" not in transactions.columns:  # a silver table last written before transactions had categories
        transactions = transactions.withColumn("categories", F.lit(None).cast("map<string,string>"))
    own = transactions.select("event_id", "event_time", "amount", "channel", *CATEGORICAL_FIELDS, *MAPS)
    return own.join(card_features.select("event_id", *(f.name for f in CARD_FEATURES)), "event_id")


def arrow_columns(batch: pa.RecordBatch) -> dict[str, Any]:
    """``INPUT_COLUMNS`` of a batch of ``batch_input_columns`` rows as ``InputSpec.matrix`` reads them: maps as Arrow arrays."""
    return {
        name: batch.column(name) if name in MAPS else batch.column(name).to_numpy(zero_copy_only=False) for name in INPUT_COLUMNS
    }


def online_input_columns(transactions: Sequence[Transaction], card_features: Sequence[FeatureValues]) -> dict[str, list[Any]]:
    """``INPUT_COLUMNS`` of ``transactions`` as scored online, with each one's card features (``CardHistory.add``'s values)."""
    return {
        "amount": [t.amount for t in transactions],
        "event_time": [t.event_time for t in transactions],
        "channel": [t.channel for t in transactions],
        "merchant_category": [t.merchant_category for t in transactions],
        "country": [t.country for t in transactions],
        "attributes": [t.attributes for t in transactions],
        "categories": [t.categories for t in transactions],
        **{f.name: [values[f.name] for values in card_features] for f in CARD_FEATURES},
    }


def _built_in(columns: Mapping[str, Any]) -> np.ndarray:
    amount = _floats(columns["amount"])
    seconds = _utc_seconds(columns["event_time"])
    hour = (seconds % 86_400) / 3_600
    channel = np.asarray(columns["channel"], dtype=object)
    parts = [np.log1p(amount), np.sin(2 * math.pi * hour / 24), np.cos(2 * math.pi * hour / 24)]
    parts += [(channel == name).astype(np.float64) for name in CHANNELS]
    parts += [np.log1p(_floats(columns[f.name], fill=0.0)) for f in CARD_FEATURES if f.kind in ("count", "amount_sum", "distinct_merchants")]
    since = _floats(columns["seconds_since_previous"])
    parts += [np.log1p(np.nan_to_num(since, nan=0.0)), np.isnan(since).astype(np.float64)]
    parts += [np.nan_to_num(_floats(columns["amount_to_card_mean"]), nan=1.0)]
    return np.column_stack(parts)


def _map_entries(maps: Any, positions: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``maps`` (one mapping per row) whose key ``positions`` holds: their rows, key positions and values."""
    import pyarrow as pa

    if isinstance(maps, (pa.Array, pa.ChunkedArray)):
        import pyarrow.compute as pc

        lengths, keys, values = arrow_map_entries(maps)
        which = pc.index_in(keys, value_set=pa.array(list(positions), pa.string()))
        kept = pc.is_valid(which)
        rows = np.repeat(np.arange(len(lengths)), lengths)[kept.to_numpy(zero_copy_only=False)]
        at = np.fromiter(positions.values(), dtype=np.int64, count=len(positions))[which.filter(kept).to_numpy(zero_copy_only=False)]
        return rows, at, values.filter(kept).to_numpy(zero_copy_only=False)
    found = [(row, positions[key], value) for row, mapping in enumerate(maps) for key, value in (mapping or {}).items() if key in positions]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, object)
    rows, which, values = zip(*found, strict=True)
    return np.array(rows), np.array(which), np.array(values, dtype=object)


def arrow_map_entries(maps: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """An Arrow map array's entry count per row (0 for a null map) and its entries' keys and values, row after row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(maps, pa.ChunkedArray):
        maps = maps.combine_chunks()
    # Arrow's list kernels take no maps: the same entries as a list of key-value structs.
    entries = maps.cast(pa.list_(pa.struct([("key", maps.type.key_type), ("value", maps.type.item_type)])))
    flat = pc.list_flatten(entries)
    return pc.list_value_length(entries).fill_null(0).to_numpy(zero_copy_only=False), flat.field(0), flat.field(1)


def _objects(values: Any) -> np.ndarray:
    """Text values as an object array, nulls (None or NaN) as None."""
    array = np.asarray(values, dtype=object)
    return np.array([v if isinstance(v, str) else None for v in array], dtype=object)


def _floats(values: Any, fill: float | None = None) -> np.ndarray:
    """``values`` as float64, None as NaN, and NaN as ``fill`` where one is given."""
    array = np.array(values, dtype=np.float64)
    if fill is not None:
        array[np.isnan(array)] = fill  # np.nan_to_num costs ~15 µs a call, most of a one-row scoring step
    return array


def _utc_seconds(values: Any) -> np.ndarray:
    """Seconds since the epoch; naive datetimes and datetime64 values are taken as UTC, as Spark gives them."""
    as_datetime = np.asarray(values)
    if np.issubdtype(as_datetime.dtype, np.datetime64):
        return as_datetime.astype("datetime64[us]").astype(np.int64) / 1e6
    return np.array([(v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp() for v in as_datetime], dtype=np.float64)
