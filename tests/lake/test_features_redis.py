"""``RedisCardHistory`` against a real redis-server: the same card features as ``CardHistory``, shared by replicas.

Every call's features must equal ``lake.features.online.CardHistory``'s for the same sequence of
calls (floats within 1e-9 relative, nulls alike): synthetic cards with many transactions
each, the boundary cases of ``tests/lake/test_features.py`` (same-instant ties,
transactions exactly one window length apart, zero amounts, a single-transaction card) and
transactions older than their card's latest.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from edgelake.contracts import Transaction
from edgelake.ingest.sources import synthetic
from edgelake.lake.features.definitions import CARD_FEATURES, WINDOWS, FeatureValues
from edgelake.lake.features.online import CardHistory
from edgelake.lake.features.online_redis import RedisCardHistory

START = datetime(2025, 1, 1, tzinfo=UTC)
TIE = START + timedelta(days=2, hours=3)
SYNTHETIC = synthetic.SyntheticConfig(seed=5, cards=6, merchants=40, fraud_rate=0.1, start=START)


@pytest.fixture
def client(redis_server: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server)
    connection.flushdb()
    yield connection
    connection.close()


def transaction(event_id: str, card: str, when: datetime, amount: float, merchant: str = "m1") -> Transaction:
    return Transaction(
        event_id=event_id, event_time=when, card_id=card, merchant_id=merchant, merchant_category="grocery",
        amount=amount, currency="EUR", channel="pos",
    )


def edge_cases() -> list[Transaction]:
    """The boundary cards of the features' parity test."""
    return [
        transaction("ties-0", "ties", TIE - timedelta(minutes=30), 10.0, "m1"),
        transaction("ties-1a", "ties", TIE, 5.0, "m1"),
        transaction("ties-1b", "ties", TIE, 0.0, "m2"),
        transaction("ties-1c", "ties", TIE, 20.0, "m2"),
        *(transaction(f"ties-after-{name}", "ties", TIE + span, 1.0, f"m-{name}") for name, span in WINDOWS.items()),
        transaction("zero-0", "zero", START + timedelta(hours=1), 0.0),
        transaction("zero-1", "zero", START + timedelta(hours=2), 0.0),
        transaction("zero-2", "zero", START + timedelta(hours=3), 12.5, "m2"),
        transaction("zero-3", "zero", START + timedelta(hours=3, microseconds=1), 0.0, "m3"),
        transaction("new-0", "new", START + timedelta(days=3), 42.0, "m9"),
        transaction("same-0", "same", START, 7.25, "m1"),  # identical but for the event id: both count
        transaction("same-1", "same", START, 7.25, "m1"),
    ]


def feed() -> list[Transaction]:
    """A few thousand transactions in (event_time, event_id) order, then a few late ones (older than their card's latest)."""
    ordered = sorted([*synthetic.transactions(SYNTHETIC, 3000), *edge_cases()], key=lambda t: (t.event_time, t.event_id))
    rng = random.Random(11)
    late = [
        t.model_copy(update={"event_id": f"late-{i}", "event_time": t.event_time - timedelta(hours=rng.uniform(0, 200))})
        for i, t in enumerate(rng.sample(ordered[1000:], 40))
    ]
    return ordered + late


def add_in_memory(history: CardHistory, t: Transaction) -> FeatureValues:
    return history.add(t.card_id, t.event_time, t.amount, t.merchant_id, event_id=t.event_id)


def add_in_redis(history: RedisCardHistory, t: Transaction) -> FeatureValues:
    return history.add(t.card_id, t.event_time, t.amount, t.merchant_id, event_id=t.event_id)


def mismatches(expected: FeatureValues, got: FeatureValues) -> list[tuple[str, object, object]]:
    assert set(got) == {f.name for f in CARD_FEATURES}
    return [(name, value, got[name]) for name, value in expected.items() if not same(value, got[name])]


def same(expected: object, got: object) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    assert type(expected) is type(got) or {type(expected), type(got)} <= {int, float}
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=0.0)  # type: ignore[arg-type]


def test_every_call_gives_card_history_s_features(client: redis.Redis) -> None:
    transactions = feed()
    memory, shared = CardHistory(), RedisCardHistory(client)
    wrong, busiest = [], {f.name: 0 for f in CARD_FEATURES if f.kind == "count"}
    for t in transactions:
        expected, got = add_in_memory(memory, t), add_in_redis(shared, t)
        wrong += [(t.event_id, *m) for m in mismatches(expected, got)]
        busiest = {name: max(n, got[name]) for name, n in busiest.items()}  # type: ignore[type-var]
        if t.event_id in ("ties-after-1h", "zero-3", "new-0", "same-1"):
            assert got == expected, t.event_id  # the boundary cases exactly
    assert wrong == []
    # the comparison covered busy windows and the boundaries, not only first transactions
    assert busiest["tx_count_7d"] >= 10 and busiest["tx_count_1h"] >= 3, busiest
    keys = client.keys("edgelake:card:*")
    assert len(keys) == 3 * len({t.card_id for t in transactions})


def test_two_replicas_share_the_history(client: redis.Redis) -> None:
    transactions = feed()
    memory = CardHistory()
    replicas = [RedisCardHistory(redis.Redis.from_url(_url(client))) for _ in range(2)]
    wrong = []
    for i, t in enumerate(transactions):
        expected, got = add_in_memory(memory, t), add_in_redis(replicas[i % 2], t)
        wrong += [(t.event_id, *m) for m in mismatches(expected, got)]
    assert wrong == []


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_a_repeated_event_id_is_not_counted_again(client: redis.Redis) -> None:
    shared, memory = RedisCardHistory(client), CardHistory()
    first = transaction("e-1", "c", START, 10.0, "m1")
    second = transaction("e-2", "c", START + timedelta(minutes=5), 30.0, "m2")
    assert add_in_redis(shared, first) == add_in_memory(memory, first)
    again = add_in_redis(shared, first)  # a retry, on the same or another replica
    assert (again["tx_count_1h"], again["amount_sum_7d"], again["amount_to_card_mean"]) == (1, 10.0, 1.0)
    assert add_in_redis(RedisCardHistory(client), first)["tx_count_7d"] == 1
    after = add_in_redis(shared, second)
    assert after == add_in_memory(memory, second)  # as if the retries never came
    assert (after["tx_count_1h"], after["amount_sum_1h"], after["amount_to_card_mean"]) == (2, 40.0, 1.5)
    assert after["seconds_since_previous"] == 300.0
    assert add_in_redis(shared, second) == add_in_memory(memory, second)  # both ignore the repeat alike
    # without an event id nothing is deduplicated
    for _ in range(2):
        shared.add("anonymous", START, 1.0, "m1")
    assert shared.add("anonymous", START, 1.0, "m1")["tx_count_1h"] == 3


def test_a_card_s_keys_expire(client: redis.Redis) -> None:
    RedisCardHistory(client).add("idle", START, 5.0, "m1", event_id="i-1")
    keys = RedisCardHistory(client).keys("idle")
    ttls = [client.pttl(key) for key in keys]
    assert all(timedelta(days=8) - timedelta(minutes=1) < timedelta(milliseconds=ttl) <= timedelta(days=8) for ttl in ttls), ttls

    short = RedisCardHistory(client, prefix="short:", ttl=timedelta(milliseconds=300))
    short.add("idle", START, 5.0, "m1", event_id="i-1")
    assert client.exists(*short.keys("idle")) == 3
    time.sleep(0.2)
    short.add("idle", START + timedelta(days=1), 5.0, "m1")  # a new add renews every key's time to live
    time.sleep(0.2)
    assert client.exists(*short.keys("idle")) == 3
    time.sleep(0.3)
    assert client.exists(*short.keys("idle")) == 0
    with pytest.raises(ValueError):
        RedisCardHistory(client, ttl=timedelta(0))
