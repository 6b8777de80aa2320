"""The SavedModel's ``serving_default`` signature -> TFLite flatbuffers, and a runner for them.

Converted by TensorFlow's own ``TFLiteConverter`` (the path Google documents for
SavedModels), in three kinds:

- ``fp32``: the same arithmetic as the SavedModel;
- ``fp16``: weights stored as float16 (half the size), computed in float32 on
  CPUs (or float16 on GPU delegates);
- ``int8``: full-integer quantization, calibrated on a representative set of
  the run's training images (uint8 crops, the graph's own input); weights and
  activations int8, input uint8 pixels, outputs float32.

Only ``serving_default`` is converted: TFLite has no image decoder, so a device
app decodes and crops, then calls the interpreter with uint8 pixels.

They run on the LiteRT interpreter (``ai-edge-litert``, TFLite's successor;
``tf.lite.Interpreter`` is deprecated in TensorFlow 2.20+): ``duet.serve.tf_runtimes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from duet.artifacts.model_package import INPUT_NAME
from duet.exporting.savedmodel import SIGNATURE_PIXELS

KINDS = ("fp32", "fp16", "int8")


def convert(savedmodel_dir: Path, kind: str, representative: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of ``savedmodel_dir``'s ``serving_default`` signature.

    ``representative``: uint8 ``(N, 3, S, S)`` training crops; required for int8."""
    from duet.system.tensorflow_import import import_tensorflow, stderr_silenced

    tf = import_tensorflow()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir), signature_keys=[SIGNATURE_PIXELS])
    if kind == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _one_at_a_time(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings(), stderr_silenced(True):
        # int8 calibration runs the deprecated tf.lite.Interpreter inside TensorFlow (its
        # warning is not ours to fix), and the converter prints its settings on stderr.
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


def _one_at_a_time(pixels: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    for i in range(len(pixels)):
        yield {INPUT_NAME: pixels[i : i + 1]}
