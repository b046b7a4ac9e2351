"""Score events through a Redis stream (``score_events = "redis"``): kept before a score is answered, relayed to the
fraud-scores topic by any replica, including what a relay that died had read and never relayed."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis
from prometheus_client import CollectorRegistry

from edgelake.api.metrics import ScoreMetrics
from edgelake.api.score_outbox import RedisScoreOutbox, ScoreEventsUnavailable
from edgelake.broker import free_port
from edgelake.contracts import FraudScore
from edgelake.kafka import read_topic
from edgelake.settings import Settings


def scores(count: int) -> list[FraudScore]:
    return [
        FraudScore(
            event_id=f"score-{n}", event_time=datetime.now(UTC), transaction_id=f"tx-{n}", card_id="c1", score=0.1,
            decision="approve", model_name="fraud", model_version=1, latency_ms=1.0,
        )
        for n in range(count)
    ]


def test_what_a_dead_relay_read_and_never_relayed_is_relayed_by_another(settings: Settings, redis_server: str) -> None:
    settings = settings.model_copy(update={"redis_url": redis_server, "score_events": "redis"})
    answering = RedisScoreOutbox(settings, ScoreMetrics.create(CollectorRegistry()))  # a replica that answers, never relays
    answering.publish(scores(30))
    stream = f"edgelake:{settings.topic_prefix}score-outbox"
    client = redis.Redis.from_url(redis_server)
    client.xgroup_create(stream, "relay", id="0", mkstream=True)
    taken = client.xreadgroup("relay", "a-relay-that-dies", {stream: ">"}, count=20)  # read, then SIGKILLed: never acknowledged
    assert len(taken[0][1]) == 20
    answering.publish(scores(40)[30:])

    survivor = RedisScoreOutbox(settings, ScoreMetrics.create(CollectorRegistry()), claim_idle_s=0.5)
    survivor.start()
    try:
        deadline = time.monotonic() + 30
        while survivor.pending() > 0:
            assert time.monotonic() < deadline, f"{survivor.pending():.0f} events still in the stream"
            time.sleep(0.2)
    finally:
        survivor.close()
        answering.close()
    on_topic = [FraudScore.parse(record.value).event_id for record in read_topic(settings.kafka_bootstrap_servers, settings.topic(FraudScore.topic))]
    assert sorted(on_topic) == sorted(f"score-{n}" for n in range(40))


def test_a_score_whose_event_redis_does_not_take_is_not_answered(settings: Settings) -> None:
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "score_events": "redis"})  # no Redis there
    outbox = RedisScoreOutbox(settings, ScoreMetrics.create(CollectorRegistry()))
    with pytest.raises(ScoreEventsUnavailable, match="Redis did not keep the score events"):
        outbox.publish(scores(1))
    outbox.close()
