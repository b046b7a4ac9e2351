"""The synthetic transaction source: reproducible, ordered, valid, and with learnable fraud."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta
from itertools import pairwise

import pytest

from edgelake.contracts import FraudLabel, Transaction
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions

COUNT = 20_000
CONFIG = SyntheticConfig()


@pytest.fixture(scope="module")
def feed() -> list[tuple[Transaction, FraudLabel]]:
    return list(zip(transactions(CONFIG, COUNT), labels(CONFIG, COUNT), strict=True))


def test_same_seed_gives_identical_events() -> None:
    first = [tx.to_bytes() for tx in transactions(CONFIG, 2000)]
    again = [tx.to_bytes() for tx in transactions(SyntheticConfig(), 2000)]
    assert first == again
    assert [lb.to_bytes() for lb in labels(CONFIG, 2000)] == [lb.to_bytes() for lb in labels(CONFIG, 2000)]


def test_different_seed_differs() -> None:
    other = list(transactions(SyntheticConfig(seed=8), 200))
    ours = list(transactions(CONFIG, 200))
    assert [tx.model_dump(exclude={"event_id"}) for tx in other] != [
        tx.model_dump(exclude={"event_id"}) for tx in ours
    ]


def test_prefix_stable(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    assert list(transactions(CONFIG, 1500)) == [tx for tx, _ in feed[:1500]]
    assert list(labels(CONFIG, 1500)) == [label for _, label in feed[:1500]]


def test_event_ids_are_deterministic(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    assert [tx.event_id for tx, _ in feed[:3]] == ["syn-7-000000000", "syn-7-000000001", "syn-7-000000002"]


def test_event_time_non_decreasing(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    times = [tx.event_time for tx, _ in feed]
    assert all(a <= b for a, b in pairwise(times))
    assert times[0] >= CONFIG.start


def test_every_event_round_trips(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    for tx, label in feed:
        assert Transaction.parse(tx.to_bytes()) == tx
        assert FraudLabel.parse(label.to_bytes()) == label
        assert tx.attributes == {}


def test_labels_one_per_transaction_and_later(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    for tx, label in feed:
        assert label.event_id == f"{tx.event_id}-label"
        assert (label.transaction_id, label.card_id) == (tx.event_id, tx.card_id)
        assert label.event_time > tx.event_time
        assert label.source == ("chargeback" if label.is_fraud else "analyst")
        delay = label.event_time - tx.event_time
        if label.is_fraud:
            assert timedelta(hours=1) <= delay <= timedelta(days=7)
        else:
            assert delay == timedelta(days=7)


def test_fraud_rate_near_config(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    rate = sum(label.is_fraud for _, label in feed) / len(feed)
    assert 0.5 * CONFIG.fraud_rate <= rate <= 1.6 * CONFIG.fraud_rate


def test_fraud_is_distinguishable(feed: list[tuple[Transaction, FraudLabel]]) -> None:
    amounts: dict[str, list[float]] = defaultdict(list)
    countries: dict[str, Counter[str]] = defaultdict(Counter)
    for tx, _ in feed:
        amounts[tx.card_id].append(tx.amount)
        countries[tx.card_id][tx.country or ""] += 1
    features: dict[bool, list[tuple[float, bool, bool, bool]]] = {True: [], False: []}
    last_seen: dict[str, Transaction] = {}
    merchants_seen: dict[str, set[str]] = defaultdict(set)
    for tx, label in feed:
        previous = last_seen.get(tx.card_id)
        features[label.is_fraud].append(
            (
                tx.amount / statistics.median(amounts[tx.card_id]),
                tx.country != countries[tx.card_id].most_common(1)[0][0],
                previous is not None and tx.event_time - previous.event_time < timedelta(minutes=15),
                previous is not None and tx.merchant_id not in merchants_seen[tx.card_id],
            )
        )
        last_seen[tx.card_id] = tx
        merchants_seen[tx.card_id].add(tx.merchant_id)

    def mean(is_fraud: bool, column: int) -> float:
        return statistics.fmean(float(row[column]) for row in features[is_fraud])

    assert len(features[True]) > 50
    assert mean(True, 0) > 2.5 * mean(False, 0)  # amount relative to the card's median
    assert mean(True, 1) > 5 * mean(False, 1)  # away from the card's usual country
    assert mean(True, 2) > 5 * mean(False, 2)  # soon after the card's previous transaction
    assert mean(True, 3) > 2 * mean(False, 3)  # at a merchant new to the card


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(cards=0)
    with pytest.raises(ValueError):
        SyntheticConfig(fraud_rate=1.5)
    with pytest.raises(ValueError):
        SyntheticConfig(label_delay=(timedelta(0), timedelta(days=1)))
