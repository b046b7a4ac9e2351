"""``InputProfile``: a model's inputs decided from its training rows, and the same matrix from Arrow batches and from dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from edgelake.lake.features.definitions import CARD_FEATURES
from edgelake.lake.features.input_profile import MIN_VALUE_ROWS, InputProfile
from edgelake.lake.features.model_inputs import InputSpec, arrow_columns

ROWS = 400


def transaction(i: int) -> tuple[dict[str, float], dict[str, str]]:
    """Attributes and categories of row ``i``: ``present`` always there, ``sparse`` in one row of four, ``same`` always 5;
    ``device`` mostly ``mobile``, ``id`` unique, ``mail`` missing in one row of four, ``rare`` in a few rows only."""
    attributes = {"present": float(i % 7), "same": 5.0, **({"sparse": float(i)} if i % 4 == 0 else {})}
    categories = {"device": "tablet" if i % 5 == 0 else "mobile", "id": f"tx-{i}", **({"mail": "example.org"} if i % 4 else {})}
    if i < MIN_VALUE_ROWS - 1:
        categories["rare"] = "yes"
    return attributes, categories


def rows(count: int = ROWS) -> list[tuple[dict[str, float], dict[str, str]]]:
    return [transaction(i) for i in range(count)]


def batch(of: list[tuple[dict[str, float], dict[str, str]]]) -> pa.RecordBatch:
    """``batch_input_columns`` rows, as training reads them back from Spark's Parquet files."""
    n = len(of)
    return pa.RecordBatch.from_pydict({
        "event_id": [f"tx-{i}" for i in range(n)],
        "event_time": pa.array([datetime(2025, 1, 1) + timedelta(minutes=i) for i in range(n)], pa.timestamp("ns")),
        "amount": np.linspace(1, 500, n),
        "channel": ["pos", "ecom"] * (n // 2),
        "merchant_category": ["grocery" if i % 3 else "travel" for i in range(n)],
        "country": pa.nulls(n, pa.string()),
        "attributes": pa.array([list(a.items()) for a, _ in of], pa.map_(pa.string(), pa.float64())),
        "categories": pa.array([list(c.items()) for _, c in of], pa.map_(pa.string(), pa.string())),
        **{f.name: np.full(n, float(i + 1)) for i, f in enumerate(CARD_FEATURES)},
        "is_fraud": [False] * n,
    })


@pytest.fixture(scope="module")
def spec() -> InputSpec:
    profile = InputProfile()
    whole = batch(rows())
    for start in range(0, ROWS, 150):  # in batches, as training adds them
        profile.add(whole.slice(start, 150))
    assert profile.rows == ROWS
    return profile.spec()


def test_numeric_attributes_are_read_unless_constant_and_sparse_ones_get_an_indicator(spec: InputSpec) -> None:
    assert [(n.name, n.indicator) for n in spec.numeric] == [("present", False), ("sparse", True)]
    sparse = spec.numeric[1]
    assert sparse.fill == pytest.approx(np.mean([i for i in range(ROWS) if i % 4 == 0]))
    assert spec.set_aside["same"] == "constant (5 in every row)"


def test_categories_are_read_over_their_common_values_and_identifiers_set_aside(spec: InputSpec) -> None:
    vocabularies = {c.name: c.vocabulary for c in spec.categorical}
    assert vocabularies == {"merchant_category": ("grocery", "travel"), "device": ("mobile", "tablet"), "mail": ("example.org",)}
    assert spec.set_aside["country"] == "never present"
    assert spec.set_aside["id"].startswith(f"no value in {MIN_VALUE_ROWS} rows or more ({ROWS} distinct")
    assert spec.set_aside["rare"].startswith(f"no value in {MIN_VALUE_ROWS} rows or more")
    report = spec.report()
    assert report["count"] == len(spec.names) and report["missing_indicators"] == ["sparse"]
    assert report["categories"]["device"] == ["mobile", "tablet"] and set(report["set_aside"]) == {"same", "country", "id", "rare"}


def test_arrow_batches_and_online_dicts_give_the_same_matrix(spec: InputSpec) -> None:
    some = rows(60)
    arrow = arrow_columns(batch(some))
    online: dict[str, Any] = {name: list(values) if not isinstance(values, pa.Array) else None for name, values in arrow.items()}
    online["attributes"] = [a for a, _ in some]
    online["categories"] = [c for _, c in some]
    online["country"] = [None] * len(some)
    online["event_time"] = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(len(some))]
    from_arrow, from_dicts = spec.matrix(arrow), spec.matrix(online)
    np.testing.assert_array_equal(from_arrow, from_dicts)
    assert from_arrow[:, spec.names.index("sparse_missing")].tolist() == [float(i % 4 != 0) for i in range(len(some))]
    assert from_arrow[:, spec.names.index("mail=missing")].tolist() == [float(i % 4 == 0) for i in range(len(some))]
