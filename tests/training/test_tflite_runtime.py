"""The int8 vision model under both TFLite runtimes an edge device may have: LiteRT (``ai_edge_litert``) in
this process, and ``tflite_runtime`` 2.14 with NumPy 1 in its own venv, ``.venv-tflite``, made by ``make test``.

That venv has neither the project nor TensorFlow: it loads ``edgelake/interpreters.py`` by file path,
which checks that the module needs nothing but NumPy and a runtime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support import REPO

TFLITE_VENV = REPO / ".venv-tflite"
# Run with `python -I`, so that neither the working directory nor PYTHONPATH can lend it the project.
CHILD = """
import importlib.util, json, sys
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("edgelake_tflite", sys.argv[1])
tflite = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tflite)
model, x, out = Path(sys.argv[2]), np.load(sys.argv[3]), Path(sys.argv[4])
names = {}
for kernels, default_delegates in (("default", True), ("builtin", False)):
    interpreter = tflite.load_interpreter(model, "tflite_runtime", default_delegates=default_delegates)
    names[kernels] = tflite.runtime_name(interpreter)
    np.save(out / f"{kernels}.npy", tflite.predict(interpreter, x))
print(json.dumps(names))
"""


@pytest.fixture(scope="module")
def x_test(frames_lake) -> np.ndarray:
    """The test frames of ``frames_lake``."""
    from edgelake.lake.catalog import Lake
    from edgelake.training.vision import load_frames

    return load_frames(Lake(frames_lake.root)).x_test


def tflite_runtime_outputs(model: Path, x: np.ndarray, directory: Path) -> dict[str, np.ndarray]:
    """The model's outputs for ``x`` under tflite_runtime in ``.venv-tflite``, with its default delegates and with
    its built-in kernels only, by those names; fails the test when that venv is missing."""
    python = TFLITE_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(
            f"{TFLITE_VENV} is missing: run `make test`, or `bash infra/tflite-runtime-venv.sh` before pytest, "
            "to create it (tflite-runtime 2.14 with numpy<2)",
            pytrace=False,
        )
    np.save(directory / "x.npy", x)
    child = subprocess.run(
        [str(python), "-I", "-c", CHILD, str(REPO / "edgelake" / "interpreters.py"), str(model), str(directory / "x.npy"), str(directory)],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.splitlines()[-1]) == {"default": "tflite_runtime", "builtin": "tflite_runtime"}
    return {kernels: np.load(directory / f"{kernels}.npy") for kernels in ("default", "builtin")}


def litert_outputs(model: Path, x: np.ndarray, default_delegates: bool) -> np.ndarray:
    from edgelake.interpreters import load_interpreter, predict, runtime_name

    interpreter = load_interpreter(model, "ai_edge_litert", default_delegates=default_delegates)
    assert runtime_name(interpreter) == "ai_edge_litert"
    return predict(interpreter, x)


def test_int8_model_gives_the_same_classes_under_litert_and_tflite_runtime(vision_run, x_test, tmp_path: Path) -> None:
    model = vision_run.files["vision_int8.tflite"]

    other = tflite_runtime_outputs(model, x_test, tmp_path)
    builtin = litert_outputs(model, x_test, default_delegates=False)
    default = litert_outputs(model, x_test, default_delegates=True)

    # The same kernels give the same outputs, bit for bit, in either runtime and NumPy 1 or 2.
    np.testing.assert_array_equal(other["builtin"], builtin)
    # LiteRT's XNNPACK rounds differently: a class near a tie may flip (2 in 1,000 here, 7 in 10,000 in the full run).
    assert np.mean(other["default"].argmax(axis=1) == default.argmax(axis=1)) >= 0.99


def test_int8_model_agrees_with_the_float_model_under_both_runtimes(vision_run, x_test, tmp_path: Path) -> None:
    """At least 95% here (2 epochs on 4,000 frames); the full run's acceptance bar is 99% (see training.vision)."""
    import keras

    model = vision_run.files["vision_int8.tflite"]
    float_model = keras.models.load_model(vision_run.files["vision.keras"])
    float_classes = float_model.predict(x_test, batch_size=1024, verbose=0).argmax(axis=1)

    litert = np.mean(litert_outputs(model, x_test, default_delegates=True).argmax(axis=1) == float_classes)
    tflite_runtime = np.mean(tflite_runtime_outputs(model, x_test, tmp_path)["default"].argmax(axis=1) == float_classes)

    assert litert == pytest.approx(vision_run.metrics["int8_agreement"], abs=0.001)
    assert litert >= 0.95 and tflite_runtime >= 0.95, (litert, tflite_runtime)
