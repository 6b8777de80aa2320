"""The int8 variant of an export: static quantization of ``model.onnx``, behind its own gate.

``duet export RUN --quantize int8`` adds ``model.int8.onnx`` beside ``model.onnx``:

1. calibration: up to ``CALIBRATION_IMAGES`` images of the run's TRAINING split,
   drawn with a seeded generator, each read and preprocessed exactly as
   ``duet serve`` does (``duet.serve.images.prepare``: decode -> load square ->
   centre crop, uint8 CHW); never a validation image;
2. ``onnxruntime.quantization.quant_pre_process`` (shape inference and graph
   cleanup), then ``quantize_static`` in the QDQ format: per-channel int8
   weights, uint8 activations, MinMax calibration. Only ``Conv``, ``MatMul``
   and ``Gemm`` are quantized: the graph's uint8 input, its ``Cast`` and the
   normalisation inside it stay fp32, so the variant takes the same uint8
   pixels and still returns fp32 logits, probabilities and features;
3. the int8 gate: the validation split (the images the parity gate used) runs
   through the fp32 and the int8 graphs; the variant ships only when its top-1
   accuracy is at most ``tolerance`` points below fp32's. Top-1 agreement
   between the two is reported, not gated (a model can flip a few wrong
   answers to other wrong answers and lose nothing).

The exporter records the result under ``variants.int8`` of model.json and in
the model card; a failed gate fails the whole export (nothing is written).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import INPUT_NAME
from duet.data.contract import Sample
from duet.data.preprocess import PreprocessSpec
from duet.data.scan import read_manifest
from duet.errors import ModelError, RunError

CALIBRATION_IMAGES = 256
CALIBRATION_SEED = 0
DEFAULT_INT8_TOLERANCE = 1.0  # percentage points of top-1 accuracy int8 may lose against fp32
OPS_TO_QUANTIZE = ("Conv", "MatMul", "Gemm")
_MAX_PIXELS = 200_000_000
_BATCH = 32


class QuantizeError(ModelError):
    """The int8 graph failed its accuracy gate, or could not be made."""


@dataclass
class Int8Gate:
    images: int
    split: str
    fp32_accuracy: float  # top-1, fraction
    int8_accuracy: float
    top1_agreement: float  # fraction of images where int8 and fp32 pick the same label
    tolerance_points: float
    unreadable: int

    @property
    def loss_points(self) -> float:
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def passed(self) -> bool:
        return self.images > 0 and self.loss_points <= self.tolerance_points

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_loss_points": round(self.loss_points, 4), "passed": self.passed}

    def summary(self) -> str:
        return (
            f"{self.images} {self.split} images: top-1 accuracy int8 {100 * self.int8_accuracy:.2f}% vs fp32 "
            f"{100 * self.fp32_accuracy:.2f}% ({0.0 - self.loss_points + 0.0:+.2f} points, "
            f"allowed -{self.tolerance_points:g}), "
            f"top-1 agreement {100 * self.top1_agreement:.2f}%"
        )


def calibration_samples(
    manifest_path: Path,
    data_dir: Path,
    labels: Sequence[str],
    *,
    count: int = CALIBRATION_IMAGES,
    seed: int = CALIBRATION_SEED,
) -> list[Sample]:
    """Up to ``count`` training-split images, drawn with ``seed`` (the same run gives the same draw)."""
    manifest = read_manifest(manifest_path, data_dir)
    index = {label: i for i, label in enumerate(labels)}
    rows = [r for r in manifest.usable() if r.split == "train" and r.label in index]
    if not rows:
        raise RunError(
            f"'{manifest_path}' lists no usable training image; int8 calibration draws from the training split"
        )
    picked = np.random.default_rng(seed).permutation(len(rows))[:count]
    return [Sample(manifest.data_dir / rows[i].path, index[rows[i].label]) for i in sorted(picked)]


def load_pixels(samples: Sequence[Sample], spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 ``(N, 3, S, S)`` model inputs as the server prepares them, their labels, and the unreadable count."""
    _, pixels, labels, unreadable = load_encoded_and_pixels(samples, spec)
    return pixels, labels, unreadable


def load_encoded_and_pixels(
    samples: Sequence[Sample], spec: PreprocessSpec
) -> tuple[list[bytes], np.ndarray, np.ndarray, int]:
    """``load_pixels`` plus each readable image's encoded bytes (the SavedModel's
    image-bytes signature is gated on them), every file read once."""
    from duet.data.imageio import DecodeError
    from duet.serve.images import prepare

    encoded: list[bytes] = []
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    unreadable = 0
    for s in samples:
        try:
            data = s.path.read_bytes()
            pixels.append(prepare(data, spec, _MAX_PIXELS, with_stats=False)[0])
        except (OSError, DecodeError):
            unreadable += 1
            continue
        encoded.append(data)
        labels.append(s.label)
    side = spec.image_size
    stacked = np.stack(pixels) if pixels else np.zeros((0, 3, side, side), np.uint8)
    return encoded, stacked, np.asarray(labels, np.int64), unreadable


def _reader(pixels: np.ndarray) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {INPUT_NAME: pixels[i : i + _BATCH]} for i in range(0, len(pixels), _BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Batches()


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> dict[str, Any]:
    """Write the QDQ int8 graph of ``fp32_path`` to ``int8_path``; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise QuantizeError("no calibration image could be read from the training split; int8 needs some")
    with tempfile.TemporaryDirectory(prefix="duet-int8-", dir=int8_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(OPS_TO_QUANTIZE),
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, per tensor",
        "method": "MinMax",
        "ops": list(OPS_TO_QUANTIZE),
        "reduce_range": False,
    }


def _top1(path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [
        session.run(["logits"], {INPUT_NAME: pixels[i : i + _BATCH]})[0].argmax(1)
        for i in range(0, len(pixels), _BATCH)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def check_int8(
    fp32_path: Path,
    int8_path: Path,
    pixels: np.ndarray,
    labels: np.ndarray,
    *,
    split: str,
    tolerance_points: float,
    unreadable: int = 0,
) -> Int8Gate:
    """Top-1 accuracy of both graphs on the same uint8 inputs, and their agreement."""
    ref, got = _top1(fp32_path, pixels), _top1(int8_path, pixels)
    n = len(labels)
    return Int8Gate(
        images=n,
        split=split,
        fp32_accuracy=float((ref == labels).mean()) if n else 0.0,
        int8_accuracy=float((got == labels).mean()) if n else 0.0,
        top1_agreement=float((ref == got).mean()) if n else 0.0,
        tolerance_points=tolerance_points,
        unreadable=unreadable,
    )


__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_INT8_TOLERANCE",
    "Int8Gate",
    "QuantizeError",
    "calibration_samples",
    "check_int8",
    "load_pixels",
    "quantize_int8",
]
