"""What the drift detectors compare and how they decide: the data shared by the
reference profile (:mod:`duet.monitor.profile`), the detectors
(:mod:`duet.monitor.drift`) and a server's window.

- ``DETECTORS``: the detectors' names, in the order they run and report.
- ``DriftSettings``: the calibrated decision rule (validated on construction).
- ``Observations``: one row per image of each signal (embeddings, predicted
  class and confidence, image statistics, outlier and accuracy scores).

numpy only: the server imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from duet.errors import ConfigError

DETECTORS: tuple[str, ...] = ("embedding", "predicted_class", "confidence", "image_stats", "outlier_rate")
EMBEDDING_TESTS: tuple[str, ...] = ("mmd", "ks")


@dataclass(frozen=True)
class DriftSettings:
    """How the detectors decide. The defaults are calibrated (docs/monitoring.md).

    alpha: bound on the false-alarm rate of the whole verdict when nothing
        changed. 0.04, not the customary 0.05: Bonferroni across four nearly
        independent detectors uses most of the bound (0.75-0.9 x alpha measured),
        and 0.04 keeps the measured rate under 5% with room to spare.
    embedding_test: "mmd" (kernel MMD, permutation test) or "ks" (KS per
        PCA component, Bonferroni over components).
    permutations: permutations of the MMD and class-count tests; the smallest
        p-value they can give is 1 / (permutations + 1), which must stay below alpha / 4.
    min_images: a detector does not run on fewer current images.
    max_reference: reference rows used by the MMD test (a seeded subsample
        beyond it), which bounds its cost.
    outlier_rate: share of clean images an image's outlier score exceeds
        (the per-image threshold, calibrated on the reference).
    seed: seeds permutations and subsamples, so a result is reproducible.
    """

    alpha: float = 0.04
    embedding_test: str = "mmd"
    permutations: int = 500
    min_images: int = 30
    max_reference: int = 1000
    outlier_rate: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"`alpha` must be in (0, 1), e.g. 0.04. Received: alpha={self.alpha!r}")
        if self.embedding_test not in EMBEDDING_TESTS:
            raise ConfigError(
                f"`embedding_test` must be one of {', '.join(EMBEDDING_TESTS)}. "
                f"Received: embedding_test={self.embedding_test!r}"
            )
        if self.permutations < 1 or 1 / (self.permutations + 1) >= self.alpha / len(DETECTORS):
            need = math.ceil(len(DETECTORS) / self.alpha)
            raise ConfigError(
                f"`permutations` must be at least {need} so that the permutation test can reach "
                f"p < alpha/{len(DETECTORS)}. Received: permutations={self.permutations!r}"
            )
        if self.min_images < 2:
            raise ConfigError(f"`min_images` must be at least 2. Received: min_images={self.min_images!r}")
        if self.max_reference < 2:
            raise ConfigError(f"`max_reference` must be at least 2. Received: max_reference={self.max_reference!r}")
        if not 0 < self.outlier_rate < 0.5:
            raise ConfigError(
                f"`outlier_rate` must be in (0, 0.5), e.g. 0.01. Received: outlier_rate={self.outlier_rate!r}"
            )


@dataclass
class Observations:
    """What the detectors compare, one row per image; any field may be None.

    embeddings: float32 (N, k), penultimate features already projected with the
        profile's PCA (``ReferenceProfile.project``).
    classes: int64 (N,), top-1 class index in the run's label order.
    confidences: float32 (N,), top-1 probability.
    image_stats: float32 (N, len(STAT_NAMES)), from ``image_stats``.
    outlier_scores: float32 (N,), from ``OutlierModel.score``.
    accuracy_scores: float32 (N,), from ``AccuracyEstimator.score`` (not a
        detector: the window's label-free accuracy estimate).
    """

    embeddings: np.ndarray | None = None
    classes: np.ndarray | None = None
    confidences: np.ndarray | None = None
    image_stats: np.ndarray | None = None
    outlier_scores: np.ndarray | None = None
    accuracy_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = {len(a) for a in self._arrays().values()}
        if len(lengths) > 1:
            raise ValueError(f"observation fields have different lengths: {sorted(lengths)}")
        if (self.classes is None) != (self.confidences is None):
            raise ValueError("classes and confidences come together (both or neither)")

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            k: v
            for k, v in (
                ("embeddings", self.embeddings),
                ("classes", self.classes),
                ("confidences", self.confidences),
                ("image_stats", self.image_stats),
                ("outlier_scores", self.outlier_scores),
                ("accuracy_scores", self.accuracy_scores),
            )
            if v is not None
        }

    def __len__(self) -> int:
        arrays = self._arrays()
        return len(next(iter(arrays.values()))) if arrays else 0

    def take(self, index: np.ndarray) -> Observations:
        return Observations(**{k: v[index] for k, v in self._arrays().items()})

    @staticmethod
    def from_probabilities(
        probabilities: np.ndarray,
        *,
        embeddings: np.ndarray | None = None,
        image_stats: np.ndarray | None = None,
        outlier_scores: np.ndarray | None = None,
        accuracy_scores: np.ndarray | None = None,
    ) -> Observations:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        classes = probabilities.argmax(1).astype(np.int64)
        return Observations(
            embeddings=embeddings,
            classes=classes,
            confidences=probabilities[np.arange(len(classes)), classes],
            image_stats=image_stats,
            outlier_scores=outlier_scores,
            accuracy_scores=accuracy_scores,
        )
