"""Import TensorFlow safely beside PyTorch (the one place duet imports it).

Used by the tf.data backend (``duet.data.tfdata``) and by the TensorFlow
exports (``duet.exporting.savedmodel``, ``.tflite``). The order of imports and
the silenced start-up lines are explained in ``import_tensorflow``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from duet.system.extras import MissingExtra


def import_tensorflow() -> Any:
    """Import TensorFlow safely next to PyTorch and return the module.

    - Order: on this stack (tensorflow-cpu 2.21, torch 2.14, torchvision 0.29,
      triton 3.8) loading triton's bundled LLVM *after* TensorFlow segfaults
      the process; torchvision imports triton. So torch, torchvision and
      triton are imported first, then TensorFlow. If TensorFlow is already
      imported, triton is blocked instead (``duet.system.process.guard_triton``, which
      says so once: torch.compile then gets no triton kernels in this process).
    - Logging: TF_CPP_MIN_LOG_LEVEL defaults to 3, which hides TensorFlow's
      per-file C++ errors ("Premature end of JPEG data") that would interleave
      with duet's own report of the same failure. At 3 the import also runs
      with the process's stderr pointed at /dev/null, because TensorFlow's
      start-up lines (absl, oneDNN) ignore that variable. Set
      TF_CPP_MIN_LOG_LEVEL=0 to see everything.
    - GPU memory: a GPU build of TensorFlow would reserve nearly all GPU
      memory at start-up; memory growth is switched on for every GPU it sees,
      so it takes only what it uses (the pipeline runs on the CPU anyway).

    Raises:
        ConfigError: TensorFlow is not installed.
    """
    from duet.system.process import guard_triton

    # TensorFlow already loaded: triton is blocked (guard_triton says so once) and
    # torch/torchvision are safe. Otherwise load them and triton before TensorFlow.
    if not guard_triton():
        import torchvision  # noqa: F401  (pulls in triton where it is installed)

        if importlib.util.find_spec("triton") is not None:
            try:
                import triton  # noqa: F401
            except ImportError:
                pass
    quiet = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") == "3"
    try:
        with stderr_silenced(quiet):
            import tensorflow as tf
    except ImportError as e:
        raise MissingExtra(
            f"this needs TensorFlow, which cannot be imported ({e}): pip install 'duet[tf]'"
            " (or, for data, use data_backend: torch)"
        ) from None
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # TensorFlow already initialised its GPUs; too late to change
            warnings.warn(
                "TensorFlow's GPUs were initialised before duet could enable memory growth; "
                "TensorFlow may hold most of the GPU memory. Import duet.data.tfdata first.",
                RuntimeWarning,
                stacklevel=2,
            )
    return tf


@contextlib.contextmanager
def stderr_silenced(enabled: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (C++ writes there directly)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
