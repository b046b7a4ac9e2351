"""The per-card transaction features: what each one is, for its batch (``batch``) and online (``online``) computations.

Point in time: the features of a transaction at time ``t`` use only the card's
transactions with ``event_time <= t`` (this one included), never later ones, so a model
trained on them sees what an online scorer can know when the transaction arrives.

- A window ``w`` covers the card's transactions with ``event_time`` in ``(t - w, t]``:
  one exactly ``w`` earlier is out, one at the same instant as ``t`` is in (ties are
  inclusive, as in Spark's range windows), whichever arrived first.
- ``tx_count_<w>`` and ``amount_sum_<w>`` count and sum those transactions;
  ``distinct_merchants_<w>`` counts their distinct ``merchant_id`` values, over 24 h and
  7 d only (within an hour nearly every transaction is at a different merchant, so it
  would repeat ``tx_count_1h``).
- ``seconds_since_previous`` is ``t`` minus the time of the card's previous transaction in
  ``(event_time, event_id)`` order (0 for a same-instant predecessor); null for the
  card's first.
- ``amount_to_card_mean`` is the amount divided by the mean amount of the card's
  transactions with ``event_time <= t``, ties included as in the windows; null where that
  mean is 0.

Amounts are in the card's billing currency, as in the transactions. Bump
``FEATURE_VERSION`` whenever a definition here, or its batch or online computation, changes:
models record the version they were trained with, the gold table is rebuilt when its
version differs, and training refuses a gold table of another version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

FEATURE_VERSION = 1

WINDOWS: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DISTINCT_MERCHANT_WINDOWS = ("24h", "7d")

# A transaction's card features, by name; None where one is undefined (null in the gold table).
FeatureValues = dict[str, float | int | None]
Kind = Literal["count", "amount_sum", "distinct_merchants", "seconds_since_previous", "amount_to_card_mean"]


@dataclass(frozen=True)
class CardFeature:
    """One feature column: its name, what it computes (over ``window``, if any) and its type."""

    name: str
    kind: Kind
    window: str | None
    dtype: Literal["int64", "float64"]
    nullable: bool
    description: str

    @property
    def span(self) -> timedelta | None:
        """The window's length; None for a feature without a window."""
        return WINDOWS[self.window] if self.window is not None else None


CARD_FEATURES: tuple[CardFeature, ...] = (
    *(
        CardFeature(f"tx_count_{w}", "count", w, "int64", False, f"The card's transactions in the last {w}, this one included.")
        for w in WINDOWS
    ),
    *(
        CardFeature(f"amount_sum_{w}", "amount_sum", w, "float64", False, f"Sum of the card's amounts in the last {w}, this one included.")
        for w in WINDOWS
    ),
    *(
        CardFeature(
            f"distinct_merchants_{w}", "distinct_merchants", w, "int64", False,
            f"Distinct merchants of the card's transactions in the last {w}, this one included.",
        )
        for w in DISTINCT_MERCHANT_WINDOWS
    ),
    CardFeature(
        "seconds_since_previous", "seconds_since_previous", None, "float64", True,
        "Seconds since the card's previous transaction; null for its first.",
    ),
    CardFeature(
        "amount_to_card_mean", "amount_to_card_mean", None, "float64", True,
        "Amount over the mean amount of the card's transactions so far, this one included; null where that mean is 0.",
    ),
)
