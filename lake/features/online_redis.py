"""``CardHistory`` kept in Redis, so that several API replicas share each card's history.

``RedisCardHistory.add`` returns exactly what ``online.CardHistory.add`` returns for the
same sequence of calls (the card features, with the same online exception for same-instant
ties), but the state lives in Redis, three keys per card:

- ``<prefix>{<card>}:tx``: a sorted set of the card's transactions of the last 7 days (the
  longest window), scored by event time in microseconds since the epoch, each member
  ``<seq>:<amount>:<merchant>`` (``seq`` a per-card counter that keeps identical
  transactions apart, ``amount`` Python's ``repr`` of the float, so it reads back exact);
- ``<prefix>{<card>}:ids``: a sorted set of the event ids seen in that window, scored the
  same way: a repeated event id is not counted again;
- ``<prefix>{<card>}:meta``: a hash of the card's running ``count`` and ``total`` (the card
  mean covers its whole history), its latest event time ``last`` and ``seq``.

One Lua script (``online_redis.lua``) records a transaction and reads back the card's state
in one step, so the update and the features it gives are atomic across replicas; Python
then computes the features from the returned window with ``online.card_features``, as
``CardHistory`` does (the running total is added one amount at a time in IEEE doubles, in
Lua as in Python). The braces around the card id are a Redis Cluster hash tag: a card's
keys stay on one node. Every add resets the keys' time to live (8 days by default, wall
clock), so an idle card's keys expire on their own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

from edgelake.lake.features.definitions import FeatureValues
from edgelake.lake.features.online import LONGEST_WINDOW, card_features

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LONGEST_US = LONGEST_WINDOW // _MICROSECOND
_ADD = files("edgelake.lake.features").joinpath("online_redis.lua").read_text(encoding="utf-8")


def _micros(when: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND


class RedisCardHistory:
    """``CardHistory``'s ``add`` with the cards' state in Redis, shared by every replica using the same ``prefix``.

    ``redis_client`` is a ``redis.Redis`` (synchronous) client; ``decode_responses`` may be
    either. ``ttl`` is how long a card's keys live after its latest ``add``.
    """

    def __init__(self, redis_client: Any, prefix: str = "edgelake:card:", ttl: timedelta = timedelta(days=8)) -> None:
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        self._redis = redis_client
        self._prefix = prefix
        self._ttl_ms = int(ttl / timedelta(milliseconds=1))
        self._script = redis_client.register_script(_ADD)

    def keys(self, card_id: str) -> tuple[str, str, str]:
        """The card's Redis keys: its transactions, its seen event ids, its running totals."""
        base = f"{self._prefix}{{{card_id}}}"
        return f"{base}:tx", f"{base}:ids", f"{base}:meta"

    def add(self, card_id: str, event_time: datetime, amount: float, merchant_id: str, event_id: str | None = None) -> FeatureValues:
        """Record a transaction and return its card features (it is included, as in batch).

        A transaction whose ``event_id`` the card has already recorded (within its kept 7
        days) is not recorded again; its features are those the history as it stands gives.
        """
        t = _micros(event_time)
        amount = float(amount)
        args = [t, repr(amount), merchant_id, "0" if event_id is None else "1", event_id or "", _LONGEST_US, self._ttl_ms]
        _, previous, count, total, flat = self._script(keys=self.keys(card_id), args=args)
        previous = _text(previous)
        since = None if previous == "" else max((t - int(previous)) / 1e6, 0.0)
        window = []
        for i in range(0, len(flat), 2):
            _, amount_text, merchant = _text(flat[i]).split(":", 2)
            window.append((int(float(flat[i + 1])), float(amount_text), merchant))
        mean = float(_text(total)) / int(_text(count))

        def within(span: timedelta) -> tuple[list[float], list[str]]:
            inside = [entry for entry in window if entry[0] > t - span // _MICROSECOND]
            return [entry[1] for entry in inside], [entry[2] for entry in inside]

        return card_features(within, amount, since, mean)


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
