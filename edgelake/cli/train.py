"""``edgelake train``: train a model from the lake and publish it, signed, to the model registry."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from edgelake.console import console, metric_text, reported_errors
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from edgelake.lake.catalog import Lake
    from edgelake.training.devices import Device as TrainingDevice
    from edgelake.training.fraud import FraudConfig
    from edgelake.training.registry import ModelVersion

app = typer.Typer(help="Train the fraud and vision models from the lake and publish them to the registry.", no_args_is_help=True)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Source(str, Enum):
    ulb = "ulb"
    synthetic = "synthetic"
    file = "file"
    all = "all"


class Stage(str, Enum):
    canary = "canary"
    production = "production"


DEVICE_OPTION = typer.Option(Device.auto, "--device", help="auto: every visible GPU (MirroredStrategy, mixed precision), else CPU.")
SEED_OPTION = typer.Option(1, "--seed", help="Seeds Python, NumPy and TensorFlow; the same seed and data give the same metrics.")
PROMOTE_OPTION = typer.Option(None, "--promote-to", help="Also promote the new version to this stage (it is published as a candidate).")


@app.command("fraud")
def fraud(
    ctx: typer.Context,
    source: Source | None = typer.Option(
        None, "--source", help="Which transactions to learn from: ulb, synthetic, file (your own files: any other producer) or all; "
        "default ulb, or the --since-version run's."
    ),
    cutoff: datetime | None = typer.Option(None, "--cutoff", help="Only labels known by this time (UTC ISO 8601); default now."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    device: Device = DEVICE_OPTION,
    seed: int = SEED_OPTION,
    master: str | None = typer.Option(None, "--master", help="Spark master for the feature job; default the spark_master setting."),
    promote_to: Stage | None = typer.Option(
        None, "--promote-to", help="Also promote the new version: canary puts it in shadow, judged against production on matured labels."
    ),
    since_version: int | None = typer.Option(
        None, "--since-version", min=1,
        help="Retrain version N on the lake as of now (its source unless --source) and put the new version in shadow; refused when "
        "nothing N learned from has changed.",
    ),
) -> None:
    """Build features with Spark, train the fraud model on the earlier transactions, test it on the later ones, publish it."""
    from datetime import UTC

    from edgelake.training.fraud import FraudConfig

    settings: Settings = ctx.obj
    with reported_errors():
        if since_version is not None:
            if promote_to is Stage.production:
                raise UserError("a retrained version enters shadow and the gate promotes it: leave out --promote-to production")
            source = source or Source(retrained_source(settings, since_version))
            promote_to = Stage.canary
        config = FraudConfig(
            source=(source or Source.ulb).value, cutoff=cutoff.replace(tzinfo=cutoff.tzinfo or UTC) if cutoff else None,
            epochs=epochs, seed=seed, device=device.value,
        )
        published = train_and_publish_fraud(settings, config, master or settings.spark_master, promote_to, since_version)
    print_published(published)


def retrained_source(settings: Settings, version: int) -> str:
    """The source fraud ``version`` learned from; UserError if none of the tables it learned from changed since."""
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry
    from edgelake.training.fraud import SILVER_TABLES

    lake = Lake.from_settings(settings)
    manifest = registry.get(registry.Registry.from_settings(settings), "fraud", version).manifest
    learned = {table: manifest.lineage.get(table) for table in SILVER_TABLES}
    if all(lake.open(table).version() == at for table, at in learned.items()):
        tables = ", ".join(f"{table}@v{at}" for table, at in learned.items())
        raise UserError(f"nothing new since fraud v{version}: it learned from {tables}, which have not changed")
    return str(manifest.extra.get("details", {}).get("source", Source.ulb.value))


@app.command("vision")
def vision(
    ctx: typer.Context,
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Default: the measured setting in training/vision.py."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Train on at most this many frames (a seeded subset)."),
    device: Device = DEVICE_OPTION,
    seed: int = SEED_OPTION,
    promote_to: Stage | None = PROMOTE_OPTION,
) -> None:
    """Train the CNN on the lake's camera frames, quantize it to int8 TFLite, evaluate both, publish them."""
    settings: Settings = ctx.obj
    with reported_errors():
        published = train_and_publish_vision(settings, epochs, limit, device.value, seed, promote_to)
    print_published(published)


def train_and_publish_fraud(
    settings: Settings, config: FraudConfig, master: str, promote_to: Stage | None, retrained_from: int | None = None
) -> ModelVersion:
    """Bring the card features (gold) up to date with Spark on ``master``, train the fraud model on them and publish it;
    promoted to canary, it enters shadow under the fraud rollout rules (``training.matured_labels.shadow_rules``)."""
    from edgelake.lake.catalog import Lake
    from edgelake.lake.gold import build_card_features
    from edgelake.lake.spark import spark_session
    from edgelake.training import registry
    from edgelake.training.fraud import train_fraud
    from edgelake.training.matured_labels import put_in_shadow

    lake = Lake.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="edgelake-train-fraud-") as out:
        with console.status(f"building features with Spark on {master} and training the fraud model…"):
            spark = spark_session(master, "edgelake-train-fraud", jars_dir=settings.jars_path, driver_memory=settings.spark_driver_memory)
            build_card_features(spark, lake)
            result = train_fraud(spark, lake, Path(out), config)
        extra = None if retrained_from is None else {"retrained_from": retrained_from}
        shadow = promote_to is Stage.canary
        published = publish(
            settings, lake, "fraud", result.files, result.metrics, result.lineage, result.feature_version, None if shadow else promote_to, extra
        )
    if not shadow:
        return published
    models = registry.Registry.from_settings(settings)
    put_in_shadow(models, published.version, settings.fraud_label_maturity, actor=os.environ.get("USER"))
    return registry.get(models, "fraud", published.version)


def train_and_publish_vision(
    settings: Settings, epochs: int | None, limit: int | None, device: TrainingDevice, seed: int, promote_to: Stage | None
) -> ModelVersion:
    """Train and quantize the vision model and publish it."""
    from edgelake.lake.catalog import Lake
    from edgelake.training.vision import EPOCHS, train_vision

    lake = Lake.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="edgelake-train-vision-") as out:
        with console.status("training the vision model and quantizing it to int8…"):
            result = train_vision(lake, Path(out), device=device, epochs=epochs or EPOCHS, seed=seed, limit=limit)
        return publish(settings, lake, "vision", result.files, result.metrics, result.lineage, None, promote_to, result.extra)


def publish(
    settings: Settings,
    lake: Lake,
    name: str,
    files: Mapping[str, Path],
    metrics: Mapping[str, Any],
    lineage: Mapping[str, int],
    feature_version: str | None,
    promote_to: Stage | None,
    extra: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Sign a run's files with the key in the settings' data dir, publish them into ``lake``'s registry and promote them if asked."""
    from edgelake.control_db import ControlDb
    from edgelake.training import registry

    return registry.publish_run(
        lake, ControlDb.from_settings(settings), settings.data_dir / registry.KEYS_DIR, name, files, metrics=metrics, lineage=lineage,
        feature_version=feature_version, extra=extra, promote_to=promote_to.value if promote_to else None,
        reason="edgelake train --promote-to",
    )


def print_published(version: ModelVersion) -> None:
    """The new version, its stage, lineage and headline metrics."""
    manifest = version.manifest
    console.print(f"[bold]{version.name} v{version.version}[/] published as {version.stage} in {version.path}", highlight=False)
    console.print("trained on " + ", ".join(f"{table}@v{v}" for table, v in sorted(manifest.lineage.items())), highlight=False)
    listing = Table("metric", "value", title=f"{version.name} v{version.version}")
    for metric, value in sorted(manifest.metrics.items()):
        listing.add_row(metric, metric_text(value, metric))
    console.print(listing)
    if isinstance(report := manifest.extra.get("details", {}).get("inputs"), dict):
        print_inputs(report)


def print_inputs(report: dict[str, Any]) -> None:
    """Which of the data's columns the model reads, and which it set aside and why (``InputSpec.report``)."""
    attributes, categories = report["attributes"], report["categories"]
    indicators = len(report["missing_indicators"])
    console.print(
        f"inputs: {report['count']} — {len(attributes)} numeric attributes ({indicators} with a missing-value indicator), "
        f"{len(categories)} categorical ({', '.join(f'{name}: {len(values)} values' for name, values in categories.items()) or 'none'}), "
        "and the built-in amount, time of day, channel and card features",
        highlight=False,
    )
    if attributes:
        shown = ", ".join(attributes[:12]) + (f" and {len(attributes) - 12} more" if len(attributes) > 12 else "")
        console.print(f"numeric attributes read: {shown}", highlight=False)
    aside = Table("set aside", "why", title="columns the model does not read")
    for column, why in report["set_aside"].items():
        aside.add_row(column, why)
    if report["set_aside"]:
        console.print(aside)
