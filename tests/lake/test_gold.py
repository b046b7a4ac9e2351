"""Gold tables built by Spark equal a plain pandas computation on the same silver data, built
whole or incrementally, and each build commits exactly once what it processed.

Silver tables are written directly, as ingest would write them (no broker): ULB and
synthetic transactions with their labels, Shuttle and hand-made IoT readings.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from edgelake.cli import app
from edgelake.contracts import Event, FraudLabel, IoTReading, Transaction
from edgelake.ingest.sources import shuttle, synthetic, ulb
from edgelake.lake import gold
from edgelake.lake.catalog import Lake, history
from edgelake.lake.features.definitions import DISTINCT_MERCHANT_WINDOWS, FEATURE_VERSION, WINDOWS
from edgelake.lake.tables import GOLD, SILVER
from support import append_silver

SYNTHETIC = synthetic.SyntheticConfig(seed=11, cards=60, merchants=80, fraud_rate=0.05)
PARTITIONS = 2


class Silver:
    """A lake whose silver tables are appended to as ingest would: events split over topic
    partitions by key, at consecutive offsets in each."""

    def __init__(self, root: Path | str) -> None:
        self.root = str(root)
        self.next_offset: dict[tuple[str, int], int] = defaultdict(int)

    def append(self, events: Sequence[Event]) -> None:
        by_partition: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            by_partition[zlib.crc32(event.key) % PARTITIONS].append(event)
        for partition, chunk in sorted(by_partition.items()):
            where = (chunk[0].topic, partition)
            append_silver(self.root, chunk, partition, self.next_offset[where])
            self.next_offset[where] += len(chunk)

    def frame(self, event_type: type[Event]) -> pd.DataFrame:
        return Lake(self.root).open(SILVER[event_type.topic].name).to_pyarrow_table().to_pandas()

    def gold(self, name: str) -> pa.Table:
        return Lake(self.root).open(name).to_pyarrow_table()

    def version(self, name: str) -> int:
        return Lake(self.root).open(name).version()


# --- the reference: each definition of lake/features/ and lake/tables.py, computed plainly -------------------


def _micros(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


def expected_card_features(tx: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, card in tx.groupby("card_id"):
        card = card.sort_values(["event_time", "event_id"])
        times = [t.value // 1000 for t in card["event_time"]]  # microseconds
        amounts, merchants = card["amount"].tolist(), card["merchant_id"].tolist()
        for i, row in enumerate(card.itertuples()):
            so_far = [j for j in range(len(card)) if times[j] <= times[i]]
            features: dict[str, object] = {}
            for window, span in WINDOWS.items():
                inside = [j for j in so_far if times[j] > times[i] - _micros(span)]
                features[f"tx_count_{window}"] = len(inside)
                features[f"amount_sum_{window}"] = sum(amounts[j] for j in inside)
                if window in DISTINCT_MERCHANT_WINDOWS:
                    features[f"distinct_merchants_{window}"] = len({merchants[j] for j in inside})
            features["seconds_since_previous"] = (times[i] - times[i - 1]) / 1e6 if i else None
            mean = sum(amounts[j] for j in so_far) / len(so_far)
            features["amount_to_card_mean"] = amounts[i] / mean if mean != 0 else None
            rows.append(
                {"event_id": row.event_id, "card_id": row.card_id, "event_time": row.event_time, "amount": row.amount,
                 "merchant_category": row.merchant_category, **features, "event_date": row.event_date}
            )
    return pd.DataFrame(rows)


def expected_device_health(readings: pd.DataFrame) -> pd.DataFrame:
    groups: dict[tuple, list[tuple[float, bool | None]]] = defaultdict(list)
    for reading in readings.itertuples():
        minute = reading.event_time.floor("min")
        for metric, value in reading.values:
            groups[(reading.device_id, reading.sensor, metric, minute)].append((value, reading.anomaly))
    rows = []
    for (device, sensor, metric, minute), items in groups.items():
        values = [value for value, _ in items]
        flags = [flag for _, flag in items if flag is not None]
        rows.append(
            {"device_id": device, "sensor": sensor, "metric": metric, "minute": minute, "readings": len(values),
             "mean": sum(values) / len(values), "min": min(values), "max": max(values),
             "anomaly_rate": sum(flags) / len(flags) if flags else None, "event_date": minute.date()}
        )
    return pd.DataFrame(rows)


def expected_fraud_rates(tx: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    latest = labels.sort_values(["event_time", "_ingest_time", "_partition", "_offset"]).groupby("transaction_id").tail(1)
    verdict = dict(zip(latest["transaction_id"], latest["is_fraud"], strict=True))
    rows = []
    for (day, category), group in tx.groupby(["event_date", "merchant_category"]):
        flags = [verdict.get(event_id) for event_id in group["event_id"]]
        labelled = [flag for flag in flags if flag is not None]
        frauds = sum(labelled)
        rows.append(
            {"event_date": day, "merchant_category": category, "transactions": len(group), "labelled": len(labelled),
             "frauds": frauds, "fraud_rate": frauds / len(labelled) if labelled else None,
             "amount": group["amount"].sum(), "fraud_amount": sum(a for a, f in zip(group["amount"], flags, strict=True) if f)}
        )
    return pd.DataFrame(rows)


KEYS = {
    "gold_card_features": ["event_id"],
    "gold_device_health": ["device_id", "sensor", "metric", "minute"],
    "gold_fraud_rates": ["event_date", "merchant_category"],
}


def assert_gold_equals(lake: Silver, name: str, expected: pd.DataFrame) -> None:
    """The gold table has its catalog schema and the expected rows: equal counts, sums within 1e-9, nulls alike."""
    table = lake.gold(name)
    assert table.schema == GOLD[name].schema
    actual = table.to_pandas().sort_values(KEYS[name]).reset_index(drop=True)
    expected = expected[table.column_names].astype(actual.dtypes.to_dict()).sort_values(KEYS[name]).reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, expected, rtol=1e-9, atol=0)


# --- lakes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ulb_lake(ulb_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Silver:
    """5,000 ULB transactions (each its own card, 49 of amount 0), the first 4,500 labelled."""
    lake = Silver(tmp_path_factory.mktemp("ulb") / "lake")
    base = datetime(2013, 9, 1, tzinfo=UTC)
    lake.append(list(ulb.transactions(ulb_csv, base, 5000)))
    lake.append(list(ulb.labels(ulb_csv, base, 4500)))
    return lake


def synthetic_lake(root: Path | str, count: int, labelled: int) -> Silver:
    lake = Silver(root)
    lake.append(list(synthetic.transactions(SYNTHETIC, count)))
    lake.append(list(synthetic.labels(SYNTHETIC, labelled)))
    return lake


@pytest.fixture(scope="module")
def synthetic_full(tmp_path_factory: pytest.TempPathFactory) -> Silver:
    """3,000 synthetic transactions of 60 cards over four weeks, the first 2,500 labelled."""
    return synthetic_lake(tmp_path_factory.mktemp("synthetic") / "lake", 3000, 2500)


def transaction(event_id: str, card_id: str, when: datetime, amount: float, merchant: str = "m-late") -> Transaction:
    return Transaction(
        event_id=event_id, event_time=when, card_id=card_id, merchant_id=merchant,
        merchant_category="grocery", amount=amount, currency="EUR",
    )


def reading(event_id: str, device: str, when: datetime, values: dict[str, float], anomaly: bool | None) -> IoTReading:
    return IoTReading(event_id=event_id, event_time=when, device_id=device, sensor="probe", values=values, anomaly=anomaly)


def metric(commit: dict, name: str) -> int:
    """A commit's metric by delta-spark's name (``numSourceRows``) or deltalake's (``num_source_rows``)."""
    metrics = commit["metrics"]
    return int(metrics[name] if name in metrics else metrics["".join(f"_{c.lower()}" if c.isupper() else c for c in name)])


# --- tests ---------------------------------------------------------------------------------------------------


def test_nothing_is_built_without_silver(spark, tmp_path: Path) -> None:
    results = gold.build_gold(spark, Lake(str(tmp_path / "lake")))
    assert [(r.table, r.changed) for r in results] == [(name, False) for name in GOLD]
    assert all(r.detail.startswith("skipped: silver_") for r in results)
    assert not (tmp_path / "lake" / "gold").exists()


@pytest.mark.parametrize("source", ["ulb_lake", "synthetic_full"])
def test_card_features_and_fraud_rates_equal_pandas(spark, source: str, request: pytest.FixtureRequest) -> None:
    lake: Silver = request.getfixturevalue(source)
    results = {r.table: r for r in gold.build_gold(spark, Lake(lake.root))}
    assert results["gold_card_features"].changed and results["gold_fraud_rates"].changed
    assert results["gold_device_health"].detail == "skipped: silver_iot_readings has no data yet"

    tx, labels = lake.frame(Transaction), lake.frame(FraudLabel)
    features = expected_card_features(tx)
    assert_gold_equals(lake, "gold_card_features", features)
    rates = expected_fraud_rates(tx, labels)
    assert_gold_equals(lake, "gold_fraud_rates", rates)
    assert results["gold_card_features"].rows_out == len(tx) and results["gold_fraud_rates"].rows_out == len(rates)

    # the data exercise what the definitions distinguish
    assert (rates["frauds"] > 0).any() and (rates["labelled"] < rates["transactions"]).any()
    if source == "ulb_lake":  # one transaction per card: no previous one; 49 of amount 0 have no ratio
        assert features["seconds_since_previous"].isna().all()
        assert features["amount_to_card_mean"].isna().sum() == 49
    else:
        assert features["seconds_since_previous"].isna().sum() == tx["card_id"].nunique()
        assert rates["fraud_rate"].isna().any()  # days and categories without labels yet
        assert ((features["tx_count_1h"] > 2).any() and (features["tx_count_24h"] > features["tx_count_1h"]).any()
                and (features["tx_count_7d"] > features["tx_count_24h"]).any())
        assert (features["distinct_merchants_7d"] < features["tx_count_7d"]).any()


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_card_features_and_fraud_rates_follow_new_and_late_silver_rows(spark, tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue("object_store").new_lake() if storage == "s3" else tmp_path / "lake"
    lake = synthetic_lake(root, 2400, 2000)
    first = {r.table: r for r in gold.build_gold(spark, Lake(lake.root))}
    assert first["gold_card_features"].rows_in == 2400

    before = lake.frame(Transaction)
    card, times = "c0000007", before[before["card_id"] == "c0000007"]["event_time"].sort_values()
    old = times.iloc[len(times) // 2].to_pydatetime()
    extra = [
        transaction("late-1", card, old - timedelta(minutes=20), 40.0),  # late: changes the card's later windows
        transaction("tie-1", card, old, 15.0),  # the same instant as an existing transaction
        transaction("edge-1", card, old + timedelta(hours=1), 5.0),  # exactly an hour later: outside its 1 h window
        transaction("zero-1", "c-new", old, 0.0),  # a new card whose mean is 0
        transaction("zero-2", "c-new", old + timedelta(seconds=1), 0.0),
    ]
    flipped = before.iloc[0]  # a late label reverses an old transaction's verdict
    relabel = FraudLabel(
        event_id="relabel-1", event_time=datetime(2025, 3, 1, tzinfo=UTC), transaction_id=flipped["event_id"],
        card_id=flipped["card_id"], is_fraud=True, source="analyst",
    )
    lake.append(list(synthetic.transactions(SYNTHETIC, 3000))[2400:] + extra)
    lake.append(list(synthetic.labels(SYNTHETIC, 2500))[2000:] + [relabel])
    second = {r.table: r for r in gold.build_gold(spark, Lake(lake.root))}
    assert second["gold_card_features"].changed and second["gold_card_features"].rows_in == 600 + len(extra)

    tx = lake.frame(Transaction)
    features = expected_card_features(tx)
    assert_gold_equals(lake, "gold_card_features", features)
    assert_gold_equals(lake, "gold_fraud_rates", expected_fraud_rates(tx, lake.frame(FraudLabel)))
    by_id, hour = features.set_index("event_id"), timedelta(hours=1)
    assert by_id.loc["tie-1", "tx_count_1h"] == 3 + ((times > old - hour) & (times < old)).sum()  # ties count
    assert by_id.loc["edge-1", "tx_count_1h"] == 1 + ((times > old) & (times < old + hour)).sum()  # an hour ago does not
    assert by_id.loc[["zero-1", "zero-2"], "amount_to_card_mean"].isna().all()

    # only the cards with new rows were recomputed, in one merge commit recording the silver version it covers
    new_ids = set(tx["event_id"]) - set(before["event_id"])
    touched = set(tx[tx["event_id"].isin(new_ids)]["card_id"])
    commit = history(Lake(lake.root), "gold_card_features", 1)[0]
    assert commit["operation"] == "MERGE" and commit["metadata"]["feature_version"] == str(FEATURE_VERSION)
    assert metric(commit, "numSourceRows") == tx["card_id"].isin(touched).sum() < len(tx)
    assert metric(commit, "numTargetRowsInserted") == len(new_ids)
    table = Lake(lake.root).open("gold_card_features")
    silver_version = lake.version("silver_transactions")
    assert table.transaction_version(f"gold_card_features/silver_transactions@features-v{FEATURE_VERSION}") == silver_version
    assert commit["metadata"]["silver_version"] == str(silver_version)

    versions = {name: lake.version(name) for name in ("gold_card_features", "gold_fraud_rates")}
    third = {r.table: r for r in gold.build_gold(spark, Lake(lake.root))}
    assert not third["gold_card_features"].changed and not third["gold_fraud_rates"].changed
    assert {name: lake.version(name) for name in versions} == versions


def test_a_new_feature_version_rebuilds_the_card_features(spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = synthetic_lake(tmp_path / "lake", 300, 300)
    gold.build_card_features(spark, Lake(lake.root))
    monkeypatch.setattr(gold, "_CARD_FEATURES", replace(gold._CARD_FEATURES, feature_version=FEATURE_VERSION + 1))
    result = gold.build_card_features(spark, Lake(lake.root))
    assert result.changed and result.rows_in == result.rows_out == 300
    commit = history(Lake(lake.root), "gold_card_features", 1)[0]
    assert commit["operation"] == "WRITE" and commit["parameters"]["mode"] == "Overwrite"
    assert commit["metadata"]["feature_version"] == str(FEATURE_VERSION + 1)
    assert_gold_equals(lake, "gold_card_features", expected_card_features(lake.frame(Transaction)))
    assert not gold.build_card_features(spark, Lake(lake.root)).changed


def test_device_health_equals_pandas_whole_and_incremental(spark, tmp_path: Path) -> None:
    lake = Silver(tmp_path / "lake")
    start = datetime(2025, 1, 1, tzinfo=UTC)
    probes = [  # another sensor, with different metrics per reading and anomaly flags missing
        reading(f"probe-{i}", "probe-1", start + timedelta(seconds=7 * i), {"t": 20.0 + i % 5, **({"rh": i / 3} if i % 2 else {})},
                None if i % 3 else bool(i % 4))
        for i in range(60)
    ] + [reading(f"quiet-{i}", "probe-2", start + timedelta(seconds=30 * i), {"t": 1.5 * i}, None) for i in range(6)]
    lake.append(list(shuttle.readings(start, 600, devices=3)) + probes)
    result = gold.build_device_health(spark, Lake(lake.root))
    assert result.changed and result.rows_in == 666
    expected = expected_device_health(lake.frame(IoTReading))
    assert_gold_equals(lake, "gold_device_health", expected)
    assert expected["anomaly_rate"].isna().any() and (expected["anomaly_rate"] > 0).any()

    late = [
        reading("late-1", "shuttle-01", start + timedelta(seconds=30), {"f1": 99.0}, True),  # into an old minute
        reading("new-1", "probe-1", start + timedelta(minutes=30), {"t": 3.0}, False),  # a new minute
    ]
    lake.append(late)
    result = gold.build_device_health(spark, Lake(lake.root))
    assert result.changed and result.rows_in == 2
    expected = expected_device_health(lake.frame(IoTReading))
    assert_gold_equals(lake, "gold_device_health", expected)
    commit = history(Lake(lake.root), "gold_device_health", 1)[0]
    touched = {(r.device_id, pd.Timestamp(r.event_time).floor("min")) for r in late}
    groups = [key for key in zip(expected["device_id"], expected["minute"], strict=True) if key in touched]
    assert commit["operation"] == "MERGE" and metric(commit, "numSourceRows") == len(groups)
    # new groups: shuttle-01's first probe reading and probe-1's new minute; shuttle-01's 9 shuttle metrics are updated
    assert (metric(commit, "numTargetRowsInserted"), metric(commit, "numTargetRowsUpdated")) == (2, 9)

    version = lake.version("gold_device_health")
    assert not gold.build_device_health(spark, Lake(lake.root)).changed
    assert lake.version("gold_device_health") == version


def test_cli_builds_gold_and_lists_the_gold_tables(spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = synthetic_lake(tmp_path / "lake", 200, 200)
    monkeypatch.setenv("EDGELAKE_LAKE_ROOT", lake.root)
    monkeypatch.setenv("COLUMNS", "250")
    masters = []
    monkeypatch.setattr("edgelake.lake.spark.spark_session", lambda master, app_name, **_: masters.append(master) or spark)
    runner = CliRunner()

    built = runner.invoke(app, ["lake", "build-gold", "--master", "local[1]"])
    assert built.exit_code == 0, built.output
    assert masters == ["local[1]"]
    lines = {line.split()[1]: line for line in built.output.splitlines() if line.startswith("│ gold_")}
    assert "built from silver_transactions" in lines["gold_card_features"] and " 200 " in lines["gold_card_features"]
    assert "skipped: silver_iot_readings has no data yet" in lines["gold_device_health"]

    listed = runner.invoke(app, ["lake", "tables"])
    rows = {line.split()[1]: line.split()[5] for line in listed.output.splitlines() if line.startswith("│ gold_")}
    assert rows == {"gold_card_features": "200", "gold_device_health": "0", "gold_fraud_rates": str(len(lake.gold("gold_fraud_rates")))}
