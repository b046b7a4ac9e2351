"""The traffic a fraud model version was tested on, and the population stability index (PSI) of live traffic against it.

Each version stores, from its training run, ``TrainingDistributions`` in ``training_distributions.json``: over the
test part of the time split (the latest examples, held out from fitting, on which the version's metrics were
measured), for every model input (its ``InputSpec.names``) and for the model's score the bins of their values, and for each
of ``WATCHED_FIELDS`` (transaction fields, whether the model reads them or not) the shares of its most common values. The scorer
counts live traffic into the same bins and ``psi`` compares the counts with the stored shares: below
``PSI_MODERATE`` the distributions agree, above ``PSI_MAJOR`` they have drifted.

Numeric bins are cut at the reference values' deciles (values met, never a blend of two), their minimum and their
maximum, each cut once: a bin below the minimum, one holding the minimum alone, then the quantile bins up to the
maximum and one above it. A value with ties (a flag, a count, a constant) so gets fewer bins, and a value outside the
reference's range lands in a bin whose expected share is 0. Empty bins count as a share of ``PSI_FLOOR``, so their
PSI is finite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from edgelake.lake.features.model_inputs import WATCHED_FIELDS

DISTRIBUTIONS_FILE = "training_distributions.json"
QUANTILE_BINS = 10
MOST_COMMON = 30  # values of a watched field kept by name; the rest share one bin
PSI_FLOOR = 1e-4
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
# Inputs that follow the clock: a window shorter than a day never holds a whole day's mix of hours, so their PSI is
# exported and plotted but no alert watches it (the latest 5,000 ULB transactions, 1.5 hours, gave PSI 8.3).
TIME_OF_DAY_INPUTS = ("hour_sin", "hour_cos")


class Bins(BaseModel):
    """Bins of a numeric value and the share of reference values in each: bin ``i`` holds ``edges[i-1] < x <= edges[i]``,
    the first every value up to ``edges[0]``, the last every value above ``edges[-1]``."""

    model_config = ConfigDict(frozen=True)

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    @model_validator(mode="after")
    def _one_share_per_bin(self) -> Bins:
        if len(self.shares) != len(self.edges) + 1 or list(self.edges) != sorted(set(self.edges)):
            raise ValueError(f"{len(self.edges)} edges (ascending, distinct) need {len(self.edges) + 1} shares, not {len(self.shares)}")
        return self

    @classmethod
    def of(cls, values: np.ndarray) -> Bins:
        """The bins of ``values`` (at least one, finite) and their shares."""
        values = np.asarray(values, dtype=np.float64)
        cuts = np.unique(np.quantile(values, np.linspace(0, 1, QUANTILE_BINS + 1), method="inverted_cdf"))  # values met, no blends of ties
        edges = np.concatenate([[np.nextafter(cuts[0], -np.inf)], cuts])
        counts = np.bincount(bin_indices(values[:, None], edges[None, :])[:, 0], minlength=len(edges) + 1)
        return cls(edges=tuple(edges.tolist()), shares=tuple((counts / len(values)).tolist()))


class Categories(BaseModel):
    """The most common values of a field in the reference (None: the field was absent) and their shares, then the share of
    every other value."""

    model_config = ConfigDict(frozen=True)

    values: tuple[str | None, ...]
    shares: tuple[float, ...]

    @model_validator(mode="after")
    def _one_share_per_bin(self) -> Categories:
        if len(self.shares) != len(self.values) + 1:
            raise ValueError(f"{len(self.values)} values need {len(self.values) + 1} shares (the last for any other), not {len(self.shares)}")
        return self

    @classmethod
    def of(cls, values: Sequence[str | None]) -> Categories:
        """The shares of ``values`` (at least one)."""
        common = Counter(values).most_common(MOST_COMMON)
        shares = [count / len(values) for _, count in common]
        return cls(values=tuple(value for value, _ in common), shares=(*shares, max(0.0, 1.0 - sum(shares))))

    def index(self) -> dict[str | None, int]:
        """Each kept value's bin; any other value's is ``len(values)``."""
        return {value: i for i, value in enumerate(self.values)}


class TrainingDistributions(BaseModel):
    """A version's reference distributions: its inputs', its score's and its watched fields' on its test part."""

    model_config = ConfigDict(frozen=True)

    inputs: dict[str, Bins]  # in the version's input order
    score: Bins
    fields: dict[str, Categories]  # in WATCHED_FIELDS order

    @classmethod
    def of(
        cls, names: Sequence[str], inputs: np.ndarray, scores: np.ndarray, fields: Mapping[str, Sequence[str | None]]
    ) -> TrainingDistributions:
        """From the model ``inputs`` (columns ``names``), ``scores`` and ``fields`` (``WATCHED_FIELDS``) of the same examples."""
        return cls(
            inputs={name: Bins.of(inputs[:, i]) for i, name in enumerate(names)},
            score=Bins.of(scores),
            fields={name: Categories.of(fields[name]) for name in WATCHED_FIELDS},
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path, names: Sequence[str]) -> TrainingDistributions:
        """The distributions in ``path``; ValueError if it holds none, or other inputs than ``names`` (the version's) or
        other fields than this code's."""
        distributions = cls.model_validate_json(path.read_bytes())
        if tuple(distributions.inputs) != tuple(names) or tuple(distributions.fields) != WATCHED_FIELDS:
            raise ValueError(f"{path.name} describes other inputs or fields than the version's")
        return distributions


def bin_indices(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each of ``values`` (rows by columns) by its column's edges (one row of ascending edges per column,
    padded with +inf): how many of the column's edges lie below the value."""
    return np.count_nonzero(values[:, :, None] > edges[None, :, :], axis=2)


def psi(expected: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The PSI of the ``counts`` per bin against the ``expected`` shares, along the last axis; NaN where nothing was counted."""
    with np.errstate(invalid="ignore"):
        observed = counts / counts.sum(axis=-1, keepdims=True)
    expected = np.maximum(expected, PSI_FLOOR)
    observed = np.maximum(observed, PSI_FLOOR)
    return np.sum((observed - expected) * np.log(observed / expected), axis=-1)
