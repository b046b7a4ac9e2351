"""The vision model on real Fashion-MNIST frames from a silver table: loading, training, int8 export, samples, seeds."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edgelake.lake.catalog import Lake
from edgelake.settings import Settings

VISION_METRICS = {"accuracy", "int8_accuracy", "int8_agreement", "size_ratio", "float_latency_ms", "int8_latency_ms"}


def test_load_frames_decodes_each_split_and_skips_unusable_frames(frames_lake, caplog: pytest.LogCaptureFixture) -> None:
    from edgelake.ingest.sources.fashion_mnist import frames
    from edgelake.training.vision import load_frames

    with caplog.at_level(logging.WARNING, logger="edgelake.training.vision"):
        x_train, y_train, x_test, y_test, lineage = load_frames(Lake(frames_lake.root))

    assert lineage == {"silver_camera_frames": 3}
    assert x_train.shape == (frames_lake.train, 28, 28, 1) and x_train.dtype == np.uint8
    assert x_test.shape == (frames_lake.test, 28, 28, 1) and len(y_train) == frames_lake.train and len(y_test) == frames_lake.test
    first = next(frames(Settings().fashion_mnist_dir, datetime(2024, 1, 1, tzinfo=UTC), splits=("test",)))
    assert x_test[0].tobytes() == first.image and y_test[0] == first.label  # frame_id order: fmnist-test-00000 first
    assert "skipped 3 of 5003 frames: 2 not inline raw_u8 28x28 grayscale" in caplog.text
    assert "1 without a split or a class label" in caplog.text


def test_load_frames_reads_the_version_asked_for(frames_lake) -> None:
    from edgelake.training.vision import load_frames

    x_train, _, x_test, _, lineage = load_frames(Lake(frames_lake.root), version=1)

    assert (len(x_train), len(x_test), lineage) == (frames_lake.train, 0, {"silver_camera_frames": 1})


def test_vision_model_learns_and_its_int8_twin_agrees_at_a_quarter_of_the_size(vision_run) -> None:
    metrics = vision_run.metrics

    assert VISION_METRICS <= set(metrics)
    assert metrics["accuracy"] > 0.7, metrics  # 2 epochs on 4,000 frames; chance is 0.1
    assert metrics["int8_agreement"] >= 0.95, metrics
    assert abs(metrics["int8_accuracy"] - metrics["accuracy"]) <= 0.02, metrics
    assert metrics["size_ratio"] >= 3.5, metrics
    assert metrics["test_frames"] == 1000 and metrics["train_frames"] == 4000
    assert vision_run.lineage == {"silver_camera_frames": 3}
    written = json.loads(vision_run.files["metrics.json"].read_text())
    assert written["metrics"] == metrics and written["lineage"] == vision_run.lineage
    assert {"vision.keras", "vision_int8.tflite", "vision_float.tflite", "confusion_matrix.png", "samples.npz"} <= set(vision_run.files)
    assert all(path.is_file() for path in vision_run.files.values())
    assert vision_run.files["confusion_matrix.png"].read_bytes()[:4] == b"\x89PNG"


def test_int8_model_has_int8_input_and_output_and_batches_give_the_same_outputs(vision_run, frames_lake) -> None:
    from edgelake.interpreters import load_interpreter, predict
    from edgelake.training.vision import load_frames

    interpreter = load_interpreter(vision_run.files["vision_int8.tflite"])
    x = load_frames(Lake(frames_lake.root)).x_test[:100]

    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    np.testing.assert_array_equal(predict(interpreter, x, batch_size=1), predict(interpreter, x, batch_size=64))


def test_samples_carry_the_int8_models_own_classes(vision_run) -> None:
    from edgelake.interpreters import load_interpreter, predict

    samples = np.load(vision_run.files["samples.npz"])
    predicted = predict(load_interpreter(vision_run.files["vision_int8.tflite"]), samples["inputs"]).argmax(axis=1)

    assert samples["inputs"].shape == (16, 28, 28, 1) and samples["inputs"].dtype == np.uint8
    assert predicted.tolist() == samples["expected"].tolist() == vision_run.extra["samples"]["expected"]
    assert len(set(samples["expected"].tolist())) >= 5  # spread over classes


def test_saved_keras_model_reloads_with_the_same_outputs(vision_run, frames_lake) -> None:
    import keras

    from edgelake.training.vision import load_frames

    x = load_frames(Lake(frames_lake.root)).x_test[:50]
    reloaded = keras.models.load_model(vision_run.files["vision.keras"])
    samples = np.load(vision_run.files["samples.npz"])

    assert reloaded.predict(samples["inputs"], verbose=0).argmax(axis=1).tolist() == samples["expected"].tolist()
    assert reloaded.predict(x, verbose=0).shape == (50, 10)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_same_seed_gives_the_same_metrics(vision_run, frames_lake, tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> None:
    from edgelake.training.vision import train_vision

    lake = request.getfixturevalue("object_store").copy_lake(frames_lake.root) if storage == "s3" else frames_lake.root
    again = train_vision(Lake(lake), tmp_path, device="cpu", epochs=2, batch_size=64, seed=0)

    for name in ("accuracy", "int8_accuracy", "int8_agreement", "size_ratio"):
        assert again.metrics[name] == pytest.approx(vision_run.metrics[name], abs=0.002), name
    assert again.lineage == vision_run.lineage


def test_limit_trains_on_a_subset_and_evaluates_on_every_test_frame(frames_lake, tmp_path: Path) -> None:
    from edgelake.training.vision import train_vision

    result = train_vision(Lake(frames_lake.root), tmp_path, device="cpu", epochs=1, batch_size=64, limit=500)

    assert (result.metrics["train_frames"], result.metrics["test_frames"]) == (500, 1000)


def test_cpu_strategy_and_gpu_refused_without_one() -> None:
    import tensorflow as tf

    from edgelake.training.devices import NoGpu, training_strategy

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    strategy, description = training_strategy("auto")
    assert strategy.num_replicas_in_sync == 1 and "CPU" in description
    with pytest.raises(NoGpu, match="--device gpu"):
        training_strategy("gpu")
