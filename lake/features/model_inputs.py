"""The fraud model's inputs: which columns it reads, how each path gets them, and ``fraud_inputs``, its input matrix.

A transaction's own fields plus its card features (``definitions``) make ``INPUT_COLUMNS``:
training gets them from Spark (``batch_input_columns``: silver transactions joined with
``gold_card_features``), online scoring from the transactions it scores and their
``CardHistory`` values (``online_input_columns``). ``fraud_inputs`` turns either into the
model's input matrix, in ``INPUT_NAMES`` order, the same way. Training also reads
``WATCHED_FIELDS``, transaction fields the model does not read, to record their mix for drift
monitoring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from edgelake.contracts import Channel, Transaction
from edgelake.lake.features.definitions import CARD_FEATURES, FEATURE_VERSION, FeatureValues

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ATTRIBUTES = tuple(f"V{i}" for i in range(1, 29))  # the ULB data set's PCA components; 0 where absent
CHANNELS: tuple[str, ...] = get_args(Channel)
# Columns ``fraud_inputs`` reads: the transaction's own fields, then the card features.
TRANSACTION_COLUMNS = ("amount", "event_time", "channel", *ATTRIBUTES)
INPUT_COLUMNS = (*TRANSACTION_COLUMNS, *(feature.name for feature in CARD_FEATURES))
# Categorical transaction fields the model does not read, whose mix in live traffic is compared with training's.
WATCHED_FIELDS = ("merchant_category", "country")
INPUT_NAMES: tuple[str, ...] = (
    *ATTRIBUTES,
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
INPUTS_VERSION = f"{FEATURE_VERSION}.1"


def batch_input_columns(transactions: DataFrame, card_features: DataFrame) -> DataFrame:
    """Silver ``transactions`` with ``INPUT_COLUMNS`` (and ``event_id`` and ``WATCHED_FIELDS``), their card features from
    ``gold_card_features`` rows."""
    from pyspark.sql import functions as F

    own = transactions.select(
        "event_id", "event_time", "amount", "channel", *WATCHED_FIELDS, *(F.col("attributes")[name].alias(name) for name in ATTRIBUTES)
    )
    return own.join(card_features.select("event_id", *(f.name for f in CARD_FEATURES)), "event_id")


def online_input_columns(transactions: Sequence[Transaction], card_features: Sequence[FeatureValues]) -> dict[str, list[Any]]:
    """``INPUT_COLUMNS`` of ``transactions`` as scored online, with each one's card features (``CardHistory.add``'s values)."""
    return {
        "amount": [t.amount for t in transactions],
        "event_time": [t.event_time for t in transactions],
        "channel": [t.channel for t in transactions],
        **{name: [t.attributes.get(name) for t in transactions] for name in ATTRIBUTES},
        **{f.name: [values[f.name] for values in card_features] for f in CARD_FEATURES},
    }


def fraud_inputs(columns: Mapping[str, Any]) -> np.ndarray:
    """The model's input matrix (float32, one row per transaction, ``INPUT_NAMES`` order) from ``INPUT_COLUMNS``.

    Each column holds one value per transaction (a list, a NumPy array or a pandas column's
    values). ``event_time`` holds datetime64 values or datetimes, naive ones taken as UTC.
    Missing attributes and null features are None or NaN: attributes then count as 0, a
    null ``seconds_since_previous`` as the card's first transaction, a null
    ``amount_to_card_mean`` as 1 (an amount like the card's usual).
    """
    amount = _floats(columns["amount"])
    seconds = _utc_seconds(columns["event_time"])
    hour = (seconds % 86_400) / 3_600
    channel = np.asarray(columns["channel"], dtype=object)
    parts = [_floats(columns[name], fill=0.0) for name in ATTRIBUTES]
    parts += [np.log1p(amount), np.sin(2 * math.pi * hour / 24), np.cos(2 * math.pi * hour / 24)]
    parts += [(channel == name).astype(np.float64) for name in CHANNELS]
    parts += [np.log1p(_floats(columns[f.name], fill=0.0)) for f in CARD_FEATURES if f.kind in ("count", "amount_sum", "distinct_merchants")]
    since = _floats(columns["seconds_since_previous"])
    parts += [np.log1p(np.nan_to_num(since, nan=0.0)), np.isnan(since).astype(np.float64)]
    parts += [np.nan_to_num(_floats(columns["amount_to_card_mean"]), nan=1.0)]
    return np.column_stack(parts).astype(np.float32)


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
