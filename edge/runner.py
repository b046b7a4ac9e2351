"""A model version ready to classify on the device, and its smoke test."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelake.interpreters import Interpreter, load_interpreter, predict, runtime_name
from edgelake.signing import Manifest


class NotAnEdgeModel(ValueError):
    """A version whose manifest does not say what a device runs or how to smoke-test it."""


@dataclass(frozen=True)
class EdgeFiles:
    """The artifacts of a version a device downloads: the TFLite model and its smoke-test samples."""

    model: str
    samples: str

    @classmethod
    def of(cls, manifest: Manifest) -> EdgeFiles:
        model = manifest.extra.get("edge_model")
        if model is None:
            int8 = [name for name in manifest.files if name.endswith("int8.tflite")]
            model = int8[0] if len(int8) == 1 else None
        samples = manifest.extra.get("samples", {}).get("file")
        if model not in manifest.files or samples not in manifest.files or "expected" not in manifest.extra.get("samples", {}):
            raise NotAnEdgeModel(f"{manifest.name} v{manifest.version} names no edge model with smoke-test samples in its manifest")
        return cls(model, samples)

    def names(self) -> tuple[str, str]:
        return self.model, self.samples


@dataclass(frozen=True)
class EdgeModel:
    """A verified version with its interpreter; one thread uses it at a time."""

    name: str
    version: int
    directory: Path
    manifest: Manifest
    interpreter: Interpreter

    @property
    def runtime(self) -> str:
        return runtime_name(self.interpreter)

    def class_name(self, index: int) -> str:
        classes = self.manifest.extra.get("classes") or []
        return str(classes[index]) if index < len(classes) else str(index)

    def classify(self, pixels: np.ndarray) -> tuple[int, float, float]:
        """The top class of one input, its probability, and the milliseconds the model took."""
        started = time.perf_counter()
        probabilities = predict(self.interpreter, pixels[np.newaxis], batch_size=1)[0]
        elapsed_ms = (time.perf_counter() - started) * 1000
        index = int(probabilities.argmax())
        return index, min(max(float(probabilities[index]), 0.0), 1.0), elapsed_ms

    def smoke_test(self) -> list[str]:
        """How the model's classes on its bundled samples differ from those the manifest expects; empty when they match."""
        samples = self.manifest.extra["samples"]
        with np.load(self.directory / EdgeFiles.of(self.manifest).samples, allow_pickle=False) as bundle:
            inputs = bundle["inputs"]
        expected = np.asarray(samples["expected"])
        if len(inputs) != len(expected) or not len(inputs):
            return [f"{len(inputs)} sample inputs for {len(expected)} expected outputs"]
        predicted = predict(self.interpreter, inputs).argmax(axis=1)
        wrong = np.flatnonzero(predicted != expected)
        return [f"sample {i}: class {predicted[i]}, the manifest expects {expected[i]}" for i in wrong]


def load_model(directory: Path, manifest: Manifest) -> EdgeModel:
    """The version in ``directory`` (already verified) with a one-thread interpreter on the best installed runtime."""
    interpreter = load_interpreter(directory / EdgeFiles.of(manifest).model, num_threads=1)
    return EdgeModel(manifest.name, manifest.version, directory, manifest, interpreter)
