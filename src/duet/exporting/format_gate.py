"""The export gate of every format beyond ONNX: the candidate against PyTorch, on the validation split.

Every candidate sees the same uint8 centre crops that the ONNX parity gate and
the server use (``duet.exporting.quantize.load_pixels``), in batches of 1 and
of 32 (the dynamic batch is exercised), and is compared with PyTorch's fp32
probabilities on those crops. Three rules, one per kind of format:

- ``exact`` (SavedModel, TFLite fp32): top-1 agrees on 100 % of the images and
  max |Δprobability| <= 1e-4, as the ONNX parity gate asks;
- ``agreement`` (the SavedModel's encoded-bytes signature, whose decoder and
  resize are TensorFlow's; TFLite fp16): top-1 agrees on >= 99.5 % of the
  images, and the difference is reported (fp16 must also be <= 55 % of the
  fp32 size, or it buys nothing);
- ``int8`` (TFLite full-integer): validation accuracy loses <= 1 point against
  PyTorch, and the file is <= 30 % of the fp32 ONNX graph's size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from duet.data import augment
from duet.data.preprocess import PreprocessSpec
from duet.errors import ModelError

EXACT_TOLERANCE = 1e-4
MIN_AGREEMENT = 0.995
INT8_POINTS = 1.0
INT8_MAX_SIZE = 0.30
FP16_MAX_SIZE = 0.55
BATCH = 32


class FormatGateError(ModelError):
    """An exported format failed its gate; nothing was written."""


@dataclass
class FormatGate:
    format: str
    rule: str  # "exact" | "agreement" | "int8"
    split: str
    images: int
    disagreements: int  # top-1 differs from PyTorch
    max_abs_prob_diff: float
    accuracy: float  # the candidate's top-1 accuracy on the labels
    reference_accuracy: float  # PyTorch's, on the same images
    size_bytes: int
    fp32_bytes: int  # the fp32 ONNX graph's size, the yardstick of the size rules
    failed_inputs: int = 0  # inputs the candidate could not read (bytes signature: TF cannot decode)
    int8_points: float = INT8_POINTS  # the int8 rule's allowed loss (duet export --int8-tolerance)

    @property
    def top1_agreement(self) -> float:
        return (self.images - self.disagreements) / self.images if self.images else 0.0

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.fp32_bytes if self.fp32_bytes else 0.0

    @property
    def loss_points(self) -> float:
        return 100.0 * (self.reference_accuracy - self.accuracy)

    def problems(self) -> list[str]:
        """Why the gate fails (empty: it passes)."""
        if self.images == 0:
            return ["no image could be compared"]
        out: list[str] = []
        if self.rule == "exact":
            if self.disagreements:
                out.append(f"top-1 differs from PyTorch on {self.disagreements} of {self.images} images")
            if self.max_abs_prob_diff > EXACT_TOLERANCE:
                out.append(f"max |Δprobability| {self.max_abs_prob_diff:.3g} > {EXACT_TOLERANCE:g}")
        elif self.rule == "agreement" and self.top1_agreement < MIN_AGREEMENT:
            out.append(f"top-1 agrees with PyTorch on {100 * self.top1_agreement:.2f}% < {100 * MIN_AGREEMENT:g}%")
        elif self.rule == "int8" and self.loss_points > self.int8_points:
            out.append(
                f"accuracy {100 * self.accuracy:.2f}% loses {self.loss_points:.2f} points > {self.int8_points:g}"
            )
        limit = {"int8": INT8_MAX_SIZE, "agreement": FP16_MAX_SIZE if self.format == "tflite-fp16" else None}.get(
            self.rule
        )
        if limit is not None and self.size_ratio > limit:
            out.append(f"{self.size_ratio:.0%} of the fp32 size > {limit:.0%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        return (
            f"{self.format}: {self.images} {self.split} images, top-1 agreement {100 * self.top1_agreement:.2f}%, "
            f"max |Δp| {self.max_abs_prob_diff:.2g}, accuracy {100 * self.accuracy:.2f}% "
            f"(PyTorch {100 * self.reference_accuracy:.2f}%), {self.size_bytes / 1e6:.1f} MB "
            f"({self.size_ratio:.0%} of fp32) - {'passed' if self.passed else 'FAILED: ' + '; '.join(self.problems())}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "top1_agreement": self.top1_agreement,
            "size_ratio": round(self.size_ratio, 4),
            "loss_points": round(self.loss_points, 4),
            "thresholds": {
                "exact": {"top1_agreement": 1.0, "max_abs_prob_diff": EXACT_TOLERANCE},
                "agreement": {"top1_agreement": MIN_AGREEMENT}
                | ({"max_size_ratio": FP16_MAX_SIZE} if self.format == "tflite-fp16" else {}),
                "int8": {"max_loss_points": self.int8_points, "max_size_ratio": INT8_MAX_SIZE},
            }[self.rule],
            "passed": self.passed,
        }


@torch.no_grad()
def reference_probabilities(model: torch.nn.Module, pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """PyTorch's fp32 probabilities on uint8 crops, the yardstick of every gate."""
    model = model.float().cpu().eval()
    parts = [
        torch.softmax(model(augment.normalise(torch.from_numpy(pixels[i : i + 64]), spec)).float(), 1).numpy()
        for i in range(0, len(pixels), 64)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def run_batched(fn: Callable[[Any], np.ndarray], inputs: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``fn`` over ``inputs`` in a batch of 1, then batches of up to 32 (the dynamic batch)."""
    cuts = [0, min(1, len(inputs)), *range(1 + BATCH, len(inputs), BATCH), len(inputs)]
    parts = [fn(inputs[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def judge(
    fmt: str,
    rule: str,
    probabilities: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    *,
    split: str,
    size_bytes: int,
    fp32_bytes: int,
    failed: np.ndarray | None = None,
    int8_points: float = INT8_POINTS,
) -> FormatGate:
    """The gate of ``fmt``'s ``probabilities`` against PyTorch's ``reference`` on ``labels``.
    ``failed`` marks rows the candidate could not compute (the bytes signature on an image
    TensorFlow cannot decode): each counts as a disagreement and a miss."""
    if probabilities.shape != reference.shape:
        raise ValueError(f"shape mismatch: {probabilities.shape} vs {reference.shape}")
    ok = np.ones(len(reference), bool) if failed is None else ~failed
    top = probabilities.argmax(1) if len(reference) else np.zeros(0, np.int64)
    differ = int(((top != reference.argmax(1)) & ok).sum() + (~ok).sum()) if len(reference) else 0
    diff = np.abs(probabilities[ok].astype(np.float64) - reference[ok].astype(np.float64))
    return FormatGate(
        format=fmt,
        rule=rule,
        split=split,
        images=len(reference),
        disagreements=differ,
        max_abs_prob_diff=float(diff.max()) if diff.size else 0.0,
        accuracy=float(((top == labels) & ok).mean()) if len(labels) else 0.0,
        reference_accuracy=float((reference.argmax(1) == labels).mean()) if len(labels) else 0.0,
        size_bytes=size_bytes,
        fp32_bytes=fp32_bytes,
        failed_inputs=int((~ok).sum()),
        int8_points=int8_points,
    )
