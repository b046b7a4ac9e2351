"""The fraud model's inputs: one definition used by training (from Spark) and by online scoring.

The per-card behaviour features are defined in ``lake.features``; Spark computes them in
batch for the gold table, and ``CardHistory`` computes the same values online, one
transaction at a time. ``fraud_inputs`` turns a transaction's own fields plus those card
features into the model's input vector, the same way on both paths. Nothing here imports
Spark or TensorFlow, so the API can use it as it is.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import numpy as np

from edgelake.contracts import Channel
from edgelake.lake.features import CARD_FEATURES, FEATURE_VERSION, WINDOWS

ATTRIBUTES = tuple(f"V{i}" for i in range(1, 29))  # the ULB data set's PCA components; 0 where absent
CHANNELS: tuple[str, ...] = get_args(Channel)
# Columns ``fraud_inputs`` reads: the transaction's own fields, then the card features.
TRANSACTION_COLUMNS = ("amount", "event_time", "channel", *ATTRIBUTES)
INPUT_COLUMNS = (*TRANSACTION_COLUMNS, *(feature.name for feature in CARD_FEATURES))
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
# Bumped with any change here or in lake.features: models record it, scorers check it.
INPUTS_VERSION = f"{FEATURE_VERSION}.1"
_LONGEST = max(WINDOWS.values())


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


@dataclass
class _Card:
    times: deque[datetime] = field(default_factory=deque)  # the last 7 days, in event-time order
    amounts: deque[float] = field(default_factory=deque)
    merchants: deque[str] = field(default_factory=deque)
    event_ids: deque[str | None] = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)  # the kept transactions' event ids
    count: int = 0
    total: float = 0.0
    last: datetime | None = None


class CardHistory:
    """Each card's recent transactions, giving the ``lake.features`` values of a new one online.

    Fed a card's transactions in ``(event_time, event_id)`` order, ``add`` returns exactly
    the batch values (``lake.gold``) for each, with one exception it cannot avoid: a
    transaction scored online cannot see a same-instant transaction that arrives after it.
    Batch windows and the card mean include every same-instant transaction, so for all
    but the last of a card's same-instant group, the online counts, sums, distinct
    merchants and ``amount_to_card_mean`` cover only the group members added so far (the
    last one matches batch exactly). ``seconds_since_previous`` matches whatever the tie:
    0 after a same-instant predecessor.

    Only the last 7 days of each card are kept for the windows; the card mean keeps a
    running count and total of its whole history. A transaction older than the card's
    latest is still scored, from the history as it stands (its windows leave out later
    transactions, but the mean includes them and ``seconds_since_previous`` is 0).

    Adding is idempotent per ``event_id``: a transaction whose event id the card already
    holds (among its kept 7 days) is not recorded again, and its features are recomputed
    from the history as it stands, as for a late transaction: the same windows, counts
    and sums as when first recorded unless later same-instant or earlier late ones came
    since, the card mean over everything recorded, and ``seconds_since_previous`` 0 where
    the card has a transaction at or after it (``api.redis_cards`` answers the same).
    An event id older than the kept history, or no event id, is counted again.
    """

    def __init__(self) -> None:
        self._cards: dict[str, _Card] = {}

    def add(
        self, card_id: str, event_time: datetime, amount: float, merchant_id: str, event_id: str | None = None
    ) -> dict[str, float | int | None]:
        """Record a transaction (unless its ``event_id`` is already held) and return its card features (it is included, as in batch)."""
        card = self._cards.setdefault(card_id, _Card())
        since = None if card.last is None else max((event_time - card.last).total_seconds(), 0.0)
        if event_id is not None and event_id in card.seen:
            return self._features(card, event_time, amount, since)
        position = bisect.bisect_right(card.times, event_time)
        card.times.insert(position, event_time)
        card.amounts.insert(position, amount)
        card.merchants.insert(position, merchant_id)
        card.event_ids.insert(position, event_id)
        if event_id is not None:
            card.seen.add(event_id)
        card.count += 1
        card.total += amount
        card.last = max(card.last or event_time, event_time)
        while card.times and card.times[0] <= card.last - _LONGEST:
            card.times.popleft(), card.amounts.popleft(), card.merchants.popleft()
            card.seen.discard(card.event_ids.popleft())  # type: ignore[arg-type]
        return self._features(card, event_time, amount, since)

    def _features(self, card: _Card, t: datetime, amount: float, since: float | None) -> dict[str, float | int | None]:
        upto = bisect.bisect_right(card.times, t)  # the card's kept transactions with event_time <= t
        mean = card.total / card.count

        def window(span: timedelta) -> tuple[list[float], list[str]]:
            inside = range(bisect.bisect_right(card.times, t - span, 0, upto), upto)
            return [card.amounts[i] for i in inside], [card.merchants[i] for i in inside]

        return card_features(window, amount, since, mean)


def card_features(
    window: Callable[[timedelta], tuple[Sequence[float], Sequence[str]]], amount: float, since: float | None, mean: float
) -> dict[str, float | int | None]:
    """A transaction's ``CARD_FEATURES`` online: ``window(span)`` gives the amounts and merchants of the card's
    transactions in ``(t - span, t]``; ``since`` and ``mean`` are the seconds since its previous one and its mean amount."""
    values: dict[str, float | int | None] = {}
    for feature in CARD_FEATURES:
        if feature.span is not None:
            values[feature.name] = window_value(feature.kind, *window(feature.span))
        elif feature.kind == "seconds_since_previous":
            values[feature.name] = since
        elif feature.kind == "amount_to_card_mean":
            values[feature.name] = amount / mean if mean != 0 else None
        else:
            raise ValueError(f"feature '{feature.name}': no online computation for kind '{feature.kind}' without a window")
    return values


def window_value(kind: str, amounts: Sequence[float], merchants: Sequence[str]) -> float | int:
    """A windowed feature of ``kind`` from the amounts and merchants of the transactions in the window."""
    if kind == "count":
        return len(amounts)
    if kind == "amount_sum":
        return math.fsum(amounts)
    if kind == "distinct_merchants":
        return len(set(merchants))
    raise ValueError(f"no online computation for windowed kind '{kind}'")
