"""Sources read the real data sets faithfully and refuse what they cannot read."""

import csv
from datetime import datetime, timedelta, UTC
from itertools import islice

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from edgelake.contracts import IoTReading, Transaction
from edgelake.settings import Settings
from edgelake.ingest.sources import SourceOptions, expected_count, source_events, ulb
from edgelake.ingest.sources.fashion_mnist import frames
from edgelake.ingest.sources.shuttle import readings
from edgelake.ingest.sources.tabular_file import MappingError, events, parse_mapping

BASE = datetime(2013, 9, 1, tzinfo=UTC)


def test_ulb_rows_become_transactions_with_pca_attributes(ulb_csv) -> None:
    with ulb_csv.open() as handle:
        rows = list(islice(csv.DictReader(handle), 3))
    txs = list(ulb.transactions(ulb_csv, BASE, count=3))
    assert [t.event_id for t in txs] == ["ulb-tx-000000", "ulb-tx-000001", "ulb-tx-000002"]
    for row, tx in zip(rows, txs, strict=True):
        assert tx.amount == float(row["Amount"])
        assert tx.event_time == BASE + timedelta(seconds=float(row["Time"]))
        assert set(tx.attributes) == {f"V{i}" for i in range(1, 29)}
        assert tx.attributes["V14"] == float(row["V14"])
        assert "Class" not in tx.attributes


def test_ulb_labels_arrive_after_their_transactions_and_keep_every_fraud(ulb_csv) -> None:
    count = 20_000
    txs = {t.event_id: t for t in ulb.transactions(ulb_csv, BASE, count=count)}
    labels = list(ulb.labels(ulb_csv, BASE, count=count))
    assert len(labels) == count
    assert all(label.event_time > txs[label.transaction_id].event_time for label in labels)
    with ulb_csv.open() as handle:
        frauds = sum(row["Class"] == "1" for row in islice(csv.DictReader(handle), count))
    assert frauds > 0 and sum(label.is_fraud for label in labels) == frauds


def test_ulb_download_is_verified(tmp_path) -> None:
    with pytest.raises(ulb.DatasetUnavailable, match="sha256"):
        ulb.verify(b"not the ULB data set")
    cached = tmp_path / "creditcard.csv"
    cached.write_text("tampered")  # a corrupt cache is not trusted: it is fetched again
    assert ulb.fetch_csv(tmp_path) == cached
    assert ulb._sha256(cached.read_bytes()) == ulb.SHA256


def test_fashion_mnist_frames_cover_both_splits(settings: Settings) -> None:
    train = list(frames(settings.fashion_mnist_dir, BASE, count=100))
    assert {f.split for f in train} == {"train"}
    assert all(len(f.image) == 784 and 0 <= f.label <= 9 for f in train)
    assert len({f.label for f in train}) == 10
    test_split = list(frames(settings.fashion_mnist_dir, BASE, count=5, splits=("test",)))
    assert [f.frame_id for f in test_split] == [f"fmnist-test-{i:05d}" for i in range(5)]
    assert {f.device_id for f in train} == {f"camera-{i:02d}" for i in range(8)}


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        next(frames(tmp_path, BASE))


def test_shuttle_readings_keep_anomaly_labels() -> None:
    samples = list(readings(BASE, count=2000, devices=4))
    assert all(len(s.values) == 9 for s in samples)
    anomalies = sum(bool(s.anomaly) for s in samples)
    assert 0 < anomalies < len(samples) / 2
    assert samples[4].event_time == BASE + timedelta(seconds=1) and samples[4].device_id == "shuttle-00"


def test_parquet_file_with_numeric_event_time(tmp_path) -> None:
    path = tmp_path / "sensors.parquet"
    pq.write_table(pa.table({"t": [0, 30], "dev": ["a", "b"], "temp": [20.5, 21.0], "bad": [0, 1]}), path)
    mapping = parse_mapping(["event_time=t,device_id=dev,label=bad"])
    got = list(events(path, IoTReading, mapping, BASE))
    assert [(r.device_id, r.values, r.anomaly) for r in got] == [("a", {"temp": 20.5}, False), ("b", {"temp": 21.0}, True)]
    assert got[1].event_time == BASE + timedelta(seconds=30)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_transaction_keeps_its_unmapped_numeric_and_text_columns_and_leaves_out_empty_cells(tmp_path, suffix: str) -> None:
    table = pa.table({
        "id": [1, 2], "t": [0, 60], "amt": [10.0, 20.0], "card": [7, 8],
        "C1": [3.0, None], "C2": [float("nan"), -1.5], "flag": [True, False], "ProductCD": ["W", None], "P_emaildomain": ["gmail.com", "  "],
        "seen": [BASE, BASE],
    })
    path = tmp_path / f"wide{suffix}"
    pacsv.write_csv(table, path) if suffix == ".csv" else pq.write_table(table, path)
    got = list(events(path, Transaction, parse_mapping(["event_id=id,event_time=t,amount=amt,card_id=card"]), BASE))
    assert [(t.event_id, t.card_id, t.attributes, t.categories) for t in got] == [
        ("1", "7", {"C1": 3.0, "flag": 1.0}, {"ProductCD": "W", "P_emaildomain": "gmail.com"}),
        ("2", "8", {"C2": -1.5, "flag": 0.0}, {}),
    ]
    assert [Transaction.parse(t.to_bytes()) for t in got] == got


@pytest.mark.parametrize(
    ("content", "mapping", "error", "message"),
    [
        ("a,b\n1,2\n", "amount=nope", MappingError, "nope are not in the file"),
        ("a,b\n1,2\n", "amunt=a", MappingError, "amunt"),
        ("a,b\n1,2\n", "amount", MappingError, "FIELD=COLUMN"),
        ("t,amount\n2024-01-01T00:00:00,1\nnot-a-time,2\n", "event_time=t,amount=amount", ValueError, "at row 1: field 'event_time'"),
        ("t,amount\n2024-01-01T00:00:00,-5\n", "event_time=t,amount=amount", ValueError, "at row 0: field 'amount'"),
        (f"t,amount,note\n0,1,ok\n1,2,{'x' * 257}\n", "event_time=t,amount=amount", ValueError, "at row 1: field 'categories.note': .*at most 256"),
    ],
)
def test_bad_files_and_mappings_are_refused_with_the_reason(tmp_path, content, mapping, error, message) -> None:
    path = tmp_path / "in.csv"
    path.write_text(content)
    with pytest.raises(error, match=message):
        list(events(path, Transaction, parse_mapping([mapping]), BASE))


def test_sources_refuse_event_kinds_they_do_not_have(settings: Settings) -> None:
    with pytest.raises(ValueError, match="does not produce iot"):
        source_events("iot", "ulb", SourceOptions(), settings)
    assert expected_count("ulb", SourceOptions(count=10)) == 10
    assert expected_count("shuttle", SourceOptions()) == 49_097
