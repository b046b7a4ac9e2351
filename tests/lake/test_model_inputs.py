"""``fraud_inputs`` on its own: the fraud model's input matrix from ``INPUT_COLUMNS``, in ``INPUT_NAMES`` order.

Its parity with the batch path (Spark's columns) is in ``test_features.py``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from edgelake.lake.features.definitions import CARD_FEATURES
from edgelake.lake.features.model_inputs import ATTRIBUTES, CHANNELS, INPUT_NAMES, fraud_inputs


def one_row(**overrides: Any) -> dict[str, list[Any]]:
    """``INPUT_COLUMNS`` of one transaction at 06:00 UTC with distinct values, some changed by ``overrides``."""
    columns: dict[str, Any] = {
        "amount": 99.0, "event_time": datetime(2025, 3, 4, 6, tzinfo=UTC), "channel": "ecom",
        **{name: float(i + 1) for i, name in enumerate(ATTRIBUTES)},
        **{f.name: float(10 * (i + 1)) for i, f in enumerate(CARD_FEATURES)},
    }
    return {name: [value] for name, value in (columns | overrides).items()}


def named(matrix: np.ndarray) -> dict[str, float]:
    assert matrix.shape == (1, len(INPUT_NAMES))
    return dict(zip(INPUT_NAMES, matrix[0].tolist(), strict=True))


def test_fraud_inputs_follow_input_names() -> None:
    columns = one_row()
    values = named(fraud_inputs(columns))
    assert len(set(INPUT_NAMES)) == len(INPUT_NAMES)
    assert [values[name] for name in ATTRIBUTES] == [float(i + 1) for i in range(len(ATTRIBUTES))]
    assert values["log_amount"] == pytest.approx(math.log1p(99.0))
    assert (values["hour_sin"], values["hour_cos"]) == pytest.approx((1.0, 0.0), abs=1e-6)  # 06:00
    for f in CARD_FEATURES:
        if f.kind in ("count", "amount_sum", "distinct_merchants"):
            assert values[f"log1p_{f.name}"] == pytest.approx(math.log1p(columns[f.name][0]), rel=1e-6)
    assert values["log1p_seconds_since_previous"] == pytest.approx(math.log1p(columns["seconds_since_previous"][0]))
    assert values["is_first_transaction"] == 0.0
    assert values["amount_to_card_mean"] == pytest.approx(columns["amount_to_card_mean"][0])


@pytest.mark.parametrize("channel", [*CHANNELS, None])
def test_the_channel_is_one_hot(channel: str | None) -> None:
    values = named(fraud_inputs(one_row(channel=channel)))
    assert {c: values[f"channel_{c}"] for c in CHANNELS} == {c: float(c == channel) for c in CHANNELS}


def test_nulls_become_neutral_values_and_the_first_transaction_is_flagged() -> None:
    nulls = {"V3": None, "seconds_since_previous": None, "amount_to_card_mean": None}
    values = named(fraud_inputs(one_row(**nulls)))
    assert values["V3"] == 0.0 and values["V2"] == 2.0
    assert (values["log1p_seconds_since_previous"], values["is_first_transaction"]) == (0.0, 1.0)
    assert values["amount_to_card_mean"] == 1.0
    as_arrays = {name: np.array(v, dtype=object) for name, v in one_row(**nulls).items()}  # None inside object arrays
    np.testing.assert_array_equal(fraud_inputs(as_arrays), fraud_inputs(one_row(**nulls)))
    as_nan = {name: [np.nan] for name in nulls}
    np.testing.assert_array_equal(fraud_inputs(one_row(**as_nan)), fraud_inputs(one_row(**nulls)))


def test_every_form_of_event_time_is_utc() -> None:
    aware = datetime(2025, 3, 4, 18, 30, tzinfo=UTC)
    forms = [
        [aware],
        [aware.astimezone(ZoneInfo("Asia/Tokyo"))],
        [aware.replace(tzinfo=None)],  # naive, as UTC
        np.array(["2025-03-04T18:30"], dtype="datetime64[ns]"),  # Spark's toPandas
        pd.Series([pd.Timestamp(aware)]).to_numpy(),
    ]
    rows = [named(fraud_inputs(one_row() | {"event_time": form})) for form in forms]
    angle = 2 * math.pi * 18.5 / 24
    for values in rows:
        assert (values["hour_sin"], values["hour_cos"]) == pytest.approx((math.sin(angle), math.cos(angle)), abs=1e-6)


def test_a_column_of_many_transactions_gives_one_row_each() -> None:
    columns = {name: value * 3 for name, value in one_row().items()}
    columns["seconds_since_previous"] = [None, 5.0, None]
    matrix = fraud_inputs(columns)
    assert matrix.shape == (3, len(INPUT_NAMES))
    assert matrix[:, INPUT_NAMES.index("is_first_transaction")].tolist() == [1.0, 0.0, 1.0]
