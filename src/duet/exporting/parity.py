"""The parity gate: the exported graph must agree with the trained model before it ships.

Every validation image goes through the evaluation path once (decode -> load
square -> centre crop, uint8) and the same uint8 batch is given to both:

- PyTorch, fp32 on the CPU: ``model(augment.eval_batch(...))``, which is how
  ``duet evaluate`` and ``duet predict`` compute probabilities;
- ONNX Runtime (CPU) on the exported file, which normalises inside the graph.

The export passes only when top-1 agrees on 100% of the images and the largest
absolute difference of any class probability is <= ``tolerance`` (1e-4).
Batches are cut so that the graph runs at several batch sizes, 1 included,
which exercises the dynamic batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import INPUT_NAME
from duet.data import augment
from duet.data.contract import LoaderOptions, Sample
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.errors import ModelError
from duet.system.progress import make_progress

DEFAULT_TOLERANCE = 1e-4


class ParityError(ModelError):
    """The exported graph disagrees with the PyTorch model."""


@dataclass
class ParityReport:
    images: int
    split: str
    top1_agreement: float  # fraction of images with the same argmax
    disagreements: int
    max_abs_prob_diff: float
    max_abs_logit_diff: float
    tolerance: float
    unreadable: int  # images that failed to decode (not compared)
    batch_sizes: list[int]

    @property
    def passed(self) -> bool:
        return self.images > 0 and self.disagreements == 0 and self.max_abs_prob_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "precision": "fp32"}

    def failure(self) -> str:
        if self.images == 0:
            return "no image could be compared"
        parts = []
        if self.disagreements:
            parts.append(f"top-1 differs on {self.disagreements} of {self.images} images")
        if self.max_abs_prob_diff > self.tolerance:
            parts.append(f"max |Δprobability| {self.max_abs_prob_diff:.3g} > {self.tolerance:g}")
        return "; ".join(parts)


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, float]:
    """(number of rows whose argmax differs, max |difference|) of two (N, C) arrays."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    if reference.size == 0:
        return 0, 0.0
    differ = int((reference.argmax(1) != candidate.argmax(1)).sum())
    return differ, float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())


@torch.no_grad()
def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    spec: PreprocessSpec,
    samples: Sequence[Sample],
    *,
    split: str,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    progress: bool = True,
) -> ParityReport:
    """Run ``samples`` through ``model`` (fp32, CPU) and the ONNX file; see the module doc."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.float().cpu().eval()
    cpu = torch.device("cpu")
    options = LoaderOptions(batch_size=batch_size, shuffle=False, device=cpu, workers=0)
    loader = make_loader("torch", samples, spec, options)
    images = differ = unreadable = 0
    max_p = max_l = 0.0
    sizes: set[int] = set()
    with make_progress(progress) as bar:
        task = bar.add_task("parity", total=len(samples), info="")
        for i, batch in enumerate(loader):
            ok = batch.labels >= 0
            unreadable += int((~ok).sum())
            squares = batch.images[ok]
            # Each image is compared once; the chunking makes sure the graph
            # also runs at batch size 1 (odd batches go one image at a time,
            # even ones as n-1 images plus one).
            if i % 2 == 0:
                chunks = [squares[:-1], squares[-1:]]
            else:
                chunks = [squares[j : j + 1] for j in range(len(squares))]
            for chunk in chunks:
                if len(chunk) == 0:
                    continue
                ref_logits = model(augment.eval_batch(chunk, spec)).float()
                ref_probs = torch.softmax(ref_logits, 1).numpy()
                pixels = np.ascontiguousarray(augment.centre_crop(chunk, spec).numpy())
                logits, probs = session.run(["logits", "probabilities"], {INPUT_NAME: pixels})
                d, mp = compare(ref_probs, probs)
                _, ml = compare(ref_logits.numpy(), logits)
                differ += d
                max_p, max_l = max(max_p, mp), max(max_l, ml)
                images += len(chunk)
                sizes.add(len(chunk))
            bar.advance(task, len(batch.labels))
    return ParityReport(
        images=images,
        split=split,
        top1_agreement=(images - differ) / images if images else 0.0,
        disagreements=differ,
        max_abs_prob_diff=max_p,
        max_abs_logit_diff=max_l,
        tolerance=tolerance,
        unreadable=unreadable,
        batch_sizes=sorted(sizes),
    )
