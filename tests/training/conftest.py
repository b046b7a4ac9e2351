"""A small silver camera-frames table of real Fashion-MNIST frames, and one vision model trained on it per session."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from edgelake.contracts import ImageFrame
from edgelake.settings import Settings
from support import append_silver

if TYPE_CHECKING:
    from training.vision import VisionResult

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any test imports TensorFlow

FRAMES_START = datetime(2024, 1, 1, tzinfo=UTC)


class FramesLake(NamedTuple):
    """A lake whose silver camera-frames table holds ``train`` frames at version 1, also ``test``
    frames at 2, and also ``unusable`` frames (which the vision model skips) at 3."""

    root: str
    train: int
    test: int
    unusable: int


def unusable_frames() -> list[ImageFrame]:
    """Frames the vision model cannot use: a PNG, one by reference, one without a label."""
    common = {"event_time": FRAMES_START, "device_id": "camera-x", "width": 28, "height": 28}
    return [
        ImageFrame(event_id="png", frame_id="png", encoding="png", image=b"\x89PNG", label=1, split="train", **common),
        ImageFrame(event_id="uri", frame_id="uri", image_uri="s3://frames/1.raw", label=1, split="train", **common),
        ImageFrame(event_id="nolabel", frame_id="nolabel", image=bytes(784), split="test", **common),
    ]


@pytest.fixture(scope="session")
def frames_lake(tmp_path_factory: pytest.TempPathFactory) -> FramesLake:
    """The first 4,000 train and 1,000 test frames of Fashion-MNIST, then the unusable ones."""
    from ingest.sources.fashion_mnist import frames

    lake = FramesLake(str(tmp_path_factory.mktemp("vision") / "lake"), train=4000, test=1000, unusable=3)
    directory = Settings().fashion_mnist_dir
    for split, count in (("train", lake.train), ("test", lake.test)):
        append_silver(lake.root, list(frames(directory, FRAMES_START, count=count, splits=(split,))))
    append_silver(lake.root, unusable_frames())
    return lake


@pytest.fixture(scope="session")
def vision_run(frames_lake: FramesLake, tmp_path_factory: pytest.TempPathFactory) -> VisionResult:
    """The vision model trained for 2 epochs on ``frames_lake`` (a few seconds on two CPU cores)."""
    from training.vision import train_vision

    return train_vision(frames_lake.root, tmp_path_factory.mktemp("vision-out"), device="cpu", epochs=2, batch_size=64, seed=0)


@pytest.fixture(scope="session")
def vision_dir(vision_run: VisionResult) -> Path:
    """Where the session's vision run wrote its files."""
    return vision_run.files["metrics.json"].parent
