"""Event sources that producers replay into Kafka: real data sets, a generator, or the user's own files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgelake.contracts import Event, FraudLabel, IoTReading, Transaction
from edgelake.errors import UserError
from edgelake.settings import Settings

Kind = Literal["transactions", "labels", "iot", "images"]
SOURCES: dict[Kind, tuple[str, ...]] = {
    "transactions": ("ulb", "synthetic", "file"),
    "labels": ("ulb", "synthetic", "file"),
    "iot": ("shuttle", "file"),
    "images": ("fashion-mnist",),
}
FULL_SIZE = {"ulb": 284_807, "shuttle": 49_097, "fashion-mnist": 70_000}
SYNTHETIC_COUNT = 100_000  # when no --count is given


class BadSource(UserError, ValueError):
    """A source that does not produce the kind of events asked for, or a file source without its file."""


@dataclass(frozen=True)
class SourceOptions:
    """What to replay: how many events (None = all), from which file, with which column mapping."""

    count: int | None = None
    seed: int = 7
    path: Path | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    devices: int | None = None


def source_events(kind: Kind, source: str, options: SourceOptions, settings: Settings) -> Iterator[Event]:
    """The events of ``kind`` from ``source``; raises ``BadSource`` for a combination that does not exist."""
    if source not in SOURCES[kind]:
        raise BadSource(f"source '{source}' does not produce {kind}; choose one of: {', '.join(SOURCES[kind])}")
    start = settings.dataset_base_time
    if source == "ulb":
        from edgelake.ingest.sources import ulb

        if options.path is not None and not options.path.is_file():
            raise BadSource(f"{options.path} does not exist")
        path = options.path or ulb.fetch_csv(settings.cache_path)
        if kind == "transactions":
            return ulb.transactions(path, start, options.count)
        return ulb.labels(path, start, options.count, options.seed)
    if source == "synthetic":
        from edgelake.ingest.sources import synthetic

        config = synthetic.SyntheticConfig(seed=options.seed)
        count = options.count or SYNTHETIC_COUNT
        if kind == "transactions":
            return synthetic.transactions(config, count)
        return synthetic.labels(config, count)
    if source == "shuttle":
        from edgelake.ingest.sources import shuttle

        return shuttle.readings(start, options.count, options.devices or 8)
    if source == "fashion-mnist":
        from edgelake.ingest.sources import fashion_mnist

        return fashion_mnist.frames(settings.fashion_mnist_dir, start, options.count, options.devices or 8)
    from edgelake.ingest.sources import tabular_file

    if options.path is None:
        raise BadSource("the file source needs --path")
    event_types: dict[Kind, type[Event]] = {"transactions": Transaction, "labels": FraudLabel, "iot": IoTReading}
    event_type = event_types[kind]
    return tabular_file.events(options.path, event_type, options.mapping, start, options.count)


def expected_count(source: str, options: SourceOptions) -> int | None:
    """How many events a source will yield, where that is known up front (for progress bars)."""
    if source == "synthetic":
        return options.count or SYNTHETIC_COUNT
    full = FULL_SIZE.get(source)
    if full is None or options.count is None:
        return full if options.count is None else options.count
    return min(options.count, full)
