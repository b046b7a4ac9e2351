"""Fashion-MNIST (Debian's dataset-fashion-mnist) replayed as camera frames: 60,000 train + 10,000 test."""

from __future__ import annotations

import gzip
import itertools
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from edgelake.contracts import ImageFrame

CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def frames(
    directory: Path, start: datetime, count: int | None = None, cameras: int = 8, splits: tuple[str, ...] = ("train", "test")
) -> Iterator[ImageFrame]:
    """Frames of each split in file order, dealt round-robin to ``cameras``, one per second per camera."""
    samples = itertools.chain.from_iterable(((split, i, img, lbl) for i, (img, lbl) in enumerate(_read(directory, split))) for split in splits)
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
            split=split,  # type: ignore[arg-type]
        )


def _read(directory: Path, split: str) -> Iterator[tuple[bytes, int]]:
    images_file, labels_file = FILES[split]
    missing = [name for name in FILES[split] if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {directory}: apt-get install dataset-fashion-mnist "
            "or set EDGELAKE_FASHION_MNIST_DIR"
        )
    with gzip.open(directory / images_file) as images, gzip.open(directory / labels_file) as labels:
        magic, count, rows, cols = struct.unpack(">IIII", images.read(16))
        label_magic, label_count = struct.unpack(">II", labels.read(8))
        if (magic, label_magic) != (2051, 2049) or count != label_count or (rows, cols) != (28, 28):
            raise ValueError(f"{directory / images_file} is not a Fashion-MNIST idx file")
        label_bytes = labels.read(count)
        for index in range(count):
            yield images.read(rows * cols), label_bytes[index]
