"""The card features (``definitions``) online, one transaction at a time: ``CardHistory``, with each card's state in process.

``card_features`` is the online computation of every feature from a card's window of
transactions; ``CardHistory`` and ``online_redis.RedisCardHistory`` keep that window (in
process, in Redis) and both give it the same way.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edgelake.lake.features.definitions import CARD_FEATURES, WINDOWS, FeatureValues

LONGEST_WINDOW = max(WINDOWS.values())  # how much of each card's history is kept for the windows


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
    """Each card's recent transactions, giving the card features of a new one online.

    Fed a card's transactions in ``(event_time, event_id)`` order, ``add`` returns exactly
    the batch values (``batch``, in ``gold_card_features``) for each, with one exception it
    cannot avoid: a transaction scored online cannot see a same-instant transaction that
    arrives after it. Batch windows and the card mean include every same-instant
    transaction, so for all but the last of a card's same-instant group, the online counts,
    sums, distinct merchants and ``amount_to_card_mean`` cover only the group members added
    so far (the last one matches batch exactly). ``seconds_since_previous`` matches whatever
    the tie: 0 after a same-instant predecessor.

    Only the last 7 days of each card are kept for the windows; the card mean keeps a
    running count and total of its whole history. A transaction older than the card's
    latest is still scored, from the history as it stands (its windows leave out later
    transactions, but the mean includes them and ``seconds_since_previous`` is 0).

    Adding is idempotent per ``event_id``: a transaction whose event id the card already
    holds (among its kept 7 days) is not recorded again, and its features are recomputed
    from the history as it stands, as for a late transaction: the same windows, counts
    and sums as when first recorded unless later same-instant or earlier late ones came
    since, the card mean over everything recorded, and ``seconds_since_previous`` 0 where
    the card has a transaction at or after it (``online_redis.RedisCardHistory`` answers the same).
    An event id older than the kept history, or no event id, is counted again.
    """

    def __init__(self) -> None:
        self._cards: dict[str, _Card] = {}

    def add(self, card_id: str, event_time: datetime, amount: float, merchant_id: str, event_id: str | None = None) -> FeatureValues:
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
        while card.times and card.times[0] <= card.last - LONGEST_WINDOW:
            card.times.popleft(), card.amounts.popleft(), card.merchants.popleft()
            card.seen.discard(card.event_ids.popleft())
        return self._features(card, event_time, amount, since)

    def _features(self, card: _Card, t: datetime, amount: float, since: float | None) -> FeatureValues:
        upto = bisect.bisect_right(card.times, t)  # the card's kept transactions with event_time <= t
        mean = card.total / card.count

        def window(span: timedelta) -> tuple[list[float], list[str]]:
            inside = range(bisect.bisect_right(card.times, t - span, 0, upto), upto)
            return [card.amounts[i] for i in inside], [card.merchants[i] for i in inside]

        return card_features(window, amount, since, mean)


def card_features(
    window: Callable[[timedelta], tuple[Sequence[float], Sequence[str]]], amount: float, since: float | None, mean: float
) -> FeatureValues:
    """A transaction's ``CARD_FEATURES`` online: ``window(span)`` gives the amounts and merchants of the card's
    transactions in ``(t - span, t]``; ``since`` and ``mean`` are the seconds since its previous one and its mean amount."""
    values: FeatureValues = {}
    for feature in CARD_FEATURES:
        if feature.span is not None:
            values[feature.name] = _window_value(feature.kind, *window(feature.span))
        elif feature.kind == "seconds_since_previous":
            values[feature.name] = since
        elif feature.kind == "amount_to_card_mean":
            values[feature.name] = amount / mean if mean != 0 else None
        else:
            raise ValueError(f"feature '{feature.name}': no online computation for kind '{feature.kind}' without a window")
    return values


def _window_value(kind: str, amounts: Sequence[float], merchants: Sequence[str]) -> float | int:
    """A windowed feature of ``kind`` from the amounts and merchants of the transactions in the window."""
    if kind == "count":
        return len(amounts)
    if kind == "amount_sum":
        return math.fsum(amounts)
    if kind == "distinct_merchants":
        return len(set(merchants))
    raise ValueError(f"no online computation for windowed kind '{kind}'")
