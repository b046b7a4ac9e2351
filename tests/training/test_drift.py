"""The training distributions a fraud version stores and the PSI of traffic against them, on numbers made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgelake.lake.features.model_inputs import WATCHED_FIELDS, InputSpec
from edgelake.training.drift import PSI_MAJOR, PSI_MODERATE, Bins, Categories, TrainingDistributions, bin_indices, psi

RNG = np.random.default_rng(19)


def counts(bins: Bins, values: np.ndarray) -> np.ndarray:
    """How many of ``values`` fall in each of ``bins``."""
    edges = np.array([bins.edges])
    return np.bincount(bin_indices(np.asarray(values, np.float64)[:, None], edges)[:, 0], minlength=len(bins.shares))


def test_a_sample_of_the_training_distribution_has_a_psi_near_zero() -> None:
    bins = Bins.of(RNG.lognormal(3.2, 0.6, 20_000))
    assert len(bins.shares) == 13 and sum(bins.shares) == pytest.approx(1.0)
    assert bins.shares[0] == 0 and bins.shares[-1] == 0  # below the minimum, above the maximum
    assert psi(np.array(bins.shares), counts(bins, RNG.lognormal(3.2, 0.6, 5_000))) < 0.02


def test_amounts_five_times_larger_have_a_major_psi() -> None:
    bins = Bins.of(np.log1p(RNG.lognormal(3.2, 0.6, 20_000)))
    shifted = np.log1p(5 * RNG.lognormal(3.2, 0.6, 5_000))
    assert psi(np.array(bins.shares), counts(bins, shifted)) > 4 * PSI_MAJOR
    slightly = np.log1p(1.1 * RNG.lognormal(3.2, 0.6, 5_000))
    assert psi(np.array(bins.shares), counts(bins, slightly)) < PSI_MODERATE


def test_a_constant_input_has_a_bin_of_its_own_value_and_one_on_each_side() -> None:
    bins = Bins.of(np.ones(500, np.float32))
    assert bins.edges == (np.nextafter(1.0, -np.inf), 1.0) and bins.shares == (0.0, 1.0, 0.0)
    expected = np.array(bins.shares)
    assert psi(expected, counts(bins, np.ones(100))) == 0
    for other in (0.0, 2.0, 0.9999999):
        assert psi(expected, counts(bins, np.full(100, other))) > 1, other


def test_ties_share_a_bin_and_only_new_values_move_the_psi() -> None:
    values = np.repeat([0.0, 1.0, 2.0, 5.0], [700, 200, 90, 10])  # a count: mostly 0, a long tail
    bins = Bins.of(values)
    assert bins.edges == (np.nextafter(0.0, -np.inf), 0.0, 1.0, 5.0)  # deciles are values met: 0 (7 times), 1 (twice), then 5
    assert bins.shares == pytest.approx((0.0, 0.7, 0.2, 0.1, 0.0))
    assert psi(np.array(bins.shares), counts(bins, RNG.permutation(values)[:500])) < 0.02
    assert psi(np.array(bins.shares), counts(bins, np.full(500, 9.0))) > 1  # above every training value


def test_empty_bins_give_a_finite_psi_and_no_counts_none() -> None:
    expected = np.array([0.0, 0.5, 0.5, 0.0])
    value = psi(expected, np.array([0, 10, 0, 0]))  # an expected bin empty
    assert np.isfinite(value) and value > PSI_MAJOR
    assert np.isfinite(psi(expected, np.array([5, 5, 5, 5])))  # counts where nothing was expected
    assert np.isnan(psi(expected, np.zeros(4)))
    rows = psi(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[5, 5], [0, 0]]))  # along the last axis
    assert rows[0] == 0 and np.isnan(rows[1])


def test_bin_indices_agree_with_searchsorted_per_column_of_padded_edges() -> None:
    values = RNG.normal(size=(200, 3))
    columns = [np.sort(RNG.normal(size=n)) for n in (2, 5, 9)]
    edges = np.full((3, 9), np.inf)
    for i, column in enumerate(columns):
        edges[i, : len(column)] = column
    values[0] = [column[1] for column in columns]  # a value on an edge belongs to the bin it closes
    got = bin_indices(values, edges)
    for i, column in enumerate(columns):
        assert (got[:, i] == np.searchsorted(column, values[:, i], side="left")).all()


def test_categories_keep_the_most_common_values_and_pool_the_rest() -> None:
    values = ["US"] * 50 + ["DE"] * 30 + [None] * 15 + [f"X{i}" for i in range(40)]
    categories = Categories.of(values)
    assert categories.values[:3] == ("US", "DE", None) and len(categories.values) == 30
    assert categories.shares[:3] == pytest.approx((50 / 135, 30 / 135, 15 / 135))
    assert categories.shares[-1] == pytest.approx(13 / 135) and sum(categories.shares) == pytest.approx(1.0)
    index = categories.index()
    assert index["US"] == 0 and index[None] == 2 and "X39" not in index  # any other value: bin len(values)


def test_distributions_cover_every_input_the_score_and_the_watched_fields_and_survive_a_round_trip(tmp_path: Path) -> None:
    names = InputSpec().names
    inputs = RNG.normal(size=(300, len(names))).astype(np.float32)
    inputs[:, 0] = 0.0  # a constant input
    fields = {"merchant_category": ["grocery", "fuel"] * 150, "country": ["BE", None, "FR"] * 100}
    distributions = TrainingDistributions.of(names, inputs, RNG.uniform(size=100), fields)
    assert tuple(distributions.inputs) == names and tuple(distributions.fields) == WATCHED_FIELDS
    path = distributions.write(tmp_path / "distributions.json")
    assert TrainingDistributions.read(path, names) == distributions
    assert TrainingDistributions.read(path, names).inputs[names[0]].edges == (-5e-324, 0.0)

    other = distributions.model_copy(update={"inputs": dict(list(distributions.inputs.items())[1:])})
    other.write(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other inputs or fields"):
        TrainingDistributions.read(tmp_path / "other.json", names)
    (tmp_path / "bad.json").write_text(path.read_text().replace('"shares"', '"share"', 1))
    with pytest.raises(ValueError):
        TrainingDistributions.read(tmp_path / "bad.json", names)
