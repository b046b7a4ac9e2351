"""Camera stand-ins: Fashion-MNIST's labelled test images, and folders of .npy and .pgm images."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from edgelake.edge.frames import camera, folder_frames
from edgelake.settings import Settings


def test_fashion_mnist_frames_start_at_the_offset_carry_labels_and_go_round() -> None:
    directory = Settings().fashion_mnist_dir
    frames = list(itertools.islice(camera("fashion-mnist", directory, offset=9_998), 10_003))
    assert [frame.frame_id for frame in frames[:3]] == ["fashion-mnist/test/09998", "fashion-mnist/test/09999", "fashion-mnist/test/00000"]
    assert frames[10_000].frame_id == "fashion-mnist/test/09998/lap1"
    assert len({frame.frame_id for frame in frames}) == len(frames)  # unique on the device, lap after lap
    assert all(frame.pixels.shape == (28, 28, 1) and frame.pixels.dtype == np.uint8 for frame in frames)
    assert frames[2].label == 9  # the first test image is an ankle boot
    assert frames[2].pixels.max() > 0


def test_a_folder_gives_npy_and_pgm_images_labelled_by_their_class_folder(tmp_path: Path) -> None:
    image = np.arange(28 * 28, dtype=np.uint32).astype(np.uint8).reshape(28, 28)
    (tmp_path / "3").mkdir()
    np.save(tmp_path / "3" / "a.npy", image)
    (tmp_path / "b.pgm").write_bytes(b"P5\n# a comment\n28 28\n255\n" + image.tobytes())
    (tmp_path / "notes.txt").write_text("not an image")

    frames = list(folder_frames(tmp_path))

    assert [(frame.frame_id, frame.label) for frame in frames] == [("3/a.npy", 3), ("b.pgm", None)]
    for frame in frames:
        np.testing.assert_array_equal(frame.pixels[:, :, 0], image)


def test_an_image_that_is_not_8_bit_grayscale_is_refused_by_name(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb.npy: expected an 8-bit grayscale image"):
        list(folder_frames(tmp_path))
