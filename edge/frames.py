"""Camera stand-ins: frames from a folder of images, or Fashion-MNIST's test images with their labels."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelake.errors import UserError
from edgelake.fashion_mnist import SIDE, read_split

FASHION_MNIST = "fashion-mnist"
IMAGE_SUFFIXES = (".npy", ".pgm")


class FramesUnusable(UserError, ValueError):
    """An image in the frames folder that is not 8-bit grayscale."""


@dataclass(frozen=True)
class Frame:
    """One captured frame: an id unique on this device, its pixels (H×W×1 uint8) and, when known, the true class index."""

    frame_id: str
    pixels: np.ndarray
    label: int | None


def camera(source: str, fashion_mnist_dir: Path, offset: int = 0) -> Iterator[Frame]:
    """The frames of ``source``: ``fashion-mnist`` (its test split from ``offset``, round and round) or a folder."""
    if source == FASHION_MNIST:
        return fashion_mnist_frames(fashion_mnist_dir, offset)
    return folder_frames(Path(source))


def fashion_mnist_frames(directory: Path, offset: int = 0) -> Iterator[Frame]:
    """Fashion-MNIST's 10,000 labelled test images as an endless camera, starting at image ``offset``."""
    images = [(np.frombuffer(image, np.uint8).reshape(SIDE, SIDE, 1), label) for image, label in read_split(directory, "test")]
    for lap in itertools.count():
        for index in range(len(images)):
            number = (offset + index) % len(images)
            pixels, label = images[number]
            yield Frame(f"fashion-mnist/test/{number:05d}" + (f"/lap{lap}" if lap else ""), pixels, label)


def folder_frames(directory: Path) -> Iterator[Frame]:
    """Each image in ``directory``, in name order: ``.npy`` arrays or binary PGM (P5) files, 8-bit grayscale.

    A file in a sub-folder named by a class index (``3/coat.pgm``) is labelled with that class.
    """
    if not directory.is_dir():
        raise UserError(f"no frames folder at {directory} (give a folder of .npy or .pgm images, or 'fashion-mnist')")
    for path in sorted(p for p in directory.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file()):
        parent = path.parent.name
        label = int(parent) if path.parent != directory and parent.isdigit() else None
        yield Frame(path.relative_to(directory).as_posix(), _grayscale(path), label)


def _grayscale(path: Path) -> np.ndarray:
    pixels = np.load(path, allow_pickle=False) if path.suffix == ".npy" else _pgm(path.read_bytes())
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 1):
        raise FramesUnusable(f"{path}: expected an 8-bit grayscale image, got {pixels.dtype} {pixels.shape}")
    return pixels.reshape(*pixels.shape[:2], 1)


def _pgm(data: bytes) -> np.ndarray:
    """A binary 8-bit PGM image: 'P5', width, height, maxval (<256), whitespace-separated, then the pixels."""
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while data[position : position + 1].isspace():
            position += 1
        if data[position : position + 1] == b"#":
            position = data.index(b"\n", position) + 1
            continue
        end = position
        while end < len(data) and not data[end : end + 1].isspace():
            end += 1
        fields.append(data[position:end])
        position = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5" or maxval > 255:
        raise FramesUnusable(f"not an 8-bit binary PGM image ({magic!r}, maxval {maxval})")
    pixels = np.frombuffer(data, np.uint8, count=width * height, offset=position + 1)
    return pixels.reshape(height, width)
