"""Run a model over image files and keep what drift needs: penultimate-layer
features, class probabilities and image statistics, from one decode and one
forward pass per image.

Features are the input of the classifier's last layer:

- timm models: ``model.forward_head(model.forward_features(x), pre_logits=True)``
  (the pooled, pre-classifier vector), and the logits from the same features;
- torchvision models: a forward hook on the head's ``nn.Linear`` records its input.

Pixels follow the evaluation path exactly (``decode`` with ``min_size`` ->
``to_load_square`` -> centre crop -> normalise), so the features of a file are
those the served model computes for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from duet.artifacts.run_dir import RunInfo
from duet.data import augment
from duet.data.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode
from duet.data.preprocess import PreprocessSpec, to_load_square
from duet.monitor.imagestats import STAT_NAMES, image_stats
from duet.system.progress import make_progress
from duet.training.precision import FP32, Precision, autocast


class FeatureExtractor:
    """``extractor(x) -> (features, logits)`` for a timm or torchvision classifier."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._captured: list[torch.Tensor] = []
        self._timm = callable(getattr(model, "forward_features", None)) and callable(
            getattr(model, "forward_head", None)
        )
        self._hook = None
        if not self._timm:
            head = _last_linear(model)
            self._hook = head.register_forward_hook(lambda _m, inputs, _out: self._captured.append(inputs[0]))

    def close(self) -> None:
        """Remove the forward hook (torchvision models)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._timm:
            timm_model: Any = self.model  # forward_features / forward_head: checked in __init__
            maps = timm_model.forward_features(x)
            return timm_model.forward_head(maps, pre_logits=True), timm_model.forward_head(maps)
        self._captured.clear()
        logits = self.model(x)
        return self._captured[-1].flatten(1), logits


def _last_linear(model: nn.Module) -> nn.Linear:
    """The classifier ``nn.Linear`` of a torchvision model (where ``duet.training.models`` replaced it)."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Sequential):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    raise ValueError(f"cannot find the classifier layer of {type(model).__name__} to read its input features")


class _Files(Dataset):
    """One file -> (CHW uint8 load square, image statistics, index, error)."""

    def __init__(self, paths: Sequence[Path], spec: PreprocessSpec, max_pixels: int) -> None:
        self.paths, self.spec, self.max_pixels = list(paths), spec, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray, int, str]:
        size = self.spec.load_size
        try:
            rgb = decode(self.paths[i], max_pixels=self.max_pixels, min_size=size)
        except (DecodeError, OSError) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            return (
                torch.zeros(3, size, size, dtype=torch.uint8),
                np.full(len(STAT_NAMES), np.nan, np.float32),
                i,
                reason,
            )
        square = to_load_square(rgb, self.spec)
        return torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1))), image_stats(rgb), i, ""


def _collate(
    batch: list[tuple[torch.Tensor, np.ndarray, int, str]],
) -> tuple[torch.Tensor, np.ndarray, list[int], list[str]]:
    return (
        torch.stack([b[0] for b in batch]),
        np.stack([b[1] for b in batch]),
        [b[2] for b in batch],
        [b[3] for b in batch],
    )


@dataclass
class Embedded:
    """Per file: raw features (N, D), probabilities (N, C), image statistics
    (N, 6) and the load error ("" when fine). Rows of failed files are NaN."""

    features: np.ndarray
    probabilities: np.ndarray
    image_stats: np.ndarray
    errors: list[str]

    @property
    def ok(self) -> np.ndarray:
        return np.array([not e for e in self.errors], dtype=bool)


@torch.no_grad()
def embed_files(
    model: nn.Module,
    run: RunInfo,
    paths: Sequence[Path],
    device: torch.device,
    *,
    batch_size: int = 64,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    description: str = "embed",
    precision: Precision = FP32,
) -> Embedded:
    """Features, probabilities and statistics of every file in ``paths`` (the forward
    pass under ``precision``'s autocast; features and probabilities come back fp32)."""
    spec = run.preprocess
    extractor = FeatureExtractor(model.eval())
    loader = DataLoader(
        _Files(paths, spec, max_pixels), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate
    )
    n = len(paths)
    features: np.ndarray | None = None
    probs = np.full((n, run.num_classes), np.nan, dtype=np.float32)
    stats = np.full((n, len(STAT_NAMES)), np.nan, dtype=np.float32)
    errors = [""] * n
    with make_progress(progress) as bar, closing(extractor):
        task = bar.add_task(description, total=n, info="")
        for images, batch_stats, index, batch_errors in loader:
            idx = np.asarray(index)
            stats[idx] = batch_stats
            ok = np.array([not e for e in batch_errors], dtype=bool)
            for i, e in zip(idx, batch_errors):
                errors[i] = e
            if ok.any():
                x = augment.eval_batch(images[torch.from_numpy(ok)].to(device), spec)
                with autocast(precision, device):
                    feats, logits = extractor(x)
                if features is None:
                    features = np.full((n, feats.shape[1]), np.nan, dtype=np.float32)
                features[idx[ok]] = feats.float().cpu().numpy()
                probs[idx[ok]] = torch.softmax(logits.float(), 1).cpu().numpy()
            bar.advance(task, len(idx))
    if features is None:
        features = np.full((n, 0), np.nan, dtype=np.float32)
    return Embedded(features, probs, stats, errors)
