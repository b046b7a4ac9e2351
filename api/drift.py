"""Drift of live fraud traffic: the last transactions scored, counted into the serving version's training bins.

A ``DriftWindow`` belongs to one production version (a newly served version starts an empty one). It keeps the
bin of each input, of the score and of each watched field for the last ``size`` transactions scored, and their
counts per bin; PSI (``training.drift.psi``) is computed from the counts when read. Below ``min_transactions``
the PSI would be noise, and none is given. Every ``snapshot_s`` seconds of traffic a reading is kept, the last
``SNAPSHOTS`` of them, for the dashboard to plot. Adding a batch costs one comparison with the bin edges and two
bincounts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from edgelake.contracts import Transaction
from edgelake.training.drift import Bins, Categories, TrainingDistributions, bin_indices, psi

SNAPSHOTS = 180  # three hours at the default snapshot_s


@dataclass(frozen=True)
class DriftReading:
    """PSI of the window's transactions against the training distributions, as of ``time``."""

    time: datetime
    transactions: int
    inputs: dict[str, float]
    score: float
    fields: dict[str, float]


class DriftWindow:
    """The last ``size`` transactions scored by production ``version``, binned by its training distributions; thread-safe."""

    def __init__(self, version: int, distributions: TrainingDistributions, size: int, min_transactions: int, snapshot_s: float) -> None:
        self.version = version
        self.size = size
        self.min_transactions = min_transactions
        self._snapshot_s = snapshot_s
        numeric = [*distributions.inputs.values(), distributions.score]
        self._inputs = tuple(distributions.inputs)
        self._fields = [(name, categories.index(), len(categories.values)) for name, categories in distributions.fields.items()]
        columns = len(numeric) + len(self._fields)
        parts: list[Bins | Categories] = [*numeric, *distributions.fields.values()]
        width = max(len(part.shares) for part in parts)
        self._edges = np.full((len(numeric), width - 1), np.inf)
        self._expected = np.zeros((columns, width))
        for i, bins in enumerate(numeric):
            self._edges[i, : len(bins.edges)] = bins.edges
            self._expected[i, : len(bins.shares)] = bins.shares
        for i, categories in enumerate(distributions.fields.values(), start=len(numeric)):
            self._expected[i, : len(categories.shares)] = categories.shares
        self._offsets = np.arange(columns) * width
        self._rows = np.zeros((size, columns), np.uint16)  # each transaction's bin per column, a ring
        self._counts = np.zeros((columns, width), np.int64)
        self._held = 0
        self._next = 0
        self._lock = threading.Lock()
        self._snapshots: deque[DriftReading] = deque(maxlen=SNAPSHOTS)
        self._next_snapshot = time.monotonic() + snapshot_s

    @property
    def transactions(self) -> int:
        """Transactions the window holds."""
        return self._held

    def add(self, inputs: np.ndarray, scores: np.ndarray, transactions: Sequence[Transaction]) -> None:
        """Count scored ``transactions``, their model ``inputs`` (one row each) and ``scores``, dropping the oldest beyond ``size``."""
        rows = np.empty((len(transactions), len(self._expected)), np.uint16)
        numeric = len(self._edges)
        rows[:, :numeric] = bin_indices(np.column_stack([inputs, scores]), self._edges)
        for column, (name, index, other) in enumerate(self._fields, start=numeric):
            rows[:, column] = [index.get(getattr(t, name), other) for t in transactions]
        rows = rows[-self.size :]
        with self._lock:
            positions = (self._next + np.arange(len(rows))) % self.size
            replaced = self._rows[positions[self.size - self._held :]]  # the first size - held positions were empty
            self._counts += self._tally(rows) - self._tally(replaced)
            self._rows[positions] = rows
            self._next = (self._next + len(rows)) % self.size
            self._held = min(self.size, self._held + len(rows))
            if time.monotonic() >= self._next_snapshot:
                self._next_snapshot = time.monotonic() + self._snapshot_s
                if (reading := self._reading(self._counts, self._held)) is not None:
                    self._snapshots.append(reading)

    def reading(self) -> DriftReading | None:
        """PSI now; None while the window holds fewer than ``min_transactions``."""
        with self._lock:
            counts, held = self._counts.copy(), self._held
        return self._reading(counts, held)

    def history(self) -> list[DriftReading]:
        """The readings kept every ``snapshot_s`` seconds of traffic, oldest first."""
        with self._lock:
            return list(self._snapshots)

    def _tally(self, rows: np.ndarray) -> np.ndarray:
        flat = (rows.astype(np.intp) + self._offsets).ravel()
        return np.bincount(flat, minlength=self._counts.size).reshape(self._counts.shape)

    def _reading(self, counts: np.ndarray, held: int) -> DriftReading | None:
        if held < self.min_transactions:
            return None
        values = psi(self._expected, counts).tolist()
        numeric = len(self._edges)
        return DriftReading(
            time=datetime.now(UTC),
            transactions=held,
            inputs=dict(zip(self._inputs, values[: numeric - 1], strict=True)),
            score=values[numeric - 1],
            fields={name: value for (name, _, _), value in zip(self._fields, values[numeric:], strict=True)},
        )
