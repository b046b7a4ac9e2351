"""TFLite export shared by the models: float and int8 conversion (needs TensorFlow).

Running the exported models is :mod:`edgelake.interpreters`' job.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras


def float_tflite(model: keras.Model) -> bytes:
    """The model as a float32 TFLite flatbuffer."""
    return _convert(model)


def quantize_int8(model: keras.Model, representative: np.ndarray) -> bytes:
    """The model with full-integer post-training quantization: int8 weights, activations, input and output.

    ``representative`` holds typical inputs (a few hundred), in the model's own input
    domain, from which the activations' ranges are calibrated.
    """
    import tensorflow as tf

    def int8(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(representative, model.inputs[0].dtype)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    return _convert(model, int8)



def _convert(model: keras.Model, configure: Callable[[Any], None] | None = None) -> bytes:
    """The model converted (batch dimension left open), with ``configure`` applied to the converter first.

    Keras prints the SavedModel it exports on the way to stdout unless interactive
    logging is off; it is turned off for the conversion.
    """
    import keras
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if configure:
        configure(converter)
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
            return converter.convert()
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


def _representative(samples: np.ndarray, dtype: str) -> Callable[[], Iterator[list[np.ndarray]]]:
    def batches() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [sample[np.newaxis].astype(dtype)]

    return batches
