"""Kafka's own semantics, on Apache Kafka: aborted transactions, offsets that hold only markers,
the idempotent producer across a broker restart, and fetches that honour their size limits."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from edgelake.contracts import Transaction
from edgelake.kafka import EventProducer, read_topic
from edgelake.settings import Settings
from edgelake.ingest.kafka_source import OffsetRange, RangeReader, read_range
from edgelake.ingest.lake_writer import LakeWriter
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.ingest.sources.synthetic import SyntheticConfig, transactions
from edgelake.lake.catalog import Lake, ingest_app_id
from edgelake.lake.tables import BRONZE, SILVER, table_uri
from support import embedded_kafka, isolated_settings

TOPIC = "transactions"
PARTITIONS = 4


def _end_offsets(settings: Settings) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        return consumer.end_offsets([TopicPartition(settings.topic(TOPIC), p) for p in range(PARTITIONS)])
    finally:
        consumer.close()


def _in_transactions(settings: Settings, parts: list[tuple[list[Transaction], bool]]) -> None:
    """Each part of events sent in one transaction, committed or aborted as it says."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, transactional_id=f"{settings.topic_prefix}tx")
    producer.init_transactions()
    for events, commit in parts:
        producer.begin_transaction()
        for tx in events:
            producer.send(settings.topic(TOPIC), key=tx.key, value=tx.to_bytes())
        producer.flush()
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()


def _silver_ids(settings: Settings) -> list[str]:
    return DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC])).to_pyarrow_table(columns=["event_id"])["event_id"].to_pylist()


def test_only_committed_transactions_land_and_marker_only_ranges_commit_empty(settings: Settings) -> None:
    events = list(transactions(SyntheticConfig(seed=21), 500))
    committed = events[:100] + events[200:300] + events[400:]
    _in_transactions(settings, [(events[:100], True), (events[100:200], False), (events[200:300], True), (events[300:400], False), (events[400:], True)])

    started = time.monotonic()
    ingest(settings, IngestOptions(topics=(TOPIC,)), once=True)
    assert time.monotonic() - started < 60
    silver = _silver_ids(settings)
    assert sorted(silver) == sorted(tx.event_id for tx in committed)  # read_committed: no aborted record, each committed one once
    bronze = DeltaTable(table_uri(settings.lake_root, BRONZE[TOPIC])).to_pyarrow_table(columns=["offset"])
    assert bronze.num_rows == len(committed)
    ends = _end_offsets(settings)
    assert sum(ends.values()) > len(events)  # the aborted records and the markers took offsets
    writer = LakeWriter(Lake.from_settings(settings), "edgelake-ingest", settings.topic_prefix)
    assert {tp.partition: writer.next_offset(tp.topic, tp.partition) for tp in ends} == {tp.partition: end for tp, end in ends.items()}

    # A transaction aborted whole leaves offsets with no committed record: one batch commits them without rows, then nothing is left.
    _in_transactions(settings, [(list(transactions(SyntheticConfig(seed=22), 80)), False)])
    silver_version = DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC])).version()
    moved = {tp for tp, end in _end_offsets(settings).items() if end > ends[tp]}
    assert ingest(settings, IngestOptions(topics=(TOPIC,)), once=True).batches == 1
    silver_table = DeltaTable(table_uri(settings.lake_root, SILVER[TOPIC]))
    assert silver_table.version() == silver_version + len(moved)  # one commit, with no rows, per partition the transaction touched
    assert sorted(_silver_ids(settings)) == sorted(silver)
    ends = _end_offsets(settings)
    assert all(silver_table.transaction_version(ingest_app_id(writer.pipeline, tp.topic, tp.partition)) == end - 1 for tp, end in ends.items())
    assert ingest(settings, IngestOptions(topics=(TOPIC,)), once=True).batches == 0


@pytest.mark.chaos
def test_the_idempotent_producer_writes_each_event_once_across_a_broker_crash(tmp_path: Path) -> None:
    broker = embedded_kafka(tmp_path / "broker")
    try:
        settings = isolated_settings(broker.bootstrap_servers, tmp_path / "data")
        feed = list(transactions(SyntheticConfig(seed=23), 30_000))
        producer = EventProducer(settings, broker.bootstrap_servers, linger_ms=1, batch_size=16 * 1024)
        sending = threading.Thread(target=lambda: [producer.send(tx) for tx in feed])
        sending.start()
        while producer.report.sent < 10_000:
            time.sleep(0.01)
        broker.node(1).kill()  # with batches in flight: some written, their acknowledgements lost
        broker.start()
        sending.join()
        report = producer.close(timeout_s=120)
        assert (report.acknowledged, report.failed) == (len(feed), 0)
        ids = [Transaction.parse(record.value).event_id for record in read_topic(broker.bootstrap_servers, settings.topic(TOPIC))]
        assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events written twice"
        assert set(ids) == {tx.event_id for tx in feed}
    finally:
        broker.stop()


def test_a_range_read_transfers_its_records_not_the_rest_of_the_partition(settings: Settings) -> None:
    value = b"x" * 4096
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20, batch_size=1024 * 1024)
    for _ in range(15_000):  # about 60 MB in partition 0
        producer.send(settings.topic(TOPIC), value=value, partition=0)
    producer.flush()
    producer.close()

    servers = settings.kafka_bootstrap_servers
    before = _received_by_socket(servers)
    pieces = read_range(servers, OffsetRange(settings.topic(TOPIC), 0, 0, 100))
    first = next(pieces)
    received = sum(count for socket, count in _received_by_socket(servers).items() if socket not in before)  # while the reader is open
    assert len(first) + sum(len(piece) for piece in pieces) == 100
    # A fetch's worth (max.partition.fetch.bytes, 8 MiB) and a prefetch at most, never the partition's 60 MB.
    assert 100 * 4096 < received < 2 * 8 * 1024 * 1024 + 1024 * 1024, f"{received:,} bytes received for a 400 KB range"


def test_one_reader_reads_ranges_of_any_partition_in_any_order_each_exactly(settings: Settings) -> None:
    """The ingester's reader keeps its consumer from range to range: a range of another partition, and one that starts
    before the last (a batch run again), get their own records only, nothing a fetch for the range before brought."""
    topic = settings.topic(TOPIC)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for partition in (1, 2):
        for n in range(300):
            producer.send(topic, value=f"{partition}:{n}".encode(), partition=partition)
    producer.flush()
    producer.close()

    reader = RangeReader(settings.kafka_bootstrap_servers, batch_size=70)
    try:
        for partition, start, end in ((1, 0, 200), (2, 50, 120), (1, 100, 300), (2, 0, 1), (1, 299, 300)):
            pieces = list(reader.read(OffsetRange(topic, partition, start, end)))
            values = [value.decode() for piece in pieces for value in piece.values]
            assert values == [f"{partition}:{n}" for n in range(start, end)], (partition, start, end)
            assert [n for piece in pieces for n in piece.positions] == list(range(start, end))
    finally:
        reader.close()


def _received_by_socket(servers: str) -> dict[str, int]:
    """Bytes each of this process's TCP connections to the broker received so far (the kernel's tcp_info), by local address."""
    port = servers.split(",")[0].rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-tnpiH", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True).stdout
    received, local = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            fields = line.split()
            local = fields[2] if f"pid={os.getpid()}," in line else None
        elif local is not None and (match := re.search(r"bytes_received:(\d+)", line)):
            received[local] = int(match.group(1))
    return received
