"""A broker stopped for seconds while devices post results and applications ask for scores: everything
the API answered 200 to reaches its topic once it is back (issue 16 saw 225 edge results and 1,029
scores lost, on the stand-in broker of the time)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from edgelake.api.app import create_app
from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.contracts import FraudScore
from edgelake.kafka import ensure_topics, read_topic
from edgelake.settings import Settings
from support import copy_stage_books, embedded_kafka
from tests.api.conftest import serving
from tests.api.test_devices import ids_on_topic, inference
from tests.api.test_score import example

OUTAGE_S = 8.0


@pytest.mark.chaos
def test_what_the_api_acknowledged_during_a_broker_outage_reaches_the_topics(fraud_lake: Settings, tmp_path: Path) -> None:
    broker = embedded_kafka(tmp_path / "broker")
    try:
        settings = fraud_lake.model_copy(
            update={"kafka_bootstrap_servers": broker.bootstrap_servers, "topic_prefix": f"o{uuid.uuid4().hex[:8]}-", "data_dir": tmp_path / "data"}
        )
        copy_stage_books(fraud_lake, settings)  # the data dir of its own has a control plane of its own
        ensure_topics(settings, broker.bootstrap_servers)
        keys = KeyStore(ControlDb.from_settings(settings))
        admin, producer = keys.create("admin", "admin")[1], keys.create("app", "producer")[1]
        with serving(create_app(settings, rate_per_s=1e6, burst=10**6)) as url, httpx2.Client(base_url=url, timeout=60) as http:
            token = http.post("/v1/devices/enrollment-tokens", json={}, headers={"Authorization": f"Bearer {admin}"}).json()["token"]
            device = http.post("/v1/devices/enroll", json={"enrollment_token": token, "device_name": "d"}).json()
            results_path = f"/v1/devices/{device['device_id']}/results"
            device_auth = {"Authorization": f"Bearer {device['device_token']}"}
            stop = threading.Event()
            acknowledged: list[str] = []
            scored: list[str] = []

            def post_result(n: int) -> None:
                event_id = f"r{n}"
                response = http.post(results_path, json={"events": [inference(device["device_id"], event_id)]}, headers=device_auth)
                if response.status_code == 200:
                    acknowledged.append(event_id)

            def score(_: int) -> None:
                response = http.post("/v1/score", json=example(), headers={"Authorization": f"Bearer {producer}"})
                if response.status_code == 200:
                    scored.append(response.json()["score_id"])

            loads = [threading.Thread(target=_at_rate, args=(call, 8.0, stop)) for call in (post_result, score)]
            for load in loads:
                load.start()
            time.sleep(3)
            broker.stop()
            time.sleep(OUTAGE_S)
            broker.start()
            time.sleep(10)
            stop.set()
            for load in loads:
                load.join()
            deadline = time.monotonic() + 60  # the publisher catches up once the broker is back, without a shutdown to push it
            while (pending := _pending_scores(http)) > 0:
                assert time.monotonic() < deadline, f"{pending:.0f} score events still unpublished 60 s after the broker came back"
                time.sleep(0.5)
        # the server has stopped: its publisher handed what it held to the broker
        results = ids_on_topic(settings)
        scores = [json.loads(r.value)["event_id"] for r in read_topic(broker.bootstrap_servers, settings.topic(FraudScore.topic))]
        assert len(acknowledged) > 100 and len(scored) > 100, (len(acknowledged), len(scored))
        assert sorted(set(acknowledged) - set(results)) == [], f"{len(set(acknowledged) - set(results))} acknowledged results missing"
        assert len(results) == len(set(results))
        assert sorted(set(scored) - set(scores)) == [], f"{len(set(scored) - set(scores))} answered scores missing"
        assert len(scores) == len(set(scores))
    finally:
        broker.stop()


def _pending_scores(http: httpx2.Client) -> float:
    """The server's score events queued or in flight, from its /metrics."""
    metrics = http.get("/metrics").text
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("edgelake_fraud_score_events_pending"))


def _at_rate(call: Callable[[int], None], per_s: float, stop: threading.Event) -> None:
    """``call(n)`` for n = 0, 1, … about ``per_s`` times a second until ``stop``; a call may take longer (the next waits)."""
    n, started = 0, time.monotonic()
    while not stop.is_set():
        call(n)
        n += 1
        stop.wait(max(0.0, started + n / per_s - time.monotonic()))
