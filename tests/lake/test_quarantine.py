"""``edgelake quarantine list|show`` over what a real ingest refused."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from edgelake.contracts import Transaction
from edgelake.settings import Settings
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.catalog import Lake
from edgelake.lake.quarantine import QuarantineFilter, by_reason, quarantined
from support import command_env


def test_list_counts_refusals_per_reason_and_show_prints_the_record_as_it_arrived(settings: Settings) -> None:
    topic = settings.topic(Transaction.topic)
    good = list(transactions(SyntheticConfig(seed=11), 5))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for tx in good:
        producer.send(topic, key=tx.key, value=tx.to_bytes(), partition=0)
    for n in range(3):
        producer.send(topic, value=b"not json %d" % n, partition=0)
    negative = json.loads(good[0].to_bytes()) | {"event_id": "neg-1", "amount": -5.0}
    producer.send(topic, value=json.dumps(negative).encode(), partition=0)
    producer.flush()
    producer.close()
    ingest(settings, IngestOptions(topics=(Transaction.topic,)), once=True)

    rows = quarantined(Lake.from_settings(settings), QuarantineFilter(topic))
    assert rows.num_rows == 4
    counts = {row["reason"]: row["records"] for row in by_reason(rows).to_pylist()}
    assert sorted(counts.values()) == [1, 3]
    assert quarantined(Lake.from_settings(settings), QuarantineFilter(topic, reason="amount")).num_rows == 1
    assert quarantined(Lake.from_settings(settings), QuarantineFilter(topic, since=datetime.now(UTC) + timedelta(hours=1))).num_rows == 0

    listed = _cli(settings, "list", "--topic", "transactions")
    assert "4 quarantined records" in listed and all(reason[:40] in listed for reason in counts), listed
    records = _cli(settings, "list", "--topic", "transactions", "--records", "--reason", "JSON")
    assert "3 quarantined records" in records, records
    offset = next(row["offset"] for row in rows.to_pylist() if row["value"] == b"not json 1")
    shown = _cli(settings, "show", "transactions", "0", str(offset))
    assert "value: not json 1" in shown and f"partition 0 offset {offset}" in shown, shown
    missing = _cli(settings, "show", "transactions", "0", "999999", status=2)
    assert "no quarantined record" in missing


def _cli(settings: Settings, *args: str, status: int = 0) -> str:
    env = command_env(settings, COLUMNS="250")
    result = subprocess.run([sys.executable, "-m", "edgelake", "quarantine", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr
    return result.stdout + result.stderr
