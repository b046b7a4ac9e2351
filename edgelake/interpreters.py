"""Running TFLite models on any runtime: loading an interpreter, batched prediction with (de)quantization, latency.

Imports only NumPy: it runs wherever a TFLite runtime is installed (``ai_edge_litert``,
``tflite_runtime`` or TensorFlow), in the cloud (training's evaluation, the scoring API)
and on edge devices alike.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Runtime = Literal["ai_edge_litert", "tflite_runtime", "tensorflow"]
RUNTIMES: dict[Runtime, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}

class Interpreter(Protocol):
    """What this module uses of a TFLite interpreter (the same API in every runtime)."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def resize_tensor_input(self, input_index: int, tensor_size: Any, strict: bool = False) -> None: ...
    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> np.ndarray: ...


def load_interpreter(
    model: Path | bytes, runtime: Runtime | None = None, num_threads: int = 1, default_delegates: bool = True
) -> Interpreter:
    """An interpreter with tensors allocated, from a ``.tflite`` path or its bytes.

    Without ``runtime``, the first installed of ``ai_edge_litert``, ``tflite_runtime``
    and TensorFlow's own. ``default_delegates=False`` runs the runtime's built-in kernels
    only: LiteRT applies XNNPACK by default, several times faster on int8 models but
    rounding differently from the built-in kernels, so an int8 model's outputs can differ
    by a few quantization steps between runtimes (tflite_runtime 2.14 does not apply it to
    int8 models); with the built-in kernels they are the same bit for bit.
    """
    module = _runtime_module(runtime)
    options: dict[str, Any] = {"model_path": str(model)} if isinstance(model, Path) else {"model_content": bytes(model)}
    if not default_delegates:
        options["experimental_op_resolver_type"] = _op_resolver_types(module).BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = module.Interpreter(**options, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def runtime_name(interpreter: Interpreter) -> str:
    """The top-level package of the interpreter's runtime."""
    return type(interpreter).__module__.split(".")[0]


def predict(interpreter: Interpreter, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's (dequantized, float32) outputs for the inputs ``x``, in the model's input domain.

    Inputs go to an integer input tensor quantized with its scale and zero point; integer
    outputs come back dequantized. ``x`` is fed ``batch_size`` rows at a time, resizing
    the input tensor to each batch.
    """
    if len(x) == 0:
        return np.zeros((0, *interpreter.get_output_details()[0]["shape"][1:]), np.float32)
    return np.concatenate([_invoke(interpreter, x[start : start + batch_size]) for start in range(0, len(x), batch_size)])


def latency_ms(interpreter: Interpreter, sample: np.ndarray, runs: int = 200) -> float:
    """Median milliseconds of one invocation on a batch of one (``sample`` with its batch axis), after a warm-up."""
    _resize(interpreter, 1)
    tensor = interpreter.get_input_details()[0]
    interpreter.set_tensor(tensor["index"], _quantize(sample[:1], tensor))
    timings = []
    for _ in range(runs + 5):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings[5:]) * 1000)


def _runtime_module(runtime: Runtime | None) -> Any:
    names = [runtime] if runtime else list(RUNTIMES)
    for name in names:
        try:
            return importlib.import_module(RUNTIMES[name])
        except ImportError:
            if runtime:
                raise
    raise ImportError("no TFLite runtime: install ai-edge-litert, tflite-runtime or tensorflow")


def _op_resolver_types(module: Any) -> Any:
    """The runtime's ``OpResolverType`` enum (under ``experimental`` in TensorFlow's ``tf.lite``)."""
    return getattr(module, "OpResolverType", None) or module.experimental.OpResolverType


def _invoke(interpreter: Interpreter, batch: np.ndarray) -> np.ndarray:
    _resize(interpreter, len(batch))
    tensor = interpreter.get_input_details()[0]
    interpreter.set_tensor(tensor["index"], _quantize(batch, tensor))
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    return _dequantize(interpreter.get_tensor(output["index"]), output)


def _resize(interpreter: Interpreter, rows: int) -> None:
    tensor = interpreter.get_input_details()[0]
    if tensor["shape"][0] != rows:
        interpreter.resize_tensor_input(tensor["index"], [rows, *tensor["shape"][1:]])
        interpreter.allocate_tensors()


def _quantize(x: np.ndarray, tensor: dict[str, Any]) -> np.ndarray:
    """``x`` as the tensor's dtype: quantized with its scale and zero point where it has them."""
    dtype = np.dtype(tensor["dtype"])
    x = x.reshape(-1, *tensor["shape"][1:])
    scale, zero_point = tensor["quantization"]
    if not np.issubdtype(dtype, np.integer) or scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x.astype(np.float32) / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, tensor: dict[str, Any]) -> np.ndarray:
    scale, zero_point = tensor["quantization"]
    if not np.issubdtype(y.dtype, np.integer) or scale == 0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
