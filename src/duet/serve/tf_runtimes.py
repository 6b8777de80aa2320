"""Runtimes for the TensorFlow exports (``duet export --format savedmodel,tflite...``).

- ``tflite``: a ``model*.tflite`` file on the LiteRT interpreter (``ai-edge-litert``,
  TFLite's successor; XNNPACK on the CPU). The small-CPU deployment: int8 is
  about a quarter of the fp32 size. The interpreter runs one batch at a time, so
  calls are serialised with a lock (the server's batcher calls from a pool).
- ``savedmodel``: the SavedModel's ``serving_default`` signature in TensorFlow,
  what TF Serving runs; for ``duet evaluate``/``predict`` and ``duet bench export``
  to measure the file a team will ship.

Both take and return what :class:`duet.serve.runtimes.Runtime` does: uint8
``(N, 3, S, S)`` pixels in, logits, probabilities and features out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import FEATURES_NAME, INPUT_NAME, ModelPackage
from duet.errors import ModelError
from duet.serve.outputs import Outputs
from duet.system.extras import MissingExtra
from duet.system.tensorflow_import import stderr_silenced

TFLITE_FORMAT = {"fp32": "tflite", "fp16": "tflite-fp16", "int8": "tflite-int8"}  # variant -> export format


class TfliteRuntime:
    name = "tflite"
    device = "cpu"
    platform = "tensorflow_lite"

    def __init__(self, source: ModelPackage | Path, variant: str = "int8", threads: int = 0) -> None:
        """``source``: a model folder (its ``variant`` file) or a .tflite path."""
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ModuleNotFoundError:
            raise MissingExtra(
                "the tflite runtime needs the LiteRT interpreter ('ai_edge_litert' is not installed): "
                "pip install 'duet[tf]'"
            ) from None
        if isinstance(source, ModelPackage):
            if variant not in TFLITE_FORMAT:
                raise ModelError(f"TFLite variants are {', '.join(TFLITE_FORMAT)}; got {variant}")
            path = source.format_path(TFLITE_FORMAT[variant])
        else:
            path = Path(source)
        self.variant, self.path = variant, path
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self._runner = self._interpreter.get_signature_runner("serving_default")
            size = int(self._runner.get_input_details()[INPUT_NAME]["shape"][-1])
            with stderr_silenced(True):  # the first call prints LiteRT's "INFO: Created ... XNNPACK delegate"
                self._runner(**{INPUT_NAME: np.zeros((1, 3, size, size), np.uint8)})
        except (ValueError, RuntimeError, KeyError) as e:
            raise ModelError(f"LiteRT cannot load '{path}': {str(e).splitlines()[0]}") from e
        self.has_features = FEATURES_NAME in self._runner.get_output_details()
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> Outputs:
        with self._lock:  # one interpreter, one invocation at a time
            out: dict[str, Any] = self._runner(**{INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return Outputs(
            np.array(out["logits"]),
            np.array(out["probabilities"]),
            features=np.array(out[FEATURES_NAME]) if self.has_features else None,
        )


class SavedModelRuntime:
    name = "savedmodel"
    device = "cpu"
    platform = "tensorflow_savedmodel"

    def __init__(self, source: ModelPackage | Path) -> None:
        """``source``: a model folder (its SavedModel) or a SavedModel version folder."""
        from duet.system.tensorflow_import import import_tensorflow

        tf = import_tensorflow()
        path = source.format_path("savedmodel") if isinstance(source, ModelPackage) else Path(source)
        self.path = path
        try:
            self._model = tf.saved_model.load(str(path))
            self._fn = self._model.signatures["serving_default"]
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"TensorFlow cannot load the SavedModel '{path}': {str(e).splitlines()[0]}") from e
        self.tf = tf
        self.has_features = True

    def signature(self, name: str) -> Any:
        """One of the SavedModel's signatures (``serving_default``, ``serving_bytes``), as a function."""
        return self._model.signatures[name]

    def __call__(self, pixels: np.ndarray) -> Outputs:
        out = self._fn(**{INPUT_NAME: self.tf.constant(np.ascontiguousarray(pixels, dtype=np.uint8))})
        return Outputs(
            out["logits"].numpy(),
            out["probabilities"].numpy(),
            features=out[FEATURES_NAME].numpy(),
        )
