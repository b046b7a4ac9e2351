"""Synthetic card transactions with injected, labelled fraud: a seeded, reproducible live feed.

Each card has a home country, a typical spending level, favourite merchants, an activity
rate and a channel mix. Some cards are compromised for a short episode of one of three
fraud patterns: a velocity burst, a geo jump to a far-away country, or unusual amounts at
merchants new to the card. Amounts are in the card's billing (home) currency.

The feed is in non-decreasing ``event_time`` order and does not depend on how many events
are asked for, so ``transactions(config, n)`` is a prefix of ``transactions(config, N)``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from edgelake.contracts import Channel, FraudLabel, Transaction

# country -> (currency, region, share of merchants and cardholders)
COUNTRIES: dict[str, tuple[str, str, float]] = {
    "US": ("USD", "americas", 30), "CA": ("CAD", "americas", 5), "MX": ("MXN", "americas", 4),
    "BR": ("BRL", "americas", 5), "GB": ("GBP", "europe", 8), "DE": ("EUR", "europe", 8),
    "FR": ("EUR", "europe", 6), "ES": ("EUR", "europe", 4), "IT": ("EUR", "europe", 4),
    "PL": ("PLN", "europe", 3), "SE": ("SEK", "europe", 2), "JP": ("JPY", "asia", 5),
    "KR": ("KRW", "asia", 2), "IN": ("INR", "asia", 4), "SG": ("SGD", "asia", 2),
    "AU": ("AUD", "oceania", 3), "ZA": ("ZAR", "africa", 2), "NG": ("NGN", "africa", 2),
    "AE": ("AED", "middle_east", 2),
}
# merchant category -> (amount relative to the card's typical spend, share of merchants)
CATEGORIES: dict[str, tuple[float, float]] = {
    "grocery": (1.0, 20), "restaurants": (0.9, 18), "fuel": (1.2, 10), "coffee_shops": (0.25, 10),
    "online_retail": (1.5, 10), "transport": (0.4, 8), "pharmacy": (0.7, 6), "entertainment": (1.1, 6),
    "atm_cash": (2.5, 5), "electronics": (4.0, 3), "travel": (6.0, 3), "jewelry": (5.0, 1),
}
HIGH_RISK = frozenset({"electronics", "jewelry", "online_retail"})
# fraud pattern -> (fewest, most transactions, shortest, longest seconds between them)
PATTERNS: dict[str, tuple[int, int, float, float]] = {
    "velocity": (3, 7, 30.0, 600.0),
    "geo_jump": (1, 3, 600.0, 7200.0),
    "unusual_amount": (1, 2, 300.0, 21600.0),
}
MEAN_EPISODE = sum((lo + hi) / 2 for lo, hi, _, _ in PATTERNS.values()) / len(PATTERNS)
NEW_MERCHANT_RATE = 0.03  # legit purchases at a local merchant outside the card's favourites
TRAVEL_RATE = 0.005  # legit purchases at any merchant in the world


@dataclass(frozen=True)
class SyntheticConfig:
    """The world to simulate: its size, start, fraud rate and when labels become known."""

    seed: int = 7
    cards: int = 2000
    merchants: int = 500
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    fraud_rate: float = 0.01
    label_delay: tuple[timedelta, timedelta] = (timedelta(hours=1), timedelta(days=7))

    def __post_init__(self) -> None:
        if self.cards < 1 or self.merchants < 1:
            raise ValueError("cards and merchants must be at least 1")
        if not 0 <= self.fraud_rate < 1:
            raise ValueError("fraud_rate must be in [0, 1)")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not timedelta(0) < self.label_delay[0] <= self.label_delay[1]:
            raise ValueError("label_delay must be (shortest, longest) with 0 < shortest <= longest")


@dataclass(frozen=True, slots=True)
class _Merchant:
    merchant_id: str
    category: str
    country: str
    terminal_id: str


@dataclass(slots=True)
class _Card:
    card_id: str
    currency: str
    log_amount: float  # mean of the log of a typical purchase
    spread: float
    rate: float  # transactions per second
    ecom_share: float
    favourites: list[_Merchant]
    local: list[_Merchant]
    far: list[_Merchant]
    pattern: str = ""
    fraud_left: int = 0


class _World:
    """Merchants and cards drawn from one seeded generator."""

    def __init__(self, config: SyntheticConfig, rng: random.Random) -> None:
        self.rng = rng
        countries, categories = list(COUNTRIES), list(CATEGORIES)
        home_of = rng.choices(countries, [COUNTRIES[c][2] for c in countries], k=config.merchants)
        kind_of = rng.choices(categories, [CATEGORIES[c][1] for c in categories], k=config.merchants)
        self.merchants = [
            _Merchant(f"m{i:06d}", kind_of[i], home_of[i], f"t{i:06d}") for i in range(config.merchants)
        ]
        self.by_country = {c: [m for m in self.merchants if m.country == c] for c in countries}
        regions = {region for _, region, _ in COUNTRIES.values()}
        self.far_from = {
            r: [m for m in self.merchants if COUNTRIES[m.country][1] != r] or self.merchants for r in regions
        }
        self.high_risk = [m for m in self.merchants if m.category in HIGH_RISK] or self.merchants
        self.cards = [self._card(i) for i in range(config.cards)]

    def _card(self, index: int) -> _Card:
        rng = self.rng
        home = rng.choice(self.merchants).country
        local = self.by_country[home]
        return _Card(
            card_id=f"c{index:07d}",
            currency=COUNTRIES[home][0],
            log_amount=rng.gauss(3.2, 0.6),
            spread=rng.uniform(0.3, 0.8),
            rate=min(20.0, math.exp(rng.gauss(0.4, 0.7))) / 86400,
            ecom_share=rng.betavariate(2, 6),
            favourites=rng.sample(local, min(len(local), rng.randint(4, 20))),
            local=local,
            far=self.far_from[COUNTRIES[home][1]],
        )

    def legit(self, card: _Card) -> tuple[_Merchant, float, float]:
        """A purchase in the card's habits: merchant, amount and share of ecom."""
        rng, roll = self.rng, self.rng.random()
        if roll < TRAVEL_RATE:
            merchant = rng.choice(self.merchants)
        elif roll < TRAVEL_RATE + NEW_MERCHANT_RATE:
            merchant = rng.choice(card.local)
        else:  # favourites are skewed: the first few carry most purchases
            merchant = card.favourites[int(len(card.favourites) * rng.random() ** 2)]
        amount = math.exp(rng.gauss(card.log_amount, card.spread)) * CATEGORIES[merchant.category][0]
        return merchant, amount, card.ecom_share

    def fraud(self, card: _Card) -> tuple[_Merchant, float, float]:
        """A purchase of the card's current fraud pattern: merchant, amount and share of ecom."""
        rng, typical = self.rng, math.exp(card.log_amount)
        if card.pattern == "velocity":
            return rng.choice(card.local), typical * rng.uniform(1.5, 5.0), 0.6
        if card.pattern == "geo_jump":
            return rng.choice(card.far), typical * rng.uniform(2.0, 6.0), 0.1
        return rng.choice(self.high_risk), typical * rng.uniform(8.0, 30.0), 0.8


def _channel(rng: random.Random, category: str, ecom_share: float) -> Channel:
    if category == "atm_cash":
        return "atm"
    if category == "online_retail":
        return "ecom"
    roll = rng.random()
    return "ecom" if roll < ecom_share else "moto" if roll < ecom_share + 0.01 else "pos"


def _feed(config: SyntheticConfig) -> Iterator[tuple[Transaction, bool]]:
    """The endless feed of transactions, each with whether it is fraud."""
    rng = random.Random(config.seed)
    world = _World(config, rng)
    episode_chance = config.fraud_rate / ((1 - config.fraud_rate) * MEAN_EPISODE)
    heap = [(rng.expovariate(card.rate), i) for i, card in enumerate(world.cards)]
    heapq.heapify(heap)
    index = 0
    while True:
        seconds, i = heap[0]
        card = world.cards[i]
        is_fraud = card.fraud_left > 0
        if is_fraud:
            merchant, amount, ecom_share = world.fraud(card)
            card.fraud_left -= 1
        else:
            merchant, amount, ecom_share = world.legit(card)
            if rng.random() < episode_chance:
                card.pattern = rng.choice(list(PATTERNS))
                card.fraud_left = rng.randint(*PATTERNS[card.pattern][:2])
        channel = _channel(rng, merchant.category, ecom_share)
        if channel == "atm":
            amount = max(20.0, 20.0 * round(amount / 20.0))
        if card.fraud_left:
            gap = rng.uniform(*PATTERNS[card.pattern][2:])
        else:
            gap = rng.expovariate(card.rate)
        heapq.heapreplace(heap, (seconds + gap, i))
        yield Transaction(
            event_id=f"syn-{config.seed}-{index:09d}",
            event_time=config.start + timedelta(seconds=seconds),
            card_id=card.card_id,
            merchant_id=merchant.merchant_id,
            merchant_category=merchant.category,
            amount=round(amount, 2),
            currency=card.currency,
            country=merchant.country,
            channel=channel,
            terminal_id=merchant.terminal_id if channel in ("pos", "atm") else None,
        ), is_fraud
        index += 1


def transactions(config: SyntheticConfig, count: int) -> Iterator[Transaction]:
    """The first ``count`` transactions of the feed, in non-decreasing event time."""
    for transaction, _ in islice(_feed(config), count):
        yield transaction


def labels(config: SyntheticConfig, count: int) -> Iterator[FraudLabel]:
    """One label per transaction of ``transactions(config, count)``, in the same order.

    A fraud is charged back between the configured shortest and longest delay; a
    legitimate transaction is confirmed by an analyst after the longest delay.
    """
    rng = random.Random(f"labels-{config.seed}")
    shortest, longest = (delay.total_seconds() for delay in config.label_delay)
    for transaction, is_fraud in islice(_feed(config), count):
        delay = math.exp(rng.uniform(math.log(shortest), math.log(longest))) if is_fraud else longest
        yield FraudLabel(
            event_id=f"{transaction.event_id}-label",
            event_time=transaction.event_time + timedelta(seconds=delay),
            transaction_id=transaction.event_id,
            card_id=transaction.card_id,
            is_fraud=is_fraud,
            source="chargeback" if is_fraud else "analyst",
        )
