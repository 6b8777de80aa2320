"""``duet.load(run_or_export) -> Model``: a trained model that predicts in a notebook.

Two sources, one behaviour:

- a run folder (``runs/<name>``, with ``run.json``): its best PyTorch weights
  (``duet.evaluation.inference.load_model``), forward pass in the run's
  recorded precision unless ``precision=`` says otherwise;
- an export folder (``model.json``): the checked ONNX graph through
  ``duet.serve.runtimes`` (ONNX Runtime by default), what ``duet serve`` runs.

Every input goes through the evaluation path, the one the server uses
(``duet.serve.images``): ``duet.data.imageio.decode`` (files; PIL images are
encoded losslessly as PNG and decoded the same way) ->
``duet.data.preprocess.to_load_square`` -> centre ``image_size`` crop. So an
offline prediction equals the served one and the one evaluation measured.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import MANIFEST
from duet.data.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode
from duet.data.preprocess import PreprocessSpec, centre_offset, to_load_square
from duet.errors import ConfigError, DataError, RunError

Prediction = list[dict[str, Any]]  # top-k: [{"label": str, "probability": float}, ...], best first


class Model:
    """A loaded model: ``labels``, ``spec`` (its preprocessing), ``source``
    ("torch" for a run folder, the runtime's name for an export) and
    :meth:`predict` / :meth:`probabilities`. Made by :func:`load`."""

    def __init__(self, path: Path, labels: list[str], spec: PreprocessSpec, source: str, forward: Any) -> None:
        self.path = path
        self.labels = labels
        self.spec = spec
        self.source = source
        self._forward = forward  # uint8 (N, 3, S, S) centre crops -> float32 (N, C) probabilities

    def __repr__(self) -> str:
        return f"Model('{self.path}', source={self.source!r}, labels={self.labels!r})"

    def probabilities(self, images: Any, *, batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """float32 ``(N, num_classes)`` for N images (see :meth:`predict` for what an image may be);
        column ``i`` is ``labels[i]``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        items, _ = _as_items(images)
        out = []
        for start in range(0, len(items), batch_size):
            crops = np.stack([self._crop(item, max_pixels) for item in items[start : start + batch_size]])
            out.append(np.asarray(self._forward(crops), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def predict(
        self, images: Any, *, k: int = 5, batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Prediction | list[Prediction]:
        """Top-``k`` labels with their probabilities, best first.

        Args:
            images: one image - a file path (str or Path), a PIL image, or a
                uint8 numpy array HxWx3 (HxW or HxWx1 for grey) - or several: a
                list of those, or a uint8 array NxHxWx3.
            k: how many labels per image (at most the number of classes).
            batch_size: images per forward pass.
            max_pixels: refuse files whose header claims more pixels (decompression bombs).

        Returns:
            For one image, ``[{"label": ..., "probability": ...}, ...]``; for
            several, a list of those in input order.

        Raises:
            ConfigError: an input that is not an image of a kind listed above.
            DataError: a file that cannot be read or decoded.
        """
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"`k` must be a positive integer. Received: k={k!r}")
        _, single = _as_items(images)
        probs = self.probabilities(images, batch_size=batch_size, max_pixels=max_pixels)
        tops = [_top_k(p, self.labels, k) for p in probs]
        return tops[0] if single else tops

    def _crop(self, item: Any, max_pixels: int) -> np.ndarray:
        """One input -> uint8 (3, image_size, image_size): decode, load square, centre crop."""
        rgb = _rgb(item, self.spec, max_pixels)
        o, s = centre_offset(self.spec), self.spec.image_size
        return np.ascontiguousarray(to_load_square(rgb, self.spec)[o : o + s, o : o + s].transpose(2, 0, 1))


def _top_k(probs: np.ndarray, labels: list[str], k: int) -> Prediction:
    order = np.argsort(-probs, kind="stable")[: min(k, len(labels))]
    return [{"label": labels[i], "probability": float(probs[i])} for i in order]


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "save")


def _as_items(images: Any) -> tuple[list[Any], bool]:
    """(list of single images, whether one image was given)."""
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        return [images], True
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images), False
        return [images], True
    if isinstance(images, Sequence):
        return list(images), False
    raise ConfigError(
        "`images` must be a path, a PIL image, a uint8 numpy array HxWx3 or NxHxWx3, or a list of those. "
        f"Received: {type(images).__name__}"
    )


def _rgb(item: Any, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """One input -> HxWx3 uint8, decoded exactly as evaluation and serving decode."""
    try:
        if isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                raise DataError(f"image file '{item}' does not exist")
            return decode(item, max_pixels=max_pixels, min_size=spec.load_size)
        if _is_pil(item):
            buffer = io.BytesIO()
            item.save(buffer, format="PNG")
            return decode(buffer.getvalue(), max_pixels=max_pixels)
    except DecodeError as e:
        raise DataError(f"cannot read image '{item}': {e.reason}") from None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ConfigError(
                "numpy images must be uint8 (0..255). Received: dtype="
                f"{item.dtype}; convert with np.clip(x * 255, 0, 255).round().astype('uint8') for 0..1 floats"
            )
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 1):
            return np.ascontiguousarray(np.repeat(item.reshape(item.shape[0], item.shape[1], 1), 3, axis=2))
        if item.ndim == 3 and item.shape[2] == 3:
            return item
        raise ConfigError(f"numpy images must be HxWx3 (or HxW grey). Received: shape={item.shape}")
    raise ConfigError(f"each image must be a path, a PIL image or a uint8 numpy array. Received: {type(item).__name__}")


def load(
    path: str | os.PathLike[str], *, device: str = "auto", precision: str | None = None, runtime: str = "onnxruntime"
) -> Model:
    """Open a run folder (PyTorch) or an export folder (ONNX Runtime) for prediction.

    Args:
        path: a run folder made by ``duet.train`` / ``duet train`` (it has
            run.json), or an export folder made by ``duet.export`` (it has model.json).
        device: run folders: "auto" | "cpu" | "cuda"; export folders: passed to the runtime.
        precision: run folders: "auto" | "fp32" | "bf16"; None = the run's recorded precision.
        runtime: export folders: "onnxruntime" (default), "torch" (its safetensors) or "auto".

    Raises:
        RunError / ModelError: not a run or export folder, or one that is damaged.
    """
    p = Path(path)
    if (p / "run.json").is_file():
        return _load_run(p, device, precision)
    if (p / MANIFEST).is_file():
        return _load_export(p, device, runtime)
    raise RunError(
        f"'{p}' is neither a run folder (run.json) nor an export folder (model.json); "
        "pass runs/<name> or runs/<name>/export"
    )


def _load_run(path: Path, device: str, precision: str | None) -> Model:
    import torch

    from duet.artifacts.run_dir import load_run
    from duet.data.augment import normalise
    from duet.evaluation.inference import load_model
    from duet.system.device import resolve_device
    from duet.training.precision import autocast, recorded_or

    run = load_run(path)
    if not run.paths.best.is_file():
        raise RunError(f"run '{path}' has no best weights yet ({run.paths.best}); train it first")
    dev = resolve_device(device)
    chosen = recorded_or(precision, run.precision, dev)
    model = load_model(run, dev)
    spec = run.preprocess

    @torch.no_grad()
    def forward(crops: np.ndarray) -> np.ndarray:
        x = normalise(torch.from_numpy(crops).to(dev), spec)
        with autocast(chosen, dev):
            logits = model(x)
        return torch.softmax(logits.float(), 1).cpu().numpy()

    return Model(path, list(run.labels), spec, "torch", forward)


def _load_export(path: Path, device: str, runtime: str) -> Model:
    from duet.artifacts.model_package import read_package
    from duet.serve.runtimes import load_runtime

    package = read_package(path)
    engine = load_runtime(package, runtime, device=device)

    def forward(crops: np.ndarray) -> np.ndarray:
        return engine(crops).probabilities

    return Model(path, package.labels, package.spec, engine.name, forward)
