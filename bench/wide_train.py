"""Fraud training's memory on a wide file: peak RSS against the input matrix it fills, at two sizes in one run.

A seeded wide file (``bench.wide_file``: numeric and text columns, missing cells, two planted signals) is
turned into silver transactions and labels as ingest lands them (``bench.wide_file.silver_tables``, no broker), the lake's
gold build makes the card features, and ``train fraud --source file`` learns from it in a Python process
of its own, whose peak RSS (``peak_rss_mb``, Spark's JVM aside) is the figure. The same runs on a sixth of
the rows first: bounded memory shows as peak RSS growing with the input matrix, not with the file. Writing the
file and the lake happens in a process of its own, outside the figure.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgelake.bench.train import _in_own_process
from edgelake.bench.wide_file import silver_tables, write_wide_file
from edgelake.settings import Settings

EPOCHS = 2  # memory does not grow with epochs; the time does
SMALLER = 6  # the baseline run has 1/SMALLER of the rows


def run(settings: Settings, rows: int, numeric: int, categorical: int, master: str, device: str = "auto") -> dict[str, Any]:
    """Peak RSS of fraud training on a wide file of ``rows`` rows and on one of ``rows // SMALLER``, each in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-wide-") as scratch:
        runs = {}
        for size, count in (("baseline", max(1_000, rows // SMALLER)), ("full", rows)):
            folder = Path(scratch) / size
            _in_own_process(_lake, folder, count, numeric, categorical)
            runs[size] = _in_own_process(_trained, settings, folder, master, device)
    baseline, full = runs["baseline"], runs["full"]
    return {
        "rows": rows,
        "columns": numeric + categorical,
        "inputs": full["inputs"],
        "matrix_mb": full["matrix_mb"],
        "peak_rss_mb": full["peak_rss_mb"],
        "baseline_rows": baseline["rows"],
        "baseline_matrix_mb": baseline["matrix_mb"],
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        # Above the matrix: what training holds besides it (TensorFlow, the fit's copies, the quadratic regression's sample).
        "overhead_mb": round(full["peak_rss_mb"] - full["matrix_mb"]),
        "peak_ratio": round(full["peak_rss_mb"] / baseline["peak_rss_mb"], 2),
        "matrix_ratio": round(full["matrix_mb"] / baseline["matrix_mb"], 2),
        "roc_auc": full["roc_auc"],
        "train_seconds": full["seconds"],
    }


def _lake(folder: Path, rows: int, numeric: int, categorical: int) -> None:
    """A wide file of ``rows`` rows, landed as silver transactions and labels in ``folder``'s lake."""
    from deltalake import write_deltalake

    from edgelake.lake.catalog import Lake
    from edgelake.lake.tables import SILVER

    folder.mkdir(parents=True)
    path = folder / "wide.parquet"
    write_wide_file(path, rows, numeric, categorical, seed=7)
    lake = Lake(str(folder / "lake"))
    for tables in silver_tables(path, datetime(2025, 1, 1, tzinfo=UTC)):
        for spec, table in zip((SILVER["transactions"], SILVER["fraud-labels"]), tables, strict=True):
            write_deltalake(lake.uri(spec), table, mode="append", partition_by=list(spec.partition_by), storage_options=lake.storage_options)
    path.unlink()


def _trained(settings: Settings, folder: Path, master: str, device: str) -> dict[str, Any]:
    """Build gold and train on ``folder``'s lake in this process; the run's figures."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.training.fraud import FraudConfig, train_fraud

    lake = Lake(str(folder / "lake"))
    spark = spark_session(master, "edgelake-bench-wide", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
    build_card_features(spark, lake)
    config = FraudConfig(source="file", epochs=EPOCHS, device=device)  # type: ignore[arg-type]  # bench's --device is free text
    metrics = train_fraud(spark, lake, folder / "model", config).metrics
    spark.stop()
    examples = sum(metrics["split"][part] for part in ("train", "validation", "test"))
    return {
        "rows": examples,
        "inputs": metrics["inputs"]["count"],
        "matrix_mb": round(examples * metrics["inputs"]["count"] * 4 / 2**20),
        "peak_rss_mb": metrics["peak_rss_mb"],
        "roc_auc": round(metrics["roc_auc"], 4),
        "seconds": metrics["seconds"],
    }
