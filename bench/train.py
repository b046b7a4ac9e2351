"""Training throughput: the Spark card-feature job, and each model's training on the current device.

The feature job builds ``gold_card_features`` from scratch through delta-spark, on the given
Spark master and on one core (``local[1]``), in the same run, so the ratio shows how it scales
with the cores it gets (a ``local[N]`` run is pinned to N cores), and then on a Spark standalone
cluster of ``CLUSTER_WORKERS`` one-core workers started on loopback for the run. Each runs in a
driver process (and JVM) of its own, first builds a smaller lake (at most the timed one) ``runs`` times (the JVMs compile
Spark's hot paths: on 2 cores builds keep getting faster for about five), then the timed lake
``runs`` times from scratch; the best timed build counts.
Training figures are samples per second of ``fit`` alone, on the device ``--device`` picks.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgelake.bench.silver import write_silver
from edgelake.fashion_mnist import Split
from edgelake.settings import Settings
from edgelake.ingest.sources.fashion_mnist import frames
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions

if TYPE_CHECKING:
    from edgelake.lake.catalog import Lake

T = TypeVar("T")
FRAUD_EPOCHS = 3
VISION_EPOCHS = 1
FEATURE_RUNS = 3
CLUSTER_WORKERS = 2
TEST_IMAGES = 1000  # evaluation is not timed, but the vision run needs test frames


def run(settings: Settings, rows: int, images: int, master: str, device: str = "auto", runs: int = FEATURE_RUNS) -> dict[str, Any]:
    """Time the feature job on ``rows`` synthetic transactions, then train both models briefly."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.training.fraud import FraudConfig, train_fraud
    from edgelake.training.vision import train_vision

    with tempfile.TemporaryDirectory(prefix="edgelake-bench-train-") as scratch:
        lakes = {key: Lake(str(Path(scratch) / key / "lake")) for key in ("warm-up", "timed")}
        config = SyntheticConfig(seed=5, cards=max(500, rows // 40))
        for key, lake in lakes.items():
            count = min(rows, max(5000, rows // 5)) if key == "warm-up" else rows  # the warm-up lake is never the larger
            write_silver(lake, transactions(config, count))
            write_silver(lake, labels(config, count))

        with _standalone_cluster(Path(scratch) / "spark-cluster") as cluster_master:
            feature_seconds = {
                key: _in_own_process(_feature_seconds, settings, spark_master, lakes["warm-up"], lakes["timed"], runs)
                for key, spark_master in (("serial", "local[1]"), ("parallel", master), ("cluster", cluster_master))
            }
        spark = spark_session(master, "edgelake-bench-train", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
        build_card_features(spark, lakes["timed"])
        fraud = train_fraud(
            spark, lakes["timed"], Path(scratch) / "fraud",
            FraudConfig(source="synthetic", epochs=FRAUD_EPOCHS, device=device),  # type: ignore[arg-type]  # bench's --device is free text
        )
        spark.stop()
        frames_lake = Lake(str(Path(scratch) / "frames" / "lake"))
        start = datetime(2024, 1, 1, tzinfo=UTC)
        feeds: tuple[tuple[Split, int], ...] = (("train", images), ("test", TEST_IMAGES))
        for split, count in feeds:
            write_silver(frames_lake, frames(settings.fashion_mnist_dir, start, count=count, splits=(split,)))
        vision = train_vision(frames_lake, Path(scratch) / "vision", device=device, epochs=VISION_EPOCHS)  # type: ignore[arg-type]
    return {
        "device": vision.extra["training"]["device"],
        "spark_master": master,
        "feature_rows": rows,
        "feature_rows_per_s": round(rows / feature_seconds["parallel"], 1),
        "feature_rows_per_s_one_core": round(rows / feature_seconds["serial"], 1),
        "feature_ratio": round(feature_seconds["serial"] / feature_seconds["parallel"], 2),
        "feature_rows_per_s_standalone": round(rows / feature_seconds["cluster"], 1),
        "standalone_cluster": f"{CLUSTER_WORKERS} workers of 1 core on loopback",
        "fraud_samples_per_s": fraud.metrics["train_samples_per_s"],
        "vision_samples_per_s": round(vision.metrics["train_frames"] / vision.metrics["seconds_per_epoch"], 1),
    }


@contextmanager
def _standalone_cluster(data_dir: Path) -> Iterator[str]:
    """A Spark standalone cluster on free loopback ports for the duration; its master URL."""
    from edgelake.broker import free_ports
    from edgelake.lake.spark_cluster import SparkCluster

    cluster = SparkCluster(free_ports(2 + CLUSTER_WORKERS), data_dir, CLUSTER_WORKERS)
    try:
        yield cluster.start().address
    finally:
        cluster.stop()


def _in_own_process(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a fresh Python process: a Spark driver, and JVM, of its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as process:
        return process.submit(_with_plain_errors, function, *args).result()


def _with_plain_errors(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, its error raised again as a RuntimeError with its text: Spark's errors hold locks, which cannot be
    sent back to the parent process."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - any error, as text
        raise RuntimeError(f"{type(error).__name__}: {error}") from None


def _feature_seconds(settings: Settings, master: str, warm_up: Lake, timed: Lake, runs: int) -> float:
    """The best of ``runs`` builds of ``timed``'s card features from scratch on ``master``, after ``runs`` of ``warm_up``'s."""
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.lake.tables import GOLD_CARD_FEATURES

    cores = _local_cores(master)
    if cores is not None and cores < len(os.sched_getaffinity(0)):
        # local[N] is N task threads, but the JVM's garbage collector and compiler threads would take the other cores
        # too: the process and its JVM get exactly N cores, as on an N-core machine.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    spark = spark_session(master, "edgelake-bench-train", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
    seconds = []
    for lake in (*[warm_up] * runs, *[timed] * runs):
        shutil.rmtree(Path(lake.uri(GOLD_CARD_FEATURES)), ignore_errors=True)
        started = time.perf_counter()
        build_card_features(spark, lake)
        seconds.append(time.perf_counter() - started)
    spark.stop()
    return min(seconds[runs:])


def _local_cores(master: str) -> int | None:
    """N of a ``local[N]`` master; None for ``local[*]`` and cluster masters."""
    found = re.fullmatch(r"local\[(\d+)(,\d+)?\]", master)
    return int(found.group(1)) if found else None
