"""The GPUs a backend sees, by name, once per backend: what `CharRNN.setup_device` hands
to `choose_device`. Used by the framework files of that backend and by keras_model.py,
whose backend is one of them.

Each function imports its framework inside, so this module imports nothing beyond the
standard library and can be imported in either environment; call one only where its
framework is installed. An empty list means no GPU (a CPU-only build, or no driver).
"""

from __future__ import annotations


def torch_gpu_names() -> list[str]:
    """The CUDA devices torch sees, by model name."""
    import torch
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def tf_gpu_names() -> list[str]:
    """TensorFlow's physical GPUs, by the model name in their device details ("GPU" where
    the details name none)."""
    import tensorflow as tf
    return [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
            for gpu in tf.config.list_physical_devices("GPU")]


def jax_gpu_names() -> list[str]:
    """This process's JAX GPUs, by device kind. Starts JAX's backends: set XLA's thread
    limits before calling it."""
    import jax
    try:
        return [d.device_kind for d in jax.local_devices(backend="gpu")]
    except RuntimeError:  # no GPU platform in this jaxlib
        return []
