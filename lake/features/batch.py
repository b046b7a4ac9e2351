"""Spark's computation of the card features (``definitions``), in batch over whole cards: ``gold_card_features``' columns."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from edgelake.lake.features.definitions import CARD_FEATURES, CardFeature

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, WindowSpec


def with_card_features(transactions: DataFrame) -> DataFrame:
    """Silver ``transactions`` with a column for each of ``CARD_FEATURES``, computed from all of each card's transactions given."""
    from pyspark.sql import Window

    card = Window.partitionBy("card_id")
    return transactions.select("*", *(_card_feature(feature, card).alias(feature.name) for feature in CARD_FEATURES))


def _card_feature(feature: CardFeature, card: WindowSpec) -> Column:
    """``feature``'s value for each transaction, over ``card``, the window of its card's transactions."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    micros = F.unix_micros("event_time")
    if feature.span is not None:  # (t - span, t] in microseconds, ties included
        window = card.orderBy(micros).rangeBetween(-(_micros(feature.span) - 1), 0)
        over = {
            "count": lambda: F.count(F.lit(1)).over(window),
            "amount_sum": lambda: F.sum("amount").over(window),
            "distinct_merchants": lambda: F.size(F.collect_set("merchant_id").over(window)),
        }
        return over[feature.kind]()
    if feature.kind == "seconds_since_previous":
        return (micros - F.lag(micros).over(card.orderBy("event_time", "event_id"))) / 1e6
    if feature.kind == "amount_to_card_mean":
        mean = F.avg("amount").over(card.orderBy(micros).rangeBetween(Window.unboundedPreceding, 0))
        return F.when(mean != 0, F.col("amount") / mean)
    raise ValueError(f"feature '{feature.name}': no Spark computation for kind '{feature.kind}' without a window")


def _micros(span: timedelta) -> int:
    return span // timedelta(microseconds=1)
