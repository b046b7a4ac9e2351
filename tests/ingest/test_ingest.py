"""Ingest end to end: Kafka -> Beam -> bronze/silver/quarantine, exactly once under crashes and outages."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake
from kafka import KafkaProducer

from edgelake.bench.silver import silver_rows
from edgelake.broker import EmbeddedBroker, free_port
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.tables import BRONZE, QUARANTINE, SILVER, table_uri
from support import command_env, embedded_kafka, isolated_settings

TOPIC = "transactions"


def malformed(i: int, valid: bytes) -> bytes:
    """One of many kinds of bad record, chosen by ``i``."""
    event = json.loads(valid)
    kinds = [
        lambda: b"\x00\xff not json",
        lambda: b"[1, 2, 3]",
        lambda: json.dumps({k: v for k, v in event.items() if k != "card_id"}).encode(),
        lambda: json.dumps({**event, "amount": "lots"}).encode(),
        lambda: json.dumps(event).replace('"amount":', '"amount": NaN, "x":').encode(),
        lambda: json.dumps({**event, "event_time": "2999-01-01T00:00:00Z"}).encode(),
        lambda: json.dumps({**event, "currency": "euros"}).encode(),
        lambda: json.dumps({**event, "nested": {"a": 1}}).encode(),
        lambda: json.dumps({**event, "amount": -5}).encode(),
        lambda: b"",
    ]
    return kinds[i % len(kinds)]()


@dataclass
class Feed:
    """What was produced: offsets of valid, malformed and duplicate records per partition."""

    valid_ids: set[str]
    offsets: dict[str, set[tuple[int, int]]]  # kind -> {(partition, offset)}


def produce_feed(settings: Settings, events: int, seed: int = 11, per_second: float | None = None) -> Feed:
    """``events`` records: ~98% valid, 1% malformed of many kinds, 1% exact duplicates, interleaved; ``per_second`` paces them."""
    rng = random.Random(seed)
    valid = list(transactions(SyntheticConfig(seed=seed), int(events * 0.98)))
    payloads: list[tuple[str, bytes, bytes]] = [("valid", tx.key, tx.to_bytes()) for tx in valid]
    for i in range(events - len(valid)):
        source = rng.choice(valid)
        if i % 2:
            payloads.insert(rng.randrange(len(payloads)), ("malformed", source.key, malformed(i, source.to_bytes())))
        else:  # an exact duplicate always comes after its original
            at = payloads.index(("valid", source.key, source.to_bytes()))
            payloads.insert(rng.randrange(at + 1, len(payloads) + 1), ("duplicate", source.key, source.to_bytes()))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5)
    futures, started = [], time.monotonic()
    for n, (kind, key, value) in enumerate(payloads):
        futures.append((kind, producer.send(settings.topic(TOPIC), key=key, value=value)))
        if per_second and n % 100 == 0:
            time.sleep(max(0.0, started + n / per_second - time.monotonic()))
    producer.flush()
    offsets: dict[str, set[tuple[int, int]]] = {"valid": set(), "malformed": set(), "duplicate": set()}
    for kind, future in futures:
        metadata = future.get(timeout=30)
        offsets[kind].add((metadata.partition, metadata.offset))
    producer.close()
    return Feed({tx.event_id for tx in valid}, offsets)


def table(settings: Settings, spec) -> pa.Table:
    return DeltaTable(table_uri(settings.lake_root, spec)).to_pyarrow_table()


def assert_exactly_once(settings: Settings, feed: Feed) -> None:
    """Every offset in bronze once; silver = valid events once; quarantine = the malformed offsets."""
    bronze = table(settings, BRONZE[TOPIC])
    silver = table(settings, SILVER[TOPIC])
    quarantine = table(settings, QUARANTINE)
    quarantine = quarantine.filter(pc.equal(quarantine["topic"], settings.topic(TOPIC)))
    produced = set().union(*feed.offsets.values())

    bronze_offsets = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    assert len(bronze_offsets) == len(set(bronze_offsets)) == len(produced)
    assert set(bronze_offsets) == produced

    silver_ids = silver["event_id"].to_pylist()
    assert len(silver_ids) == len(set(silver_ids)), "an event id appears twice in silver"
    assert set(silver_ids) == feed.valid_ids

    silver_offsets = set(zip(silver["_partition"].to_pylist(), silver["_offset"].to_pylist(), strict=True))
    quarantine_offsets = list(zip(quarantine["partition"].to_pylist(), quarantine["offset"].to_pylist(), strict=True))
    assert len(quarantine_offsets) == len(set(quarantine_offsets))
    assert set(quarantine_offsets) == feed.offsets["malformed"]
    assert all(quarantine["reason"].to_pylist()) and set(quarantine["stage"].to_pylist()) >= {"decode", "contract"}
    duplicates = produced - silver_offsets - set(quarantine_offsets)
    assert len(duplicates) == len(feed.offsets["duplicate"])
    history = DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC])).history()
    assert sum(int(commit.get("duplicates", 0)) for commit in history) == len(duplicates)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_batch_lands_in_bronze_silver_and_quarantine(kafka: EmbeddedBroker, tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    if storage == "s3":
        settings = settings.model_copy(update={"lake_root": request.getfixturevalue("object_store").new_lake()})
    feed = produce_feed(settings, 3000)
    totals = ingest(settings, IngestOptions(topics=(TOPIC,), max_events=1000), once=True)
    assert totals.batches >= 3
    assert_exactly_once(settings, feed)
    again = ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)
    assert again.batches == 0
    assert (tmp_path / "lake").exists() == (storage == "local")


def test_schema_evolution_adds_a_nullable_column(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    first, second, third = transactions(SyntheticConfig(seed=21), 3)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    topic = settings.topic(TOPIC)
    producer.send(topic, first.to_bytes())
    producer.flush()
    ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)
    # one key, so one partition: "first in the batch" is then offset order
    producer.send(topic, json.dumps({**json.loads(second.to_bytes()), "loyalty_tier": "gold"}).encode(), key=b"k")
    producer.send(topic, json.dumps({**json.loads(third.to_bytes()), "loyalty_tier": 3}).encode(), key=b"k")
    producer.flush()
    ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)
    silver = table(settings, SILVER[TOPIC]).sort_by("event_id")
    assert silver.schema.field("loyalty_tier").type == pa.string()
    assert dict(zip(silver["event_id"].to_pylist(), silver["loyalty_tier"].to_pylist(), strict=True)) == {
        first.event_id: None,
        second.event_id: "gold",
    }
    reasons = table(settings, QUARANTINE)["reason"].to_pylist()
    assert len(reasons) == 1 and "loyalty_tier" in reasons[0]


def test_transactions_land_with_their_categories_also_in_a_silver_table_written_before_categories(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    earlier, pristine, padded, bad, plain = transactions(SyntheticConfig(seed=31), 5)
    # silver_transactions as ingest wrote it before transactions had categories
    write_deltalake(table_uri(settings.lake_root, SILVER[TOPIC]), silver_rows([earlier]).drop_columns(["categories"]), partition_by=["event_date"])
    categories = {"ProductCD": "W", "P_emaildomain": "gmail.com"}
    records = [
        pristine.model_copy(update={"categories": categories}).to_bytes(),  # the fast lane's
        json.dumps({**json.loads(padded.to_bytes()), "currency": " eur ", "categories": {"DeviceType": "mobile"}}).encode(),  # cleaned first
        json.dumps({**json.loads(bad.to_bytes()), "categories": {"ProductCD": "W" * 257}}).encode(),
        json.dumps({k: v for k, v in json.loads(plain.to_bytes()).items() if k != "categories"}).encode(),  # as sent before categories
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for record in records:
        producer.send(settings.topic(TOPIC), record, key=b"k")
    producer.flush()

    ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)

    silver = table(settings, SILVER[TOPIC])
    assert silver.schema.field("categories").type == pa.map_(pa.string(), pa.string())
    landed = {row["event_id"]: row["categories"] for row in silver.select(["event_id", "categories"]).to_pylist()}
    assert landed == {
        earlier.event_id: None,
        pristine.event_id: list(categories.items()),
        padded.event_id: [("DeviceType", "mobile")],
        plain.event_id: [],
    }
    assert table(settings, QUARANTINE)["reason"].to_pylist() == ["field 'categories.ProductCD': String should have at most 256 characters"]


@dataclass
class Ingester:
    """An ``edgelake ingest run`` process; its stderr goes to a file (an unread pipe fills and blocks it)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def run_ingester(settings: Settings, *args: str, topic: str = TOPIC) -> Ingester:
    env = command_env(settings, EDGELAKE_LOG_FORMAT="json")
    command = [sys.executable, "-m", "edgelake", "ingest", "run", "--topics", topic, *args]
    log = Path(settings.data_dir) / f"ingester-{time.monotonic_ns()}.log"
    with log.open("wb") as stderr:
        return Ingester(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr), log)


def test_two_ingesters_share_the_quarantine_table_on_object_storage(kafka: EmbeddedBroker, object_store, tmp_path: Path) -> None:
    """As in the compose stack: ingesters of disjoint topics, each committing small batches to the one quarantine table."""
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path).model_copy(update={"lake_root": object_store.new_lake()})
    feed = produce_feed(settings, 360)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    bad_labels = [producer.send(settings.topic("fraud-labels"), b"not a label %d" % i) for i in range(90)]
    producer.flush()
    bad_offsets = {(metadata.partition, metadata.offset) for metadata in (sent.get(timeout=30) for sent in bad_labels)}
    producer.close()
    ingesters = [run_ingester(settings, "--once", "--max-events", str(size), topic=topic) for topic, size in ((TOPIC, 60), ("fraud-labels", 15))]
    for ingester in ingesters:
        assert ingester.process.wait(timeout=300) == 0, ingester.output()
    assert_exactly_once(settings, feed)
    quarantine = table(settings, QUARANTINE)
    labels = quarantine.filter(pc.equal(quarantine["topic"], settings.topic("fraud-labels")))
    assert set(zip(labels["partition"].to_pylist(), labels["offset"].to_pylist(), strict=True)) == bad_offsets and labels.num_rows == 90
    commits = DeltaTable(table_uri(settings.lake_root, QUARANTINE)).history()
    assert {commit.get("topic") for commit in commits} >= {settings.topic(TOPIC), settings.topic("fraud-labels")}


@pytest.mark.chaos
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    feed = produce_feed(settings, 50_000)
    rng = random.Random(5)
    kills = 0
    while kills < 12:
        ingester = run_ingester(settings, "--max-events", "400", "--max-wait", "0")
        time.sleep(rng.uniform(2.5, 6.0))
        if ingester.process.poll() is not None:
            pytest.fail(f"ingester exited early: {ingester.output()}")
        ingester.process.send_signal(signal.SIGKILL)
        ingester.process.wait()
        kills += 1
    silver = DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC]))
    assert silver.version() >= 5, "the kills should interrupt an ingester that was making progress"
    assert silver.count() < len(feed.valid_ids), "the kills should leave work for the final run"
    final = run_ingester(settings, "--once")
    final.process.wait(timeout=600)
    assert final.process.returncode == 0, final.output()
    assert_exactly_once(settings, feed)


@pytest.mark.chaos
def test_two_ingesters_of_one_pipeline_frozen_and_killed_at_random_moments_land_each_record_once(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    """Started together by mistake on the same partitions, while 50,000 events arrive; each is, at random, SIGKILLed and
    restarted, or frozen inside a commit until the other has committed the same offsets (a stalled "zombie" writer).
    The fence keeps every table exactly once; without it the zombie's commits land twice."""
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    args = ("--max-events", "1000", "--max-wait", "0")
    rng = random.Random(8)
    with ThreadPoolExecutor(1) as producing:
        feeding = producing.submit(produce_feed, settings, 50_000, per_second=1_000)
        ingesters = [run_ingester(settings, *args) for _ in range(2)]
        logs, frozen = [], 0
        while not feeding.done() or frozen < 4:
            victim = rng.randrange(2)
            if ingesters[victim].process.poll() is not None:
                pytest.fail(f"ingester exited early: {ingesters[victim].output()}")
            if rng.random() < 0.7:
                frozen += freeze_inside_a_commit(ingesters[victim].process, settings.lake_root, seconds=rng.uniform(5.0, 7.0))
            else:
                time.sleep(rng.uniform(0.5, 4.0))
                ingesters[victim].process.send_signal(signal.SIGKILL)
                ingesters[victim].process.wait()
                logs.append(ingesters[victim].log)
                ingesters[victim] = run_ingester(settings, *args)
        feed = feeding.result()
    for ingester in ingesters:
        ingester.process.send_signal(signal.SIGKILL)
        ingester.process.wait()
        logs.append(ingester.log)
    final = run_ingester(settings, "--once")
    assert final.process.wait(timeout=600) == 0, final.output()
    assert_exactly_once(settings, feed)
    fenced_out = sum(log.read_text(errors="replace").count("planning again") for log in logs)
    assert fenced_out > 0, "no commit was fenced out: the test did not make the two ingesters race"


def freeze_inside_a_commit(process: subprocess.Popen[bytes], lake_root: str, seconds: float, within_s: float = 10.0) -> bool:
    """SIGSTOP ``process`` as soon as it has a lake file open (it is inside a commit), for ``seconds``; whether it was caught."""
    fds, deadline = Path(f"/proc/{process.pid}/fd"), time.monotonic() + within_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            open_files = [os.readlink(fd) for fd in fds.iterdir()]
        except OSError:  # a descriptor closed while listed
            continue
        if any(name.startswith(lake_root) and name.endswith(".parquet") for name in open_files):
            process.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            process.send_signal(signal.SIGCONT)
            return True
        time.sleep(0.002)
    return False


def test_broker_outage_of_ten_seconds_is_waited_out(tmp_path: Path) -> None:
    broker = embedded_kafka(tmp_path / "broker")
    try:
        settings = isolated_settings(broker.bootstrap_servers, tmp_path)
        feed = produce_feed(settings, 20_000, seed=12)
        ingester = run_ingester(settings, "--once", "--max-events", "2000")
        time.sleep(6)
        assert ingester.process.poll() is None, "ingester finished before the outage"
        broker.stop()
        time.sleep(10)
        broker.start()
        ingester.process.wait(timeout=600)
        assert ingester.process.returncode == 0, ingester.output()
        assert_exactly_once(settings, feed)
    finally:
        broker.stop()


def test_the_running_ingester_serves_prometheus_metrics(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(kafka.bootstrap_servers, tmp_path)
    feed = produce_feed(settings, 1000, seed=13)
    port = free_port()
    landed = f'edgelake_ingest_events_total{{outcome="silver",topic="{TOPIC}"}} {len(feed.valid_ids)}.0'
    caught_up = 'edgelake_ingest_lag_events{partition="0",topic="' + settings.topic(TOPIC) + '"} 0.0'
    ingester = run_ingester(settings, "--metrics-port", str(port), "--max-wait", "0")
    try:
        deadline = time.monotonic() + 60
        body = ""
        # The lag is measured after a batch's counts are (a call to the broker): a scrape in between sees the one but not the other.
        while time.monotonic() < deadline and not (landed in body and caught_up in body):
            time.sleep(1)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
    finally:
        ingester.process.terminate()
        ingester.process.wait(timeout=30)
    assert landed in body
    assert f'edgelake_ingest_events_total{{outcome="quarantined",topic="{TOPIC}"}} 10.0' in body
    assert caught_up in body
    assert "edgelake_ingest_batch_seconds_count" in body


def test_a_batch_runs_again_while_the_lake_storage_fails_and_the_error_surfaces_after_the_stall_limit() -> None:
    from edgelake.ingest.loop import _retrying_lake

    failures = [OSError("Generic S3 error: connection refused"), OSError("Generic S3 error: end of file")]

    def batch() -> dict[str, dict[str, int]]:
        if failures:
            raise failures.pop(0)
        return {TOPIC: {"silver": 1}}

    assert _retrying_lake(batch) == {TOPIC: {"silver": 1}} and not failures
    failures.append(OSError("still down"))
    with pytest.raises(OSError, match="still down"):
        _retrying_lake(batch, max_stall_s=0)
