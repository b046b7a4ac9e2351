"""``/v1/score`` against a real server, a real fraud model trained on a small synthetic lake, and a real broker.

The acceptance test replays 1,000 synthetic transactions (about 60 per card) through the
API in event-time order and checks that every card feature the API used equals Spark's
``gold_card_features`` for the same transactions. The synthetic times have microsecond
resolution, so no card has two transactions at the same instant (asserted): the one case
where ``CardHistory`` cannot match batch does not arise.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
import sqlalchemy as sa

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb, model_stages, model_versions
from edgelake.api.keys import ROLES, KeyStore
from edgelake.api.scoring import DEFAULT_THRESHOLDS, decide
from edgelake.broker import free_port
from edgelake.contracts import FraudScore, Transaction
from edgelake.kafka import ensure_topics, read_topic
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from edgelake.lake.features.definitions import CARD_FEATURES
from edgelake.lake.features.online import CardHistory
from edgelake.lake.features.online_redis import RedisCardHistory
from edgelake.lake.tables import SILVER
from support import append_silver, copy_world, isolated_settings
from edgelake.training import registry

REPLAY = synthetic.SyntheticConfig(seed=11, cards=16, merchants=30, start=datetime(2025, 3, 1, tzinfo=UTC))
REPLAY_COUNT = 1_000


@pytest.fixture(scope="module")
def lake(fraud_lake: Settings) -> Settings:
    """The session's lake with a trained fraud model in production (see conftest)."""
    return fraud_lake


@pytest.fixture(scope="module")
def tokens(lake: Settings) -> dict[str, str]:
    store = KeyStore(ControlDb.from_settings(lake))
    return {role: store.create(f"score {role}", role)[1] for role in ROLES}


@contextmanager
def client(serve, settings: Settings, token: str | None) -> Iterator[httpx2.Client]:
    """A client of a fresh app (its own card histories) over ``settings``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with serve(create_app(settings, rate_per_s=10_000, burst=10_000)) as url, httpx2.Client(base_url=url, headers=headers, timeout=60) as http:
        yield http


def body(t: Transaction) -> dict[str, Any]:
    return json.loads(t.to_bytes())


def example(**change: Any) -> dict[str, Any]:
    base = {
        "event_id": f"tx-{uuid.uuid4().hex}", "event_time": "2025-06-01T12:00:00Z", "card_id": "card-example", "merchant_id": "m1",
        "merchant_category": "grocery", "amount": 25.0, "currency": "EUR", "channel": "pos",
    }
    return {**base, **change}


def scores_on_topic(settings: Settings, expected: int, deadline_s: float = 30.0) -> list[FraudScore]:
    """The topic's score events, read until ``expected`` are there or the deadline passes."""
    until = time.monotonic() + deadline_s
    while True:
        events = [FraudScore.parse(r.value) for r in read_topic(settings.kafka_bootstrap_servers, settings.topic(FraudScore.topic))]
        if len(events) >= expected or time.monotonic() > until:
            return events
        time.sleep(0.5)


def same(batch: Any, online: Any) -> bool:
    """Equal feature values: nulls alike (NaN in the gold frame), floats within 1e-9 relative."""
    if online is None or batch is None or (isinstance(batch, float) and math.isnan(batch)):
        return online is None and (batch is None or math.isnan(batch))
    return math.isclose(float(batch), float(online), rel_tol=1e-9)


def test_replayed_transactions_get_the_batch_card_features_and_reach_the_topic(spark, lake: Settings, tokens, serve, tmp_path: Path) -> None:
    from edgelake.lake.gold import build_card_features

    replay = sorted(synthetic.transactions(REPLAY, REPLAY_COUNT), key=lambda t: (t.event_time, t.event_id))
    instants = {(t.card_id, t.event_time) for t in replay}
    assert len(instants) == len(replay), "same-instant ties of a card: CardHistory cannot match batch for those"
    batch_lake = str(tmp_path / "replay-lake")
    append_silver(batch_lake, replay)
    build_card_features(spark, Lake(batch_lake))
    gold = Lake(batch_lake).open("gold_card_features").to_pyarrow_table().to_pandas().set_index("event_id")

    settings = isolated_settings(lake.kafka_bootstrap_servers, lake.data_dir).model_copy(update={"lake_root": lake.lake_root, "score_model_check_s": 0.0})
    with client(serve, settings, tokens["producer"]) as http:
        results = [http.post("/v1/score", json=body(t)) for t in replay[:100]]  # one at a time, then in batches
        assert {r.status_code for r in results} == {200}
        scored = [r.json() for r in results]
        for start in range(100, REPLAY_COUNT, 300):
            response = http.post("/v1/score:batch", json=[body(t) for t in replay[start : start + 300]])
            assert response.status_code == 200, response.text
            scored += response.json()["scores"]
        metrics = http.get("/metrics").text

    assert [s["transaction_id"] for s in scored] == [t.event_id for t in replay]
    mismatches = [
        (s["transaction_id"], f.name, gold.at[s["transaction_id"], f.name], s["features"][f.name])
        for s in scored
        for f in CARD_FEATURES
        if not same(gold.at[s["transaction_id"], f.name], s["features"][f.name])
    ]
    assert mismatches == []
    assert {s["model"]["version"] for s in scored} == {1}
    for s in scored:
        assert 0 <= s["score"] <= 1 and s["decision"] == decide(s["score"], 0.5, 0.9)
        assert s["thresholds"] == {"review": 0.5, "decline": 0.9}  # the fixture's version records none: the defaults
    decisions = {d: sum(s["decision"] == d for s in scored) for d in ("approve", "review", "decline")}
    for decision, count in decisions.items():
        if count:
            assert f'edgelake_fraud_scores_total{{decision="{decision}"}} {float(count)}' in metrics
    assert "edgelake_fraud_model_version 1.0" in metrics

    events = scores_on_topic(settings, REPLAY_COUNT)
    assert len(events) == REPLAY_COUNT
    by_transaction = {e.transaction_id: e for e in events}
    first = scored[0]
    event = by_transaction[first["transaction_id"]]
    assert event.event_id == first["score_id"] and event.score == first["score"] and event.decision == first["decision"]
    assert event.model_name == "fraud" and event.model_version == 1
    assert event.features == {k: float(v) for k, v in first["features"].items() if v is not None}
    assert "seconds_since_previous" not in event.features  # the card's first transaction: null, left out

    landed = settings.model_copy(update={"lake_root": str(tmp_path / "scores-lake")})
    assert ingest(landed, IngestOptions(topics=(FraudScore.topic,)), once=True).batches >= 1
    silver = Lake(landed.lake_root).open("silver_fraud_scores").to_pyarrow_table()
    assert silver.num_rows == REPLAY_COUNT and set(silver.column("event_id").to_pylist()) == set(by_transaction[t].event_id for t in by_transaction)


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score:batch"])
def test_score_needs_a_producer_key(lake: Settings, tokens, serve, path: str) -> None:
    payload = example() if path == "/v1/score" else [example()]
    with client(serve, lake, None) as http:
        anonymous = http.post(path, json=payload)
        analyst = http.post(path, json=payload, headers={"Authorization": f"Bearer {tokens['analyst']}"})
        admin = http.post(path, json=payload, headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert analyst.status_code == 403 and analyst.headers["content-type"] == "application/problem+json"
    assert admin.status_code == 200


BAD = [
    ("/v1/score", example(amount=-1.0), "amount"),
    ("/v1/score", {k: v for k, v in example().items() if k != "card_id"}, "card_id"),
    ("/v1/score", example(amount="25"), "amount"),
    ("/v1/score", example(event_time="2025-06-01T12:00:00"), "event_time"),
    ("/v1/score", example(surprise=1), "surprise"),
    ("/v1/score:batch", [example(), example(currency="euro")], "1"),
    ("/v1/score:batch", [example() for _ in range(1001)], None),
    ("/v1/score:batch", [], None),
]


def test_bad_input_is_a_422_problem_naming_the_field(lake: Settings, tokens, serve) -> None:
    with client(serve, lake, tokens["producer"]) as http:
        responses = [http.post(path, json=payload) for path, payload, _ in BAD]
        not_json = http.post("/v1/score", content=b"{", headers={"content-type": "application/json"})
    for (path, _, field), response in zip(BAD, responses, strict=True):
        assert response.status_code == 422, (path, field, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "urn:edgelake:problem:invalid-request" and problem["instance"] == path
        if field is not None:
            assert any(field in map(str, error["loc"]) for error in problem["errors"]), problem
    assert not_json.status_code == 422


def raw_body(field: str, raw: str) -> bytes:
    """An example's JSON with ``field`` set to ``raw``, as written (JSON's own encoders refuse NaN and 1e309)."""
    return json.dumps(example(**{field: "<raw>"})).replace('"<raw>"', raw).encode()


UNSCORABLE = [
    (raw_body("amount", "NaN"), "amount"),
    (raw_body("amount", "Infinity"), "amount"),
    (raw_body("amount", "-Infinity"), "amount"),
    (raw_body("amount", "1e309"), "amount"),  # parses as infinity
    (raw_body("attributes", '{"V1": NaN}'), "attributes"),
    (json.dumps(example(event_time="0001-01-01T00:00:00Z")).encode(), "event_time"),  # its card windows overflowed
    (json.dumps(example(event_time="9999-12-31T00:00:00Z")).encode(), "event_time"),  # it blinded the card to later ones
]


def test_non_finite_numbers_and_far_event_times_are_422_problems_not_500(lake: Settings, tokens, serve) -> None:
    card = f"card-{uuid.uuid4().hex[:8]}"
    with client(serve, lake, tokens["producer"]) as http:
        first = http.post("/v1/score", json=example(card_id=card, event_time="2025-06-01T12:00:00Z"))
        as_json = {"content-type": "application/json"}
        responses = [http.post("/v1/score", content=content.replace(b"card-example", card.encode()), headers=as_json) for content, _ in UNSCORABLE]
        later = http.post("/v1/score", json=example(card_id=card, event_time="2025-06-01T12:05:00Z"))
    for (content, field), response in zip(UNSCORABLE, responses, strict=True):
        assert response.status_code == 422, (content, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert any(field in map(str, error["loc"]) for error in problem["errors"]), problem
        assert all("input" not in error for error in problem["errors"]), problem
    assert first.status_code == later.status_code == 200
    assert later.json()["features"]["tx_count_1h"] == 2  # the refused ones never entered the card's history


def test_a_huge_invalid_body_gets_a_small_422(lake: Settings, tokens, serve) -> None:
    items = [example(currency="euro") for _ in range(5_000)]  # 5,000 errors (and past the 1,000-item cap)
    with client(serve, lake, tokens["producer"]) as http:
        echoing = http.post("/v1/score", json=example(merchant_id="x" * 1_000_000))
        many = http.post("/v1/score:batch", json=items)
    assert echoing.status_code == 422 and len(echoing.content) < 10_000, len(echoing.content)
    assert many.status_code == 422 and len(many.content) < 50_000, len(many.content)
    assert len(many.json()["errors"]) <= 100


def test_bodies_past_the_limit_are_413_problems_and_long_batches_are_refused_before_validation(lake: Settings, tokens, serve) -> None:
    small = lake.model_copy(update={"api_max_body_bytes": 1_000_000})
    big = b"[" + b",".join([json.dumps(example()).encode()] * 10_000) + b"]"  # ~2.2 MB

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    many = json.dumps([{"event_id": "x"}] * 100_000).encode()  # 2 MB, 100,000 items
    with client(serve, small, tokens["producer"]) as http:
        declared = http.post("/v1/score:batch", content=big, headers={"content-type": "application/json"})
        streamed = http.post("/v1/score:batch", content=chunks(), headers={"content-type": "application/json"})
        sql = http.post("/v1/sql", content=b'{"sql": "' + b"x" * 2_000_000 + b'"}', headers={"content-type": "application/json"})
        alive = http.post("/v1/score", json=example())
    for response in (declared, streamed):
        assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json", response.text
        assert "at most 1,000,000" in response.json()["detail"]
    assert sql.status_code == 413
    assert alive.status_code == 200
    with client(serve, lake, tokens["producer"]) as http:
        started = time.monotonic()
        refused = http.post("/v1/score:batch", content=many, headers={"content-type": "application/json"})
        seconds = time.monotonic() - started
    assert refused.status_code == 422 and "at most 1,000 transactions a batch, not 100,000" in refused.text
    assert seconds < 2, f"{seconds:.1f} s to refuse"


def test_without_a_servable_production_model_scoring_is_a_503(lake: Settings, tokens, serve, tmp_path: Path) -> None:
    empty = copy_world(lake, tmp_path / "empty")
    with ControlDb.from_settings(empty).transaction() as connection:  # a registry that never published anything
        connection.execute(sa.delete(model_versions))
        connection.execute(sa.delete(model_stages))
    tampered = copy_world(lake, tmp_path / "tampered")
    flip_a_byte(tmp_path / "tampered" / "lake" / "models" / "fraud" / "1" / "fraud.tflite")
    for settings, reason in ((empty, "no version of model 'fraud' is in production"), (tampered, "fails verification")):
        with client(serve, settings, tokens["producer"]) as http:
            response = http.post("/v1/score", json=example())
            metrics = http.get("/metrics").text
        assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:edgelake:problem:model-unavailable" and reason in response.json()["detail"]
        assert "edgelake_fraud_model_version 0.0" in metrics


def test_a_refused_production_version_leaves_the_last_good_one_answering(lake: Settings, tokens, serve, tmp_path: Path) -> None:
    """A promoted version whose file no longer matches its signature is refused: a running server keeps the version it
    serves, and a server started afterwards falls back to the earlier production version; never a 503."""
    settings = copy_world(lake, tmp_path / "last-good", score_model_check_s=0.0)
    models = registry.Registry.from_settings(settings)
    good = registry.get(models, "fraud", registry.current(models, "fraud"))
    with client(serve, settings, tokens["producer"]) as http:
        assert http.post("/v1/score", json=example()).json()["model"]["version"] == good.version
        bad = registry.publish_run(
            Lake.from_settings(settings), models.db, settings.data_dir / registry.KEYS_DIR, "fraud", {name: good.path / name for name in good.manifest.files},
            metrics=good.manifest.metrics, lineage=good.manifest.lineage, feature_version=good.manifest.feature_version, promote_to="production",
        )
        flip_a_byte(bad.path / "fraud.tflite")
        answered = http.post("/v1/score", json=example())
        metrics = http.get("/metrics").text
    assert registry.production_line(models, "fraud") == [bad.version, good.version]
    assert answered.status_code == 200 and answered.json()["model"]["version"] == good.version
    assert f"edgelake_fraud_model_refused_version {float(bad.version)}" in metrics
    assert f"edgelake_fraud_model_version {float(good.version)}" in metrics
    with client(serve, settings, tokens["producer"]) as http:
        restarted = http.post("/v1/score", json=example())
    assert restarted.status_code == 200 and restarted.json()["model"]["version"] == good.version


def test_a_canary_version_scores_in_shadow_and_only_production_answers(spark, lake: Settings, tokens, serve, tmp_path: Path) -> None:
    """Each transaction is scored by production and by the canary (a model trained with another seed), from the same inputs:
    the caller gets production's score, both land in the lake, the shadow one marked; a rejected canary stops scoring."""
    from edgelake.training.fraud import FraudConfig, train_fraud
    from edgelake.training.registry.stages import reject

    settings = copy_world(lake, tmp_path / "shadow", topic_prefix=f"shadow{uuid.uuid4().hex[:8]}-", score_model_check_s=0.0)
    models = registry.Registry.from_settings(settings)
    production = registry.current(models, "fraud")
    other = train_fraud(spark, Lake.from_settings(lake), tmp_path / "run", FraudConfig(source="synthetic", epochs=1, seed=7, device="cpu"))
    canary = registry.publish_run(
        Lake.from_settings(settings), models.db, settings.data_dir / registry.KEYS_DIR, "fraud", other.files, metrics={"auprc": other.metrics["auprc"]},
        lineage=other.lineage, feature_version=other.feature_version, promote_to="canary",
    ).version
    feed = [body(t) for t in synthetic.transactions(synthetic.SyntheticConfig(seed=12, cards=4), 20)]
    ensure_topics(settings, settings.kafka_bootstrap_servers)
    with client(serve, settings, tokens["producer"]) as http:
        answered = [http.post("/v1/score", json=transaction).json() for transaction in feed]
        metrics, ready = http.get("/metrics").text, http.get("/readyz").json()
        reject(models, "fraud", canary, reason="test: shadow over")
        after = http.post("/v1/score", json=example()).json()

    assert {a["model"]["version"] for a in answered} == {production} and "shadow" not in json.dumps(answered)
    assert f"edgelake_fraud_shadow_model_version {float(canary)}" in metrics and ready["fraud_model"]["shadow_version"] == canary
    events = scores_on_topic(settings, 2 * len(feed) + 1)
    assert len(events) == 2 * len(feed) + 1, f"{len(events)} score events, expected one per answer and one per shadow score"
    by_transaction: dict[str, dict[bool, FraudScore]] = {}
    for event in events:
        assert event.shadow not in by_transaction.setdefault(event.transaction_id, {}), f"two {event.shadow=} scores of one transaction"
        by_transaction[event.transaction_id][event.shadow] = event
    for answer in answered:
        scores = by_transaction[answer["transaction_id"]]
        assert (scores[False].event_id, scores[False].score, scores[False].model_version) == (answer["score_id"], answer["score"], production)
        assert scores[True].model_version == canary
        assert scores[True].decision == decide(scores[True].score, DEFAULT_THRESHOLDS.review, DEFAULT_THRESHOLDS.decline)  # none in its manifest
        assert scores[True].features == scores[False].features
    assert any(not math.isclose(s[True].score, s[False].score, abs_tol=1e-6) for s in by_transaction.values() if True in s), "shadow = production"
    assert list(by_transaction[after["transaction_id"]]) == [False], "a rejected canary still scored in shadow"

    ingest(settings, IngestOptions(topics=(FraudScore.topic,)), once=True)
    landed = Lake.from_settings(settings).open(SILVER[FraudScore.topic].name).to_pyarrow_table(columns=["model_version", "shadow"])
    assert sorted(zip(landed["model_version"].to_pylist(), landed["shadow"].to_pylist(), strict=True)) == sorted(
        [(production, False)] * (len(feed) + 1) + [(canary, True)] * len(feed)
    )


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_scores_are_answered_and_wait_while_the_broker_is_unreachable(lake: Settings, tokens, serve) -> None:
    offline = lake.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    with client(serve, offline, tokens["producer"]) as http:
        answered = [http.post("/v1/score", json=example(card_id="card-offline", event_time=f"2025-06-01T12:0{i}:00Z")) for i in range(3)]
        assert [r.status_code for r in answered] == [200, 200, 200]
        metrics = http.get("/metrics").text
        assert "edgelake_fraud_score_events_pending 3.0" in metrics and "edgelake_fraud_score_events_unpublished_total 0.0" in metrics
    assert [r.json()["features"]["tx_count_1h"] for r in answered] == [1, 2, 3]


@pytest.mark.parametrize(("score", "decision"), [(0.0, "approve"), (0.49, "approve"), (0.5, "review"), (0.89, "review"), (0.9, "decline"), (1.0, "decline")])
def test_decisions_follow_the_thresholds(score: float, decision: str) -> None:
    assert decide(score, 0.5, 0.9) == decision


def test_decisions_follow_the_served_versions_own_thresholds_unless_the_settings_set_them(lake: Settings, tokens, serve, tmp_path: Path) -> None:
    """A version's manifest carries the thresholds its validation chose (``threshold``, ``decline_threshold``); the
    scorer decides with them, and a setting overrides either."""
    settings = copy_world(lake, tmp_path / "threshold", topic_prefix=f"thr{uuid.uuid4().hex[:8]}-")
    models = registry.Registry.from_settings(settings)
    trained = registry.get(models, "fraud", registry.current(models, "fraud"))
    with client(serve, settings, tokens["producer"]) as http:
        score = http.post("/v1/score", json=example()).json()["score"]
    assert score > 0
    own = {"review": score / 2, "decline": min(1.0, score * 1.5)}  # this transaction's score lies between them
    registry.publish_run(
        Lake.from_settings(settings), models.db, settings.data_dir / registry.KEYS_DIR, "fraud",
        {name: trained.path / name for name in trained.manifest.files},
        metrics={**trained.manifest.metrics, "threshold": own["review"], "decline_threshold": own["decline"]},
        lineage=trained.manifest.lineage, feature_version=trained.manifest.feature_version, promote_to="production",
    )
    for overrides, thresholds, decision in (
        ({}, own, "review"),
        ({"score_review_threshold": min(1.0, score * 1.2)}, {"review": min(1.0, score * 1.2), "decline": own["decline"]}, "approve"),
        ({"score_decline_threshold": score}, {"review": own["review"], "decline": score}, "decline"),
    ):
        with client(serve, settings.model_copy(update=overrides), tokens["producer"]) as http:
            answer = http.post("/v1/score", json=example()).json()
        assert answer["score"] == score and answer["thresholds"] == pytest.approx(thresholds) and answer["decision"] == decision, (overrides, answer)


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        Settings(score_review_threshold=0.95, score_decline_threshold=0.9)


def test_the_scorer_keeps_card_state_in_redis_when_the_settings_say_so(redis_server: str, tmp_path) -> None:
    from prometheus_client import CollectorRegistry

    from edgelake.api.metrics import ScoreMetrics
    from edgelake.api.scoring import CardStateUnavailable, Scorer, card_history
    from edgelake.settings import Settings

    assert isinstance(card_history(Settings(data_dir=tmp_path)), CardHistory)
    shared = Settings(data_dir=tmp_path, online_features="redis", redis_url=redis_server)
    assert isinstance(card_history(shared), RedisCardHistory)
    transaction = Transaction(
        event_id="redis-scorer-1", event_time=datetime(2025, 1, 1, tzinfo=UTC), card_id="c-redis-scorer",
        merchant_id="m1", merchant_category="grocery", amount=12.5, currency="EUR",
    )
    Scorer(shared, registry.Registry.from_settings(shared), ScoreMetrics.create(CollectorRegistry())).record([transaction])
    assert RedisCardHistory(redis.Redis.from_url(redis_server)).add(
        "c-redis-scorer", datetime(2025, 1, 1, 0, 1, tzinfo=UTC), 7.5, "m2", "redis-scorer-2"
    )["tx_count_1h"] == 2  # the scorer's transaction is in Redis, for every replica

    unreachable = Settings(data_dir=tmp_path, online_features="redis", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(CardStateUnavailable, match="cannot be reached"):
        Scorer(unreachable, registry.Registry.from_settings(unreachable), ScoreMetrics.create(CollectorRegistry())).record([transaction])
