"""Where training runs: one CPU, every visible GPU, or several workers; and the seeds that make it repeatable.

``training_strategy`` picks a ``tf.distribute`` strategy for ``--device auto|cpu|gpu``:

- ``gpu``: ``MirroredStrategy`` over every visible GPU, with the ``mixed_float16`` policy
  (models keep their output layer in float32). Restrict the GPUs with ``CUDA_VISIBLE_DEVICES``.
- ``cpu``: the default strategy with GPUs hidden and the ``float32`` policy.
- ``auto``: ``gpu`` when TensorFlow sees a GPU, else ``cpu``.

Multi-worker training: set ``TF_CONFIG`` on every worker, e.g. on the first of two
``{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}``
(``"index": 1`` on the second), and run the same command on each; the strategy is then
``MultiWorkerMirroredStrategy`` over the workers' GPUs (or CPUs with ``--device cpu``),
the data set is sharded between workers, the batch size is the global batch, and every
worker writes the same model (let worker 0's output be the one kept).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Literal

from edgelake.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

Device = Literal["auto", "cpu", "gpu"]

logger = logging.getLogger(__name__)


class NoGpu(UserError, RuntimeError):
    """``--device gpu`` where TensorFlow sees no GPU."""


def training_strategy(device: Device = "auto") -> tuple[tf.distribute.Strategy, str]:
    """The strategy for ``device`` and a one-line description of where training runs."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise NoGpu(
            "--device gpu, but TensorFlow sees no GPU (check the CUDA driver, CUDA_VISIBLE_DEVICES "
            "and that the tensorflow[and-cuda] wheel is installed); use --device cpu or auto"
        )
    use_gpu = device == "gpu" or (device == "auto" and bool(gpus))
    if not use_gpu and gpus:
        _hide_gpus()
    keras.mixed_precision.set_global_policy("mixed_float16" if use_gpu else "float32")
    hardware = f"{len(gpus)} GPU(s), mixed_float16" if use_gpu else "CPU, float32"
    if "TF_CONFIG" in os.environ:
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy()
        description = f"MultiWorkerMirroredStrategy over {len(cluster.get('worker', []))} workers ({hardware} each)"
    elif use_gpu:
        strategy = tf.distribute.MirroredStrategy()
        description = f"MirroredStrategy over {strategy.num_replicas_in_sync} replica(s) ({hardware})"
    else:
        strategy = tf.distribute.get_strategy()
        description = f"default strategy ({hardware})"
    logger.info("training on %s", description)
    return strategy, description


def set_seeds(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, also make TensorFlow's ops deterministic.

    Op determinism is process-wide and cannot be turned off again. On CPU it costs
    little for the models here (see the vision model's notes); on GPU some ops get
    slower or, lacking a deterministic kernel, raise.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _hide_gpus() -> None:
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # the GPUs were initialised already: they stay visible to this process
        logger.warning("GPUs already initialised; --device cpu cannot hide them in this process")
