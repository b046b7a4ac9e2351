"""Stateless API replicas: API processes behind Debian's nginx on loopback share PostgreSQL, Redis (card state, rate
limits and the score events' outbox), Kafka and the lake.

A load generator scores at 300 requests/s and devices heartbeat and send results through nginx;
one of two replicas is SIGKILLed mid-traffic, later a new one joins and then a third, so the run
ends on three. Clients retry what is safe to
retry (a score, a heartbeat, a batch of results), as the README tells them to. Nothing
acknowledged may be lost or doubled in the lake, and p99 and errors are reported for the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
import yaml
from deltalake import DeltaTable
from pydantic import SecretStr

from edgelake.control_db import ControlDb
from edgelake.api.keys import KeyStore
from edgelake.broker import EmbeddedBroker, free_port
from edgelake.contracts import EdgeInference, FraudScore
from edgelake.ingest.sources import synthetic
from edgelake.lake.catalog import Lake
from edgelake.lake.tables import SILVER, table_uri
from edgelake.settings import Settings
from edgelake.training import registry
from support import REPO, command_env, copy_stage_books, isolated_settings
from tests.api.proxy import answers_200, nginx
from tests.conftest import Postgres, server_process

SCORE_RATE = 300  # requests/s, over SCORERS threads
SCORERS = 6
DEVICES = 4
# the kill, the new replica's start after it, the third's start after that, the load on the three
KILL_AT_S, JOIN_AFTER_S, THIRD_AFTER_S, STEADY_S = 8.0, 4.0, 4.0, 12.0
HPA_WINDOW = "10s"  # the adapter's query over a window this short run fills (it reads 1m)
RETRIES = 6
RETRIED = {0, 429, 502, 503, 504}  # 0: no answer (the connection broke)
PROMETHEUS_RULES = REPO / "infra" / "prometheus" / "rules.yml"


@dataclass
class CallLog:
    """Each logical call: when it started, how long it took with its retries, its final status and how many tries."""

    calls: list[tuple[float, float, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, started: float, status: int, tries: int) -> None:
        with self.lock:
            self.calls.append((started, time.monotonic() - started, status, tries))

    def started_between(self, start: float, end: float) -> int:
        return sum(start <= begun < end for begun, *_ in self.calls)

    def summary(self) -> dict[str, float | int]:
        latencies = sorted(seconds for _, seconds, _, _ in self.calls)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
        return {
            "calls": len(self.calls), "errors": sum(status != 200 for _, _, status, _ in self.calls),
            "retried": sum(tries > 1 for *_, tries in self.calls), "p99_ms": round(p99 * 1000, 1),
        }


def call_with_retries(client: httpx2.Client, path: str, body: object, log: CallLog) -> httpx2.Response | None:
    """POST ``body`` until it is answered with something other than a retryable status, backing off; the last answer."""
    started, response = time.monotonic(), None
    for attempt in range(1, RETRIES + 1):
        try:
            response = client.post(path, json=body)
            status = response.status_code
        except httpx2.TransportError:
            response, status = None, 0
        if status not in RETRIED:
            break
        time.sleep(0.05 * 2**attempt)
    log.add(started, status, attempt)
    return response


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def score_events_pending(self) -> float:
        """Score events kept in Redis and not yet relayed to the topic (by any replica), from this replica's /metrics."""
        text = httpx2.get(f"{self.url}/metrics", timeout=5).text
        return float(re.search(r"^edgelake_fraud_score_events_pending (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    def requests_served(self) -> float:
        """The requests this replica answered, from its own /metrics."""
        text = httpx2.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(m) for m in re.findall(r'^edgelake_http_request_duration_seconds_count\{.*route="/v1/[^"]*".*\} (\S+)$', text, re.M))


def start_replica(env: dict[str, str], workdir: Path) -> Replica:
    port = free_port()
    log_path = workdir / f"replica-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgelake", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    replica = Replica(port, process, log_path)
    deadline, readiness = time.monotonic() + 120, "no answer"
    while True:
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"replica on {port} not ready: {readiness}"
        try:
            answer = httpx2.get(f"{replica.url}/readyz", params={"require": "fraud_model"}, timeout=2)
            if answer.status_code == 200:
                return replica
            readiness = answer.text
        except httpx2.TransportError:
            pass
        time.sleep(0.3)


@dataclass(frozen=True)
class Prometheus:
    """Debian's Prometheus server on loopback, scraping the replicas every second and evaluating infra/prometheus/rules.yml."""

    url: str
    targets: Path

    def scrape(self, ports: list[int]) -> None:
        """Scrape these replicas (file-based discovery, as pods are labelled in Kubernetes)."""
        groups = [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "edgelake", "pod": f"api-{port}"}} for port in ports]
        self.targets.with_suffix(".tmp").write_text(json.dumps(groups))
        self.targets.with_suffix(".tmp").replace(self.targets)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's value per series, keyed by the series' ``pod`` label (or "" when it has none)."""
        answer = httpx2.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return {series["metric"].get("pod", ""): float(series["value"][1]) for series in answer["data"]["result"]}


@contextmanager
def prometheus(workdir: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run infra/system-packages.sh (Debian package prometheus)"
    port, targets = free_port(), workdir / "targets.json"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_RULES)],
        "scrape_configs": [{"job_name": "edgelake-api", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    server = Prometheus(f"http://127.0.0.1:{port}", targets)
    server.scrape([])
    command = [
        binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]
    with server_process("prometheus", command, workdir, lambda: answers_200(f"{server.url}/-/ready"), timeout_s=30):
        yield server


def hpa_request_rate() -> tuple[str, float]:
    """The custom metric the API's HPA scales on and its per-pod target (infra/k8s/api.yaml)."""
    for doc in yaml.safe_load_all((REPO / "infra" / "k8s" / "api.yaml").read_text()):
        if doc and doc["kind"] == "HorizontalPodAutoscaler":
            pods = next(metric["pods"] for metric in doc["spec"]["metrics"] if metric["type"] == "Pods")
            return pods["metric"]["name"], float(pods["target"]["averageValue"])
    raise AssertionError("no HPA in infra/k8s/api.yaml")


def adapter_query(metric: str) -> str:
    """The PromQL prometheus-adapter runs for ``metric`` (infra/prometheus/adapter-rules.yaml), for the pods of namespace edgelake."""
    rules = yaml.safe_load((REPO / "infra" / "prometheus" / "adapter-rules.yaml").read_text())["rules"]["custom"]
    rule = next(rule for rule in rules if rule["name"]["as"] == metric)
    series = rule["name"]["matches"].strip("^$")
    query = rule["metricsQuery"]
    assert "[1m]" in query, query
    return (
        query.replace("<<.GroupBy>>", "pod").replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'namespace="edgelake"')
        .replace("[1m]", f"[{HPA_WINDOW}]")
    )


def silver_ids(settings: Settings, event: type[FraudScore] | type[EdgeInference]) -> list[str]:
    return DeltaTable(table_uri(settings.lake_root, SILVER[event.topic])).to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()


@pytest.mark.chaos
def test_a_replica_killed_mid_traffic_loses_and_doubles_nothing(
    fraud_lake: Settings, kafka: EmbeddedBroker, postgres: Postgres, redis_server: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path / "data").model_copy(
        update={
            "registry_dir": registry.registry_root(Lake.from_settings(fraud_lake)), "control_db_url": SecretStr(postgres.new_database()),
            "online_features": "redis", "rate_limits": "redis", "score_events": "redis", "redis_url": redis_server,
        }
    )
    copy_stage_books(fraud_lake, settings)
    env = command_env(
        settings, EDGELAKE_ONLINE_FEATURES="redis", EDGELAKE_RATE_LIMITS="redis", EDGELAKE_SCORE_EVENTS="redis", EDGELAKE_REDIS_URL=redis_server,
        EDGELAKE_LOG_FORMAT="json",
        EDGELAKE_API_RATE_PER_S=str(4 * SCORE_RATE), EDGELAKE_API_BURST=str(4 * SCORE_RATE),  # one producer key carries the whole load
    )
    Path(settings.lake_root).mkdir(parents=True)  # the scores' and results' tables land there
    keys = KeyStore(ControlDb.from_settings(settings))
    admin, producer = keys.create("replicas admin", "admin")[1], keys.create("replicas load", "producer")[1]
    replicas = [start_replica(env, tmp_path), start_replica(env, tmp_path)]
    scores, beats, results = CallLog(), CallLog(), CallLog()
    scored: list[str] = []
    delivered: list[str] = []
    stop = threading.Event()
    try:
        with nginx([r.port for r in replicas], tmp_path) as (url, repoint), prometheus(tmp_path) as scraper:
            scraper.scrape([r.port for r in replicas])
            devices = enroll_devices(url, admin)
            transactions = synthetic.transactions(synthetic.SyntheticConfig(seed=77, cards=200, merchants=50), 10**9)
            feed_lock = threading.Lock()

            def score_at_rate() -> None:
                with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {producer}"}, timeout=10) as client:
                    period, next_at = SCORERS / SCORE_RATE, time.monotonic()
                    while not stop.is_set():
                        with feed_lock:
                            transaction = next(transactions)
                        response = call_with_retries(client, "/v1/score", json.loads(transaction.to_bytes()), scores)
                        if response is not None and response.status_code == 200:
                            scored.append(response.json()["score_id"])
                        next_at += period
                        stop.wait(max(0.0, next_at - time.monotonic()))

            def run_device(device: dict[str, str], index: int) -> None:
                auth = {"Authorization": f"Bearer {device['device_token']}"}
                with httpx2.Client(base_url=url, headers=auth, timeout=10) as client:
                    batch = 0
                    while not stop.is_set():
                        beat = {"models": {}, "health": {"temp_c": 40.0 + index}}
                        call_with_retries(client, f"/v1/devices/{device['device_id']}/heartbeat", beat, beats)
                        ids = [f"{device['device_id']}-{batch}-{n}" for n in range(5)]
                        events = [inference(device["device_id"], event_id) for event_id in ids]
                        answer = call_with_retries(client, f"/v1/devices/{device['device_id']}/results", {"events": events}, results)
                        if answer is not None and answer.status_code == 200:
                            delivered.extend(ids)
                        batch += 1
                        stop.wait(0.25)

            load = [threading.Thread(target=score_at_rate) for _ in range(SCORERS)]
            load += [threading.Thread(target=run_device, args=(device, i)) for i, device in enumerate(devices)]
            started = time.monotonic()
            for thread in load:
                thread.start()
            time.sleep(KILL_AT_S)
            served_before = [replica.requests_served() for replica in replicas]
            os.killpg(replicas[0].process.pid, signal.SIGKILL)  # mid-traffic, nothing flushed
            replicas[0].process.wait(10)
            joined: list[Replica] = []
            for pause in (JOIN_AFTER_S, THIRD_AFTER_S):
                time.sleep(pause)
                joined.append(start_replica(env, tmp_path))
                replicas.append(joined[-1])
                repoint([r.port for r in replicas[1:]])
                scraper.scrape([r.port for r in replicas[1:]])
            time.sleep(STEADY_S)
            metric, target = hpa_request_rate()
            ended = time.monotonic()
            per_pod = scraper.query(adapter_query(metric))
            score_p99 = scraper.query("edgelake:score_latency_seconds:p99_5m")
            stop.set()
            for thread in load:
                thread.join(60)
            served_at_end = [replica.requests_served() for replica in replicas[1:]]
            deadline = time.monotonic() + 60  # the survivors relay what waits in Redis, the killed replica's share included
            while (waiting := joined[-1].score_events_pending()) > 0:
                assert time.monotonic() < deadline, f"{waiting:.0f} score events still wait in Redis"
                time.sleep(0.5)
    finally:
        stop.set()
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.terminate()  # a clean stop hands what its publisher holds to the broker
                replica.process.wait(60)

    logs = {"score": scores, "heartbeat": beats, "results": results}
    run_s = ended - started
    window_s = float(HPA_WINDOW.removesuffix("s"))
    load = sum(log.started_between(ended - window_s, ended) for log in logs.values()) / window_s
    summary = {
        **{name: log.summary() for name, log in logs.items()}, "run_s": round(run_s, 1),
        "score_rate_per_s": round(scores.summary()["calls"] / run_s, 1),
        "prometheus": {
            "load_last_window_per_s": round(load, 1), "hpa_metric_by_pod": {pod: round(v, 1) for pod, v in per_pod.items()},
            "score_p99_ms": {name: round(v * 1000, 1) for name, v in score_p99.items()},
        },
    }
    print(f"replicas: one of two SIGKILLed at {KILL_AT_S:g} s, two joined after it, {run_s:.0f} s in all: {summary}")
    (tmp_path / "replicas.json").write_text(json.dumps(summary))
    for name, log in logs.items():
        assert log.summary()["errors"] == 0, (name, summary)
    assert all(served > 50 for served in served_before), served_before  # both replicas took traffic before the kill
    assert all(served > 50 for served in served_at_end), served_at_end  # the survivor and both that joined: three replicas
    assert summary["score_rate_per_s"] >= 0.5 * SCORE_RATE, summary  # asked for 300/s; a loaded 2-core machine may lag

    # The HPA's metric as prometheus-adapter computes it: one value per live pod, in requests per second, which together
    # carry the load the clients sent (a unit or label mismatch would be off by 60 times, or find no pod).
    live = {f"api-{replica.port}" for replica in replicas[1:]}
    assert live <= set(per_pod), (live, per_pod)
    assert 0.7 * load < sum(per_pod[pod] for pod in live) < 1.3 * load, (per_pod, load)
    assert all(value < target for value in per_pod.values()), (per_pod, target)  # under the HPA's target: it would not scale up
    [p99_s] = score_p99.values()  # the alert rules' recording rule sees the replicas' score latency
    assert 0 < p99_s < 1, score_p99  # in seconds, as EdgelakeScoreLatencyHigh's 0.05 reads it

    ingest = subprocess.run(
        [sys.executable, "-m", "edgelake", "ingest", "run", "--topics", FraudScore.topic, "--topics", EdgeInference.topic, "--once"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    landed_scores, landed_results = silver_ids(settings, FraudScore), silver_ids(settings, EdgeInference)
    assert len(landed_scores) == len(set(landed_scores)) and len(landed_results) == len(set(landed_results))
    assert set(delivered) <= set(landed_results), f"{len(set(delivered) - set(landed_results))} acknowledged results are not in the lake"
    assert len(set(scored)) == len(scored), "a retried score was answered with another score id"
    assert set(scored) <= set(landed_scores), f"{len(set(scored) - set(landed_scores))} answered scores are not in the lake"


def enroll_devices(url: str, admin: str) -> list[dict[str, str]]:
    with httpx2.Client(base_url=url, timeout=30) as client:
        token = client.post("/v1/devices/enrollment-tokens", json={"uses": DEVICES}, headers={"Authorization": f"Bearer {admin}"})
        assert token.status_code == 201, token.text
        enrolled = [
            client.post("/v1/devices/enroll", json={"enrollment_token": token.json()["token"], "device_name": f"cam-{n}"}) for n in range(DEVICES)
        ]
    assert [answer.status_code for answer in enrolled] == [201] * DEVICES
    return [answer.json() for answer in enrolled]


def inference(device_id: str, event_id: str) -> dict[str, object]:
    event = EdgeInference(
        event_id=event_id, event_time=datetime.now(UTC), device_id=device_id, model_name="vision", model_version="1",
        input_ref=f"frame-{event_id}", prediction="sneaker", confidence=0.9, latency_ms=3.5,
    )
    return json.loads(event.to_bytes())
