"""Which inputs a fraud model gets, decided from its training rows: ``InputProfile`` counts them, ``spec`` decides.

Every numeric attribute seen is read unless it has one value in every row; a categorical
attribute (or field) is read over its vocabulary, the ``MAX_VOCABULARY`` values found in at
least ``min_value_rows`` rows, unless it has one value everywhere, never a value, or no value
that common (an identifier such as a transaction id). What is not read is set aside, with why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgelake.lake.features.model_inputs import CATEGORICAL_FIELDS, CategoricalInput, InputSpec, NumericInput, arrow_map_entries

if TYPE_CHECKING:
    import pyarrow as pa

MAX_VOCABULARY = 20
MIN_VALUE_ROWS = 20  # a value in fewer training rows than this (or than 0.1 % of them) counts as ``other``
MIN_VALUE_SHARE = 0.001


@dataclass
class _Moments:
    present: int
    total: float
    low: float
    high: float


class InputProfile:
    """What the training rows hold, added batch by batch (Arrow batches of ``batch_input_columns`` rows)."""

    def __init__(self) -> None:
        self.rows = 0
        self._numeric: dict[str, _Moments] = {}  # in the order first seen
        self._fields: dict[str, Counter[str]] = {name: Counter() for name in CATEGORICAL_FIELDS}
        self._categories: dict[str, Counter[str]] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        self.rows += batch.num_rows
        moments = [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")]
        for key, count, total, low, high in _grouped(batch.column("attributes"), ["key"], moments):
            seen = self._numeric.setdefault(key, _Moments(0, 0.0, low, high))
            seen.present += count
            seen.total += total
            seen.low, seen.high = min(seen.low, low), max(seen.high, high)
        for key, value, count in _grouped(batch.column("categories"), ["key", "value"], [([], "count_all")]):
            self._categories.setdefault(key, Counter())[value] += count
        for name, counts in self._fields.items():
            for pair in pc.value_counts(batch.column(name)).to_pylist():
                if pair["values"] is not None:
                    counts[pair["values"]] += pair["counts"]

    def spec(self) -> InputSpec:
        """The inputs to read, and the columns set aside with why."""
        numeric, set_aside = [], {}
        for name, m in self._numeric.items():
            if m.low == m.high and m.present == self.rows:
                set_aside[name] = f"constant ({m.low:g} in every row)"
            else:
                numeric.append(NumericInput(name, m.total / m.present, indicator=m.present < self.rows))
        categorical = []
        min_rows = max(MIN_VALUE_ROWS, round(MIN_VALUE_SHARE * self.rows))
        candidates = [*self._fields.items()]
        for name, counts in self._categories.items():
            if name in self._fields or name in self._numeric:
                set_aside[f"categories.{name}"] = "named like a transaction field or a numeric attribute"
            else:
                candidates.append((name, counts))
        for name, counts in candidates:
            if not counts:
                set_aside[name] = "never present"
            elif len(counts) == 1 and counts.total() == self.rows:
                set_aside[name] = f"constant ('{next(iter(counts))}' in every row)"
            elif not (vocabulary := [v for v, c in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0])) if c >= min_rows]):
                set_aside[name] = f"no value in {min_rows} rows or more ({len(counts)} distinct: an identifier?)"
            else:
                categorical.append(CategoricalInput(name, tuple(vocabulary[:MAX_VOCABULARY])))
        return InputSpec(tuple(numeric), tuple(categorical), set_aside)


def _grouped(maps: pa.Array | pa.ChunkedArray, keys: list[str], aggregations: list[tuple]) -> list[tuple]:
    """The entries of ``maps`` grouped by ``keys`` (``["key"]``, or ``["key", "value"]``) and aggregated: a tuple per group,
    its keys then its aggregates, in the order the groups first appear."""
    import pyarrow as pa

    _, entry_keys, entry_values = arrow_map_entries(maps)
    table = pa.table({"key": entry_keys, "value": entry_values})
    grouped = table.group_by(keys, use_threads=False).aggregate(aggregations)
    names = [*keys, *(f"{column}_{function}" if column else function for column, function in aggregations)]
    return list(zip(*(grouped.column(name).to_pylist() for name in names), strict=True))
