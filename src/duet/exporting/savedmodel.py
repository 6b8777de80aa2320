"""The exported ONNX graph -> a TensorFlow SavedModel that TF Serving loads unchanged.

Two signatures, both returning ``logits``, ``probabilities`` and ``features``:

- ``serving_default``: ``pixels``, uint8 ``(N, 3, S, S)`` centre crops, exactly
  the ONNX graph's input (normalisation inside);
- ``serving_bytes``: ``image_bytes``, a string ``(N,)`` of encoded images
  (JPEG, PNG, GIF, BMP), decoded, resized and centre-cropped inside the graph
  by TensorFlow, so TF Serving's REST ``{"instances": [{"b64": ...}]}`` needs
  no client-side preprocessing. Its decoder and resize kernel are
  TensorFlow's, not duet's (Pillow + torch's antialiased uint8 resize), and it
  does not apply EXIF orientation: its export gate therefore asks for 99.5 %
  top-1 agreement and reports the difference, where ``serving_default`` must
  match exactly.

Written in TF Serving's layout, ``SAVEDMODEL_DIR/<name>/<version>/saved_model.pb``
+ ``variables/``, beside a ``models.config`` that serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from duet.artifacts.model_package import INPUT_NAME
from duet.data.preprocess import PreprocessSpec
from duet.exporting.onnx_graph import GRAPH_OUTPUTS
from duet.exporting.tf_graph import OnnxInTf
from duet.system.tensorflow_import import import_tensorflow

tf = import_tensorflow()

SIGNATURE_PIXELS = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
BYTES_INPUT = "image_bytes"
_TF_RESIZE = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def build_module(onnx_path: Path, spec: PreprocessSpec) -> Any:
    """A ``tf.Module`` with ``pixels(uint8 NCHW)`` and ``image_bytes(string (N,))``
    functions, each returning ``{logits, probabilities, features}``."""
    core = OnnxInTf(onnx.load(str(onnx_path)))
    size = spec.image_size
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, 3, size, size], tf.uint8, name=INPUT_NAME)], autograph=False)
    def pixels(batch: Any) -> dict[str, Any]:
        out = core(batch)
        return {name: out[name] for name in GRAPH_OUTPUTS}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def image_bytes(batch: Any) -> dict[str, Any]:
        crops = tf.map_fn(
            lambda b: decode_centre_crop(b, spec),
            batch,
            fn_output_signature=tf.TensorSpec([3, size, size], tf.uint8),
        )
        return pixels(crops)

    module.pixels = pixels
    module.image_bytes = image_bytes
    return module


def decode_centre_crop(data: Any, spec: PreprocessSpec) -> Any:
    """One encoded image -> uint8 ``(3, S, S)``: duet's evaluation geometry
    (``duet.data.preprocess.to_load_square`` then the centre crop) in TensorFlow ops."""
    rgb = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    rgb.set_shape([None, None, 3])
    s = spec.load_size
    h, w = tf.shape(rgb)[0], tf.shape(rgb)[1]
    scale = tf.cast(s, tf.float64) / tf.cast(tf.minimum(h, w), tf.float64)
    nh = tf.maximum(s, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
    nw = tf.maximum(s, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))

    def resized() -> Any:
        method = _TF_RESIZE[spec.interpolation]
        y = tf.image.resize(tf.cast(rgb, tf.float32), tf.stack([nh, nw]), method=method, antialias=method != "nearest")
        return tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(tf.equal(nh, h), tf.equal(nw, w))
    square = tf.cond(same, lambda: rgb, resized)
    off = (s - spec.image_size) // 2
    top, left = (nh - s) // 2 + off, (nw - s) // 2 + off
    crop = square[top : top + spec.image_size, left : left + spec.image_size, :]
    return tf.transpose(crop, [2, 0, 1])


def write_savedmodel(module: Any, version_dir: Path) -> None:
    """Save ``module`` (from :func:`build_module`) to ``version_dir`` (``.../<name>/<version>``)."""
    tf.saved_model.save(
        module,
        str(version_dir),
        signatures={SIGNATURE_PIXELS: module.pixels, SIGNATURE_BYTES: module.image_bytes},
    )


def models_config(name: str, base_path: str) -> str:
    """TF Serving's ``--model_config_file`` text for one model (``base_path``: the
    folder holding the numbered versions, as TF Serving will see it)."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
