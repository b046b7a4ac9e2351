"""Training throughput: the Spark card-feature job, and each model's training on the current device.

The feature job runs on the given Spark master and again on one core (``local[1]``), in the
same run, so the ratio shows how it scales with the cores it gets. Training figures are
samples per second of ``fit`` alone, on the device ``--device`` picks.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgelake.bench.silver import write_silver
from edgelake.fashion_mnist import Split
from edgelake.settings import Settings
from edgelake.ingest.sources.fashion_mnist import frames
from edgelake.ingest.sources.synthetic import SyntheticConfig, labels, transactions

FRAUD_EPOCHS = 3
VISION_EPOCHS = 1
WARM_UP_ROWS = 5000
TEST_IMAGES = 1000  # evaluation is not timed, but the vision run needs test frames

def run(settings: Settings, rows: int, images: int, master: str, device: str = "auto") -> dict[str, Any]:
    """Time the feature job on ``rows`` synthetic transactions, then train both models briefly."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.training.fraud import FraudConfig, train_fraud
    from edgelake.training.vision import train_vision

    with tempfile.TemporaryDirectory(prefix="edgelake-bench-train-") as scratch:
        lakes = {key: Lake(str(Path(scratch) / key / "lake")) for key in ("warm-up", "parallel", "serial")}
        config = SyntheticConfig(seed=5, cards=max(500, rows // 40))
        for key, lake in lakes.items():
            count = WARM_UP_ROWS if key == "warm-up" else rows
            write_silver(lake, transactions(config, count))
            write_silver(lake, labels(config, count))
        feature_seconds = {}
        for key, spark_master in (("serial", "local[1]"), ("parallel", master)):
            spark = spark_session(spark_master, "edgelake-bench-train")
            if key == "serial":  # the JVM compiles Spark's hot paths once, for both timed runs
                build_card_features(spark, lakes["warm-up"])
            started = time.perf_counter()
            build_card_features(spark, lakes[key])
            feature_seconds[key] = time.perf_counter() - started
            if key == "serial":
                spark.stop()
        fraud = train_fraud(
            spark, lakes["parallel"], Path(scratch) / "fraud",
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
        "fraud_samples_per_s": fraud.metrics["train_samples_per_s"],
        "vision_samples_per_s": round(vision.metrics["train_frames"] / vision.metrics["seconds_per_epoch"], 1),
    }
