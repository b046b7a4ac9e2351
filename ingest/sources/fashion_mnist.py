"""Fashion-MNIST (Debian's dataset-fashion-mnist) replayed as camera frames: 60,000 train + 10,000 test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from edgelake.contracts import ImageFrame
from edgelake.fashion_mnist import Split, read_split


def frames(
    directory: Path, start: datetime, count: int | None = None, cameras: int = 8, splits: tuple[Split, ...] = ("train", "test")
) -> Iterator[ImageFrame]:
    """Frames of each split in file order, dealt round-robin to ``cameras``, one per second per camera."""
    samples = itertools.chain.from_iterable(((split, i, img, lbl) for i, (img, lbl) in enumerate(read_split(directory, split))) for split in splits)
    for index, (split, number, image, label) in enumerate(itertools.islice(samples, count)):
        frame_id = f"fmnist-{split}-{number:05d}"
        yield ImageFrame(
            event_id=frame_id,
            event_time=start + timedelta(seconds=index // cameras),
            device_id=f"camera-{index % cameras:02d}",
            frame_id=frame_id,
            width=28,
            height=28,
            image=image,
            label=label,
            split=split,
        )
