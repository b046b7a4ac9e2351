"""``InputSpec.matrix`` on its own: the fraud model's input matrix from ``INPUT_COLUMNS``, in ``InputSpec.names`` order.

Its parity with the batch path (Spark's columns) is in ``test_features.py``; how a spec is decided from data, in
``test_input_profile.py``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from edgelake.lake.features.definitions import CARD_FEATURES
from edgelake.lake.features.model_inputs import BUILT_IN_INPUTS, CHANNELS, CategoricalInput, InputSpec, NumericInput

SPEC = InputSpec(
    numeric=(NumericInput("V1", fill=0.5, indicator=False), NumericInput("V2", fill=-3.0, indicator=True)),
    categorical=(CategoricalInput("merchant_category", ("grocery", "travel")), CategoricalInput("device", ("mobile",))),
    set_aside={"V9": "constant (1 in every row)"},
)


def one_row(**overrides: Any) -> dict[str, list[Any]]:
    """``INPUT_COLUMNS`` of one transaction at 06:00 UTC with distinct values, some changed by ``overrides``."""
    columns: dict[str, Any] = {
        "amount": 99.0, "event_time": datetime(2025, 3, 4, 6, tzinfo=UTC), "channel": "ecom",
        "merchant_category": "travel", "country": "FR",
        "attributes": {"V1": 1.0, "V2": 2.0, "V9": 1.0}, "categories": {"device": "mobile", "browser": "x"},
        **{f.name: float(10 * (i + 1)) for i, f in enumerate(CARD_FEATURES)},
    }
    return {name: [value] for name, value in (columns | overrides).items()}


def named(matrix: np.ndarray, spec: InputSpec = SPEC) -> dict[str, float]:
    assert matrix.shape == (1, len(spec.names))
    return dict(zip(spec.names, matrix[0].tolist(), strict=True))


def test_the_names_are_the_attributes_then_the_built_in_inputs_indicators_and_one_hots() -> None:
    assert SPEC.names == (
        "V1", "V2", *BUILT_IN_INPUTS, "V2_missing",
        "merchant_category=grocery", "merchant_category=travel", "merchant_category=other", "merchant_category=missing",
        "device=mobile", "device=other", "device=missing",
    )
    assert len(set(SPEC.names)) == len(SPEC.names)


def test_the_inputs_follow_the_names() -> None:
    columns = one_row()
    values = named(SPEC.matrix(columns))
    assert (values["V1"], values["V2"], values["V2_missing"]) == (1.0, 2.0, 0.0)
    assert "V9" not in values  # set aside
    assert values["log_amount"] == pytest.approx(math.log1p(99.0))
    assert (values["hour_sin"], values["hour_cos"]) == pytest.approx((1.0, 0.0), abs=1e-6)  # 06:00
    for f in CARD_FEATURES:
        if f.kind in ("count", "amount_sum", "distinct_merchants"):
            assert values[f"log1p_{f.name}"] == pytest.approx(math.log1p(columns[f.name][0]), rel=1e-6)
    assert values["log1p_seconds_since_previous"] == pytest.approx(math.log1p(columns["seconds_since_previous"][0]))
    assert values["is_first_transaction"] == 0.0
    assert values["amount_to_card_mean"] == pytest.approx(columns["amount_to_card_mean"][0])
    assert [values[n] for n in SPEC.names if n.startswith("merchant_category=")] == [0.0, 1.0, 0.0, 0.0]
    assert [values[n] for n in SPEC.names if n.startswith("device=")] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("channel", [*CHANNELS, None])
def test_the_channel_is_one_hot(channel: str | None) -> None:
    values = named(SPEC.matrix(one_row(channel=channel)))
    assert {c: values[f"channel_{c}"] for c in CHANNELS} == {c: float(c == channel) for c in CHANNELS}


def test_a_missing_attribute_takes_its_fill_and_its_indicator_says_so() -> None:
    values = named(SPEC.matrix(one_row(attributes={})))
    assert (values["V1"], values["V2"], values["V2_missing"]) == (0.5, -3.0, 1.0)


def test_unknown_and_missing_categories_have_their_own_inputs() -> None:
    values = named(SPEC.matrix(one_row(merchant_category="casino", categories={})))
    assert [values[n] for n in SPEC.names if n.startswith("merchant_category=")] == [0.0, 0.0, 1.0, 0.0]
    assert [values[n] for n in SPEC.names if n.startswith("device=")] == [0.0, 0.0, 1.0]
    values = named(SPEC.matrix(one_row(merchant_category=None, categories={"device": "tablet"})))
    assert [values[n] for n in SPEC.names if n.startswith("merchant_category=")] == [0.0, 0.0, 0.0, 1.0]
    assert [values[n] for n in SPEC.names if n.startswith("device=")] == [0.0, 1.0, 0.0]


def test_a_spec_without_attributes_reads_the_built_in_inputs_only() -> None:
    assert named(InputSpec().matrix(one_row()), InputSpec()).keys() == set(BUILT_IN_INPUTS)


def test_a_spec_survives_its_file(tmp_path: Path) -> None:
    assert InputSpec.read(SPEC.write(tmp_path / "inputs.json")) == SPEC
    (tmp_path / "other.json").write_text('{"numeric": []}')
    with pytest.raises(ValueError, match="not an input spec"):
        InputSpec.read(tmp_path / "other.json")


def test_nulls_become_neutral_values_and_the_first_transaction_is_flagged() -> None:
    nulls = {"seconds_since_previous": None, "amount_to_card_mean": None}
    values = named(SPEC.matrix(one_row(**nulls)))
    assert (values["log1p_seconds_since_previous"], values["is_first_transaction"]) == (0.0, 1.0)
    assert values["amount_to_card_mean"] == 1.0
    as_arrays = {name: np.array(v, dtype=object) for name, v in one_row(**nulls).items()}  # None inside object arrays
    np.testing.assert_array_equal(SPEC.matrix(as_arrays), SPEC.matrix(one_row(**nulls)))
    as_nan = {name: [np.nan] for name in nulls}
    np.testing.assert_array_equal(SPEC.matrix(one_row(**as_nan)), SPEC.matrix(one_row(**nulls)))


def test_every_form_of_event_time_is_utc() -> None:
    aware = datetime(2025, 3, 4, 18, 30, tzinfo=UTC)
    forms = [
        [aware],
        [aware.astimezone(ZoneInfo("Asia/Tokyo"))],
        [aware.replace(tzinfo=None)],  # naive, as UTC
        np.array(["2025-03-04T18:30"], dtype="datetime64[ns]"),  # Spark's toPandas
        pd.Series([pd.Timestamp(aware)]).to_numpy(),
    ]
    rows = [named(SPEC.matrix(one_row() | {"event_time": form})) for form in forms]
    angle = 2 * math.pi * 18.5 / 24
    for values in rows:
        assert (values["hour_sin"], values["hour_cos"]) == pytest.approx((math.sin(angle), math.cos(angle)), abs=1e-6)


def test_a_column_of_many_transactions_gives_one_row_each() -> None:
    columns = {name: value * 3 for name, value in one_row().items()}
    columns["seconds_since_previous"] = [None, 5.0, None]
    columns["attributes"] = [{"V2": 7.0}, {}, {"V1": 4.0}]
    matrix = SPEC.matrix(columns)
    assert matrix.shape == (3, len(SPEC.names))
    assert matrix[:, SPEC.names.index("is_first_transaction")].tolist() == [1.0, 0.0, 1.0]
    assert matrix[:, SPEC.names.index("V1")].tolist() == [0.5, 0.5, 4.0]
    assert matrix[:, SPEC.names.index("V2_missing")].tolist() == [0.0, 1.0, 1.0]
