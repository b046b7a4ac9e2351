"""Fashion-MNIST as Debian's dataset-fashion-mnist ships it: the classes and the idx files of each split.

Shared by the producer that replays it into Kafka and by edge agents that use it as a stand-in camera.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from edgelake.errors import UserError

Split = Literal["train", "test"]
CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SIDE = 28


class DatasetMissing(UserError, FileNotFoundError):
    """Fashion-MNIST's files are not where the settings say."""


def read_split(directory: Path, split: str) -> Iterator[tuple[bytes, int]]:
    """Each image of ``split`` (28×28 raw grayscale bytes) with its class index, in file order."""
    images_file, labels_file = FILES[split]
    missing = [name for name in FILES[split] if not (directory / name).is_file()]
    if missing:
        raise DatasetMissing(
            f"Fashion-MNIST files {missing} not found in {directory}: apt-get install dataset-fashion-mnist "
            "or set EDGELAKE_FASHION_MNIST_DIR"
        )
    with gzip.open(directory / images_file) as images, gzip.open(directory / labels_file) as labels:
        magic, count, rows, cols = struct.unpack(">IIII", images.read(16))
        label_magic, label_count = struct.unpack(">II", labels.read(8))
        if (magic, label_magic) != (2051, 2049) or count != label_count or (rows, cols) != (SIDE, SIDE):
            raise UserError(f"{directory / images_file} is not a Fashion-MNIST idx file")
        label_bytes = labels.read(count)
        for index in range(count):
            yield images.read(rows * cols), label_bytes[index]
