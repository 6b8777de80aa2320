"""Run a trained model over files: the offline twin of serving.

It uses the same decode, the same load square and the same centre crop as
validation during training, so an offline prediction here is what the model
saw at validation time.

The model is the run's PyTorch weights (:func:`load_model`) or an exported
file run by its own runtime (:class:`Exported`: ONNX, SavedModel, TFLite),
which the caller composes (the cli/api layer; evaluation never imports
``duet.serve``): it gets the same uint8 centre crops the exported graphs take
and the server feeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duet.artifacts.run_dir import RunInfo
from duet.data import augment
from duet.data.contract import LoaderOptions, Sample, default_workers
from duet.data.imageio import DecodeError, decode
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec, to_load_square
from duet.system.progress import make_progress
from duet.training.checkpoint import load_weights
from duet.training.models import build
from duet.training.precision import FP32, Precision, autocast


def load_model(run: RunInfo, device: torch.device) -> torch.nn.Module:
    """The run's best weights in its architecture, in eval mode on ``device``."""
    model = build(run.model, run.num_classes, "none", image_size=run.preprocess.image_size, norm=run.norm)
    model.load_state_dict(load_weights(run.paths.best))
    return model.to(device).eval()


@dataclass(frozen=True)
class Exported:
    """An exported model and the runtime that runs it, for evaluation.

    ``forward`` maps uint8 ``(N, 3, S, S)`` centre crops to float32 ``(N, C)``
    probabilities; ``format`` is the export format (``duet.artifacts.model_package.FORMATS``,
    or ``onnx-int8``), ``runtime`` what ran it and ``path`` the file or folder it read."""

    format: str
    runtime: str
    path: Path
    forward: Callable[[np.ndarray], np.ndarray]

    def describe(self) -> str:
        return f"{self.format} on {self.runtime} ({self.path})"


@dataclass
class Predictions:
    probs: np.ndarray  # float32 (N, C); rows of failed files are NaN
    labels: np.ndarray  # int64 (N,) true labels (-1 unknown)
    errors: list[str]  # per sample: "" or the reason it failed to load


@torch.no_grad()
def predict_samples(
    model: torch.nn.Module | Exported,
    run: RunInfo,
    samples: Sequence[Sample],
    device: torch.device,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    description: str = "predict",
    precision: Precision = FP32,
) -> Predictions:
    spec = run.preprocess
    options = LoaderOptions(
        batch_size=batch_size,
        shuffle=False,
        device=device,
        workers=default_workers() if workers is None else workers,
    )
    loader = make_loader("torch", samples, spec, options)
    probs = np.full((len(samples), run.num_classes), np.nan, dtype=np.float32)
    errors = [""] * len(samples)
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(samples), info="")
        for batch in loader:
            # Failures are known by their error string: samples may carry label -1
            # simply because their true label is unknown (retrain predicts such).
            ok = torch.tensor([not e for e in batch.errors], device=batch.images.device)
            idx = batch.index.numpy()
            for i, err in zip(idx, batch.errors):
                if err:
                    errors[i] = err
            if bool(ok.any()):
                probs[idx[ok.cpu().numpy()]] = forward_squares(model, batch.images[ok], spec, device, precision)
            bar.advance(task, len(idx))
    return Predictions(probs, np.array([s.label for s in samples], dtype=np.int64), errors)


def forward_squares(
    model: torch.nn.Module | Exported,
    squares: torch.Tensor,
    spec: PreprocessSpec,
    device: torch.device,
    precision: Precision,
) -> np.ndarray:
    """Probabilities of a batch of uint8 load squares: PyTorch normalises the centre
    crops itself; an exported graph takes them as uint8 and normalises inside."""
    if isinstance(model, Exported):
        crops = np.ascontiguousarray(augment.centre_crop(squares, spec).cpu().numpy())
        probs = np.asarray(model.forward(crops), dtype=np.float32)
        # A full-integer graph's softmax is quantized (steps of 1/256 in TFLite int8), so
        # its rows sum to 1 only within a few steps: rescaled, which keeps every argmax.
        return probs / np.maximum(probs.sum(1, keepdims=True), np.finfo(np.float32).tiny)
    with autocast(precision, device):
        logits = model(augment.eval_batch(squares, spec))
    return torch.softmax(logits.float(), 1).cpu().numpy()


@torch.no_grad()
def predict_file(
    model: torch.nn.Module, run: RunInfo, path: Path, device: torch.device, max_pixels: int, precision: Precision = FP32
) -> np.ndarray:
    """Class probabilities for one image file (raises DecodeError)."""
    square = torch.from_numpy(load_square(path, run.preprocess, max_pixels))[None].to(device)
    return forward_squares(model, square, run.preprocess, device, precision)[0]


def load_square(path: Path, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """One image file as the uint8 (3, load, load) square evaluation crops from (raises DecodeError)."""
    rgb = decode(path, max_pixels=max_pixels, min_size=spec.load_size)
    return np.ascontiguousarray(to_load_square(rgb, spec).transpose(2, 0, 1))


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict[str, float | str]]:
    order = np.argsort(-probs)[: min(k, len(labels))]
    return [{"label": labels[i], "probability": float(probs[i])} for i in order]


__all__ = [
    "DecodeError",
    "Exported",
    "Predictions",
    "forward_squares",
    "load_model",
    "load_square",
    "predict_file",
    "predict_samples",
    "top_k",
]
