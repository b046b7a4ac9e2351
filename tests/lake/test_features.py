"""``lake.features``: one definition of each card feature, two computations. Spark's batch gold table
(``batch``) and ``CardHistory`` online (``online``) give the same card features, and ``InputSpec.matrix`` the same
model inputs from either path's columns (``model_inputs``), for the same transactions.

The parity lake holds synthetic cards with many transactions each, hand-made edge cases
(same-instant ties, transactions exactly one window length apart, zero amounts, a card
with a single transaction) and a slice of ULB (one card per transaction, PCA attributes).
Online, transactions are fed in ``(event_time, event_id)`` order. Every feature of every
transaction must equal its batch value, except where ``CardHistory`` documents it cannot:
a transaction followed by a same-instant one of its card sees, online, only the ties
added before it; those are checked against hand-computed values instead.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from edgelake.contracts import Transaction
from edgelake.ingest.sources import synthetic, ulb
from edgelake.lake.catalog import Lake
from edgelake.lake.features.definitions import CARD_FEATURES, WINDOWS, FeatureValues
from edgelake.lake.features.model_inputs import CategoricalInput, InputSpec, NumericInput, arrow_columns, online_input_columns
from edgelake.lake.features.online import CardHistory
from support import append_silver

START = datetime(2025, 1, 1, tzinfo=UTC)
TIE = START + timedelta(days=2, hours=3)  # the instant of the "ties" card's three same-instant transactions
SYNTHETIC = synthetic.SyntheticConfig(seed=5, cards=6, merchants=40, fraud_rate=0.1, start=START)
ULB_ROWS = 1500


# The inputs of a model that learnt from these transactions: the ULB set's attributes, the edge cases' own, and categories.
SPEC = InputSpec(
    numeric=(*(NumericInput(f"V{i}", fill=0.1 * i, indicator=True) for i in range(1, 29)), NumericInput("score", 2.0, indicator=True)),
    categorical=(CategoricalInput("merchant_category", ("grocery", "travel")), CategoricalInput("device", ("mobile", "tablet"))),
)


def transaction(event_id: str, card: str, when: datetime, amount: float, merchant: str = "m1", channel: str = "pos") -> Transaction:
    """One of the edge cases, with a free-form attribute and category on some."""
    other = len(event_id) % 3 == 0
    return Transaction(
        event_id=event_id, event_time=when, card_id=card, merchant_id=merchant, merchant_category="grocery",
        amount=amount, currency="EUR", channel=channel,  # type: ignore[arg-type]
        attributes={"score": float(len(event_id))} if other else {},
        categories={"device": "tablet" if other else "desktop"} if len(event_id) % 2 == 0 else {},
    )


def edge_cases() -> list[Transaction]:
    """Cards made to hit each boundary of the definitions."""
    return [
        transaction("ties-0", "ties", TIE - timedelta(minutes=30), 10.0, "m1"),
        transaction("ties-1a", "ties", TIE, 5.0, "m1"),  # same instant: a, b and c
        transaction("ties-1b", "ties", TIE, 0.0, "m2"),
        transaction("ties-1c", "ties", TIE, 20.0, "m2", "ecom"),
        *(
            transaction(f"ties-after-{name}", "ties", TIE + span, 1.0, f"m-{name}")  # exactly one window length later
            for name, span in WINDOWS.items()
        ),
        transaction("zero-0", "zero", START + timedelta(hours=1), 0.0),  # card mean 0: no ratio
        transaction("zero-1", "zero", START + timedelta(hours=2), 0.0),
        transaction("zero-2", "zero", START + timedelta(hours=3), 12.5, "m2"),
        transaction("zero-3", "zero", START + timedelta(hours=3, microseconds=1), 0.0, "m3", "atm"),
        transaction("new-0", "new", START + timedelta(days=3), 42.0, "m9", "moto"),  # a card's only transaction
    ]


class Parity(NamedTuple):
    transactions: list[Transaction]  # in (event_time, event_id) order
    batch: pd.DataFrame  # gold_card_features, indexed by event_id
    online: dict[str, FeatureValues]  # CardHistory.add's values, by event_id
    batch_inputs: pa.Table  # batch_input_columns from Spark, as Arrow (as training reads them)


@pytest.fixture(scope="module")
def parity(spark, ulb_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Parity:
    from edgelake.lake.features.model_inputs import batch_input_columns
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import read_table

    lake = str(tmp_path_factory.mktemp("parity") / "lake")
    synthetic_part = list(synthetic.transactions(SYNTHETIC, 600))
    ulb_part = list(ulb.transactions(ulb_csv, START, ULB_ROWS))
    append_silver(lake, synthetic_part[:300] + edge_cases(), partition=0)
    append_silver(lake, synthetic_part[300:] + ulb_part, partition=1)
    assert build_card_features(spark, Lake(lake)).changed

    ordered = sorted([*synthetic_part, *edge_cases(), *ulb_part], key=lambda t: (t.event_time, t.event_id))
    history = CardHistory()
    online = {t.event_id: history.add(t.card_id, t.event_time, t.amount, t.merchant_id, t.event_id) for t in ordered}
    batch = Lake(lake).open("gold_card_features").to_pyarrow_table().to_pandas().set_index("event_id")
    inputs = batch_input_columns(read_table(spark, Lake(lake), "silver_transactions"), read_table(spark, Lake(lake), "gold_card_features"))
    return Parity(ordered, batch, online, inputs.toArrow())


def later_ties(transactions: list[Transaction]) -> set[str]:
    """Event ids of transactions followed, in (event_time, event_id) order, by a same-instant one of their card."""
    groups = Counter((t.card_id, t.event_time) for t in transactions)
    seen: Counter[tuple[str, datetime]] = Counter()
    followed = set()
    for t in transactions:
        seen[(t.card_id, t.event_time)] += 1
        if seen[(t.card_id, t.event_time)] < groups[(t.card_id, t.event_time)]:
            followed.add(t.event_id)
    return followed


def same(batch: Any, online: Any) -> bool:
    """Equal values: nulls alike (NaN in the gold frame, None online), floats within 1e-9 relative."""
    if online is None or batch is None or (isinstance(batch, float) and math.isnan(batch)):
        return online is None and (batch is None or math.isnan(batch))
    return math.isclose(float(batch), float(online), rel_tol=1e-9, abs_tol=0.0)


def test_online_card_features_equal_the_batch_ones(parity: Parity) -> None:
    followed = later_ties(parity.transactions)
    assert followed == {"ties-1a", "ties-1b"}  # the only ties fed here; they are checked by hand below
    assert set(parity.batch.index) == set(parity.online)
    mismatches = [
        (event_id, feature.name, parity.batch.at[event_id, feature.name], values[feature.name])
        for event_id, values in parity.online.items()
        if event_id not in followed
        for feature in CARD_FEATURES
        if not same(parity.batch.at[event_id, feature.name], values[feature.name])
    ]
    assert mismatches == []
    # the comparison covered busy windows, not only first transactions
    assert parity.batch["tx_count_7d"].max() >= 10 and parity.batch["tx_count_1h"].max() >= 3
    assert parity.batch["distinct_merchants_7d"].max() >= 4


def test_the_edge_cases_have_the_defined_values(parity: Parity) -> None:
    online = parity.online
    # exactly one window length after the ties, they are out of the window; the later "after" ones are in
    inside = {name: online[f"ties-after-{name}"] for name in WINDOWS}
    assert {name: (v[f"tx_count_{name}"], v[f"amount_sum_{name}"]) for name, v in inside.items()} == {
        "1h": (1, 1.0), "24h": (2, 2.0), "7d": (3, 3.0)
    }
    assert inside["1h"]["tx_count_24h"] == 5
    assert [online[f"zero-{i}"]["amount_to_card_mean"] for i in range(4)] == [None, None, pytest.approx(3.0), 0.0]
    assert online["zero-3"]["seconds_since_previous"] == 1e-6
    assert online["new-0"] == {
        **{f"tx_count_{w}": 1 for w in WINDOWS}, **{f"amount_sum_{w}": 42.0 for w in WINDOWS},
        "distinct_merchants_24h": 1, "distinct_merchants_7d": 1, "seconds_since_previous": None, "amount_to_card_mean": 1.0,
    }


def test_an_earlier_same_instant_tie_sees_only_the_ties_added_before_it(parity: Parity) -> None:
    first, second, last = (parity.online[f"ties-1{x}"] for x in "abc")
    batch = parity.batch.loc["ties-1a"]
    # batch: all three ties and the transaction 30 minutes before are in every window, for each of them
    assert (batch["tx_count_1h"], batch["amount_sum_1h"], batch["distinct_merchants_24h"]) == (4, 35.0, 2)
    assert batch["amount_to_card_mean"] == pytest.approx(5.0 / (35.0 / 4), rel=1e-12)
    # online: each sees the earlier transaction and the ties added so far
    assert [v["tx_count_1h"] for v in (first, second, last)] == [2, 3, 4]
    assert [v["amount_sum_1h"] for v in (first, second, last)] == [15.0, 15.0, 35.0]
    assert [v["distinct_merchants_24h"] for v in (first, second, last)] == [1, 2, 2]
    assert first["amount_to_card_mean"] == pytest.approx(5.0 / 7.5, rel=1e-12)
    assert [v["seconds_since_previous"] for v in (first, second, last)] == [1800.0, 0.0, 0.0]
    assert [parity.batch.at[f"ties-1{x}", "seconds_since_previous"] for x in "abc"] == [1800.0, 0.0, 0.0]


def test_a_repeated_event_id_changes_nothing(parity: Parity) -> None:
    """Every transaction sent twice in a row (a retry) gives, the first time, exactly the values of a single feed."""
    history = CardHistory()
    for t in parity.transactions:
        first = history.add(t.card_id, t.event_time, t.amount, t.merchant_id, t.event_id)
        again = history.add(t.card_id, t.event_time, t.amount, t.merchant_id, t.event_id)
        assert first == parity.online[t.event_id], t.event_id
        assert {k: v for k, v in again.items() if k != "seconds_since_previous"} == {
            k: v for k, v in first.items() if k != "seconds_since_previous"
        }, t.event_id
        assert again["seconds_since_previous"] == 0.0  # the card now holds a transaction at its instant: itself


def test_a_repeated_event_id_is_counted_once() -> None:
    history = CardHistory()
    first = history.add("c", START, 10.0, "m1", "e-1")
    assert history.add("c", START, 10.0, "m1", "e-1") == {**first, "seconds_since_previous": 0.0}
    later = history.add("c", START + timedelta(minutes=5), 30.0, "m2", "e-2")
    assert (later["tx_count_1h"], later["amount_sum_1h"], later["distinct_merchants_24h"], later["seconds_since_previous"]) == (2, 40.0, 2, 300.0)
    again = history.add("c", START, 10.0, "m1", "e-1")  # a late retry: its windows end at its own time, the mean covers both
    assert (again["tx_count_7d"], again["amount_sum_7d"], again["amount_to_card_mean"], again["seconds_since_previous"]) == (1, 10.0, 0.5, 0.0)
    assert history.add("c", START + timedelta(minutes=6), 1.0, "m1", "e-3")["tx_count_1h"] == 3
    # no event id, or one past the kept 7 days, is counted again
    assert [history.add("anon", START, 1.0, "m1")["tx_count_1h"] for _ in range(2)] == [1, 2]
    history.add("c", START + timedelta(days=8), 1.0, "m1", "e-4")
    assert history.add("c", START, 10.0, "m1", "e-1")["amount_to_card_mean"] == pytest.approx(10.0 / (52.0 / 5))


def test_model_inputs_are_equal_both_ways(parity: Parity) -> None:
    followed = later_ties(parity.transactions)
    kept = [t for t in parity.transactions if t.event_id not in followed]
    row_of = {event_id: i for i, event_id in enumerate(parity.batch_inputs.column("event_id").to_pylist())}
    batch = parity.batch_inputs.take([row_of[t.event_id] for t in kept]).combine_chunks().to_batches()[0]
    batch_matrix = SPEC.matrix(arrow_columns(batch))
    online_matrix = np.vstack([SPEC.matrix(online_input_columns([t], [parity.online[t.event_id]])) for t in kept])
    assert batch_matrix.shape == (len(kept), len(SPEC.names)) and batch_matrix.dtype == np.float32
    np.testing.assert_allclose(online_matrix, batch_matrix, rtol=1e-6, atol=1e-6)
    assert np.isfinite(batch_matrix).all()
    ulb_rows = np.array([t.event_id.startswith("ulb-") for t in kept])
    assert ulb_rows.sum() == ULB_ROWS and np.abs(batch_matrix[ulb_rows, :28]).sum(axis=1).min() > 0
    assert batch_matrix[ulb_rows, SPEC.names.index("V1_missing")].max() == 0 and batch_matrix[~ulb_rows, SPEC.names.index("V1_missing")].min() == 1
    # the edge cases' own attribute and categories, and the values no vocabulary holds
    assert {*batch_matrix[:, SPEC.names.index("score_missing")]} == {0.0, 1.0}
    for name in ("device=tablet", "device=other", "device=missing", "merchant_category=grocery", "merchant_category=other"):
        assert batch_matrix[:, SPEC.names.index(name)].max() == 1.0, name

