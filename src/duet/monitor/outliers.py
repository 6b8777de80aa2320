"""Per-image out-of-distribution scores and the window's outlier-rate test.

The distribution-level detectors (:mod:`duet.monitor.drift`) see a shift that
moves the whole window; they are weak when only a few images in it are foreign
(10 photos among 90 digits). This module scores every image on its own and
tests how many of a window's images are outliers.

**The score** of an image is the larger of two standardised distances, each a
Mahalanobis distance fitted on the profile's *training* sample (the PCA fit
sample, never the reference):

- ``embedding``: to the nearest class mean of the penultimate features, with one
  covariance shared by the classes (Lee et al., 2018, "A simple unified
  framework for detecting out-of-distribution samples"), computed in the
  training sample's principal axes (all of them up to ``MAX_AXES``) with a
  little shrinkage so that it stays finite;
- ``image_stats``: of the image statistics (log2 width and height, log2 aspect,
  brightness, contrast, saturation) from their training mean, with a floor on
  each statistic's spread so that a constant statistic (every digit is 16 px)
  still turns a change into a large, finite distance.

Each distance is standardised by its mean and standard deviation on the
training sample; the score is the larger of the two. Measured on the digits
(docs/monitoring.md): photos are flagged by the embedding part, digits shrunk
to 60 % by the image statistics, and neither part alone catches both.

**The threshold** is the ``r``-th largest score of the ``n`` reference images,
``r = max(1, floor(rate * (n + 1)))`` (``rate`` 1 % by default): a clean image
exceeds it with probability ``r / (n + 1)``, about ``rate`` (conformal
calibration). Its per-image p-value is ``(1 + #{reference >= score}) / (n + 1)``.

**The window test**: given the threshold, clean images exceed it independently
with a probability that is itself ``Beta(r, n + 1 - r)`` distributed (it
depends on which reference sample was drawn), so the number of outliers among
``m`` clean images is exactly beta-binomial ``(m, r, n + 1 - r)``. The p-value
of ``x`` outliers is its upper tail: exact at any reference size, which a plain
binomial at ``rate`` is not for a 150-image reference.

numpy + scipy only (the server imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
from scipy import stats as sstats

DEFAULT_RATE = 0.01
MAX_AXES = 512  # principal axes of the features kept at most (bounds the profile's size)
SHRINKAGE = 0.1  # covariance -> (1 - s) C + s * mean variance * I
STAT_FLOOR = 0.02  # smallest spread of an image statistic (log2 units for sizes: ~1.4 %)

ARRAY_NAMES = (
    "ood_axes",
    "ood_mean",
    "ood_class_means",
    "ood_precision",
    "ood_stats_mean",
    "ood_stats_precision",
    "ood_standardise",
    "outlier_scores",
)


def outlier_rank(n_reference: int, rate: float) -> int:
    """``r``: the threshold is the r-th largest of ``n_reference`` reference scores."""
    return max(1, int(np.floor(rate * (n_reference + 1))))


def outlier_threshold(reference_scores: np.ndarray, rate: float) -> float:
    ref = np.sort(np.asarray(reference_scores))
    return float(ref[len(ref) - outlier_rank(len(ref), rate)])


def window_test(reference_scores: np.ndarray, scores: np.ndarray, rate: float) -> tuple[int, float]:
    """``(outliers, p-value)`` of a window's ``scores`` against the reference's:
    the beta-binomial upper tail of the count (module docstring)."""
    n, m = len(reference_scores), len(scores)
    r = outlier_rank(n, rate)
    x = int((np.asarray(scores) > outlier_threshold(reference_scores, rate)).sum())
    return x, (float(sstats.betabinom.sf(x - 1, m, r, n + 1 - r)) if x > 0 else 1.0)


def stats_features(image_stats: np.ndarray) -> np.ndarray:
    """``image_stats`` rows (width, height, aspect, brightness, contrast,
    saturation) with the three size statistics on a log2 scale."""
    x = np.asarray(image_stats, dtype=np.float64).copy()
    x[:, :3] = np.log2(np.maximum(x[:, :3], 1e-6))
    return x


def _shrunk_precision(centred: np.ndarray, floor: np.ndarray | None = None) -> np.ndarray:
    cov = np.atleast_2d(np.cov(centred, rowvar=False)) if len(centred) > 1 else np.zeros((centred.shape[1],) * 2)
    if floor is not None:
        cov = cov + np.diag(floor**2)
    mean_var = float(np.trace(cov)) / cov.shape[0] or 1.0
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * mean_var * np.eye(cov.shape[0])
    return np.linalg.inv(cov)


def _mahalanobis(d: np.ndarray, precision: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.einsum("...d,de,...e->...", d, precision, d), 0.0))


@dataclass(frozen=True)
class OutlierModel:
    """What scoring needs (arrays saved in the profile's reference.npz) and the
    reference's scores that set the threshold."""

    axes: np.ndarray  # (k, D) principal axes of the training features
    mean: np.ndarray  # (D,)
    class_means: np.ndarray  # (C, k) per-class means in those axes (classes absent from the sample: NaN rows)
    precision: np.ndarray  # (k, k) shared, shrunk
    stats_mean: np.ndarray  # (6,)
    stats_precision: np.ndarray  # (6, 6)
    standardise: np.ndarray  # (4,) mean, std of the embedding distance; mean, std of the image-stat distance
    reference_scores: np.ndarray  # (n,) scores of the reference images
    rate: float = DEFAULT_RATE

    @property
    def rank(self) -> int:
        return outlier_rank(len(self.reference_scores), self.rate)

    @property
    def threshold(self) -> float:
        return outlier_threshold(self.reference_scores, self.rate)

    @property
    def expected_rate(self) -> float:
        """The probability that a clean image is flagged: ``r / (n + 1)``."""
        return self.rank / (len(self.reference_scores) + 1)

    @cached_property
    def whitening(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(W, M, |M|²)``: features -> whitened axes in one product (``precision =
        L L^T``, ``W = axes^T L``), the whitened class means and their squared norms,
        so that a Mahalanobis distance is a Euclidean one computed with BLAS
        (about 0.1 ms per image for 512 features, instead of ~4 ms with einsum)."""
        lower = np.linalg.cholesky(self.precision.astype(np.float64))
        present = ~np.isnan(self.class_means[:, 0])
        means = self.class_means[present].astype(np.float64) @ lower
        return self.axes.T.astype(np.float64) @ lower, means, (means**2).sum(axis=1)

    def parts(self, features: np.ndarray, image_stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two standardised distances, ``(embedding, image_stats)``, each (N,)."""
        w, means, means_sq = self.whitening
        y = (np.asarray(features, dtype=np.float64) - self.mean) @ w
        squared = (y**2).sum(axis=1)[:, None] - 2 * y @ means.T + means_sq[None]
        emb = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        st = _mahalanobis(stats_features(image_stats) - self.stats_mean, self.stats_precision)
        s = self.standardise
        return (emb - s[0]) / s[1], (st - s[2]) / s[3]

    def score(self, features: np.ndarray, image_stats: np.ndarray) -> np.ndarray:
        """Per-image outlier score (N,), float32: higher is more foreign."""
        emb, st = self.parts(features, image_stats)
        return np.maximum(emb, st).astype(np.float32)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-value of each score against the reference's scores."""
        ref = np.sort(self.reference_scores)
        above = len(ref) - np.searchsorted(ref, np.asarray(scores), side="left")
        return ((1 + above) / (len(ref) + 1)).astype(np.float32)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def window_test(self, scores: np.ndarray) -> tuple[int, float]:
        return window_test(self.reference_scores, scores, self.rate)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(
            zip(
                ARRAY_NAMES,
                (
                    self.axes,
                    self.mean,
                    self.class_means,
                    self.precision,
                    self.stats_mean,
                    self.stats_precision,
                    self.standardise,
                    self.reference_scores,
                ),
            )
        )

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], rate: float = DEFAULT_RATE) -> OutlierModel:
        a = {name: np.asarray(arrays[name]) for name in ARRAY_NAMES}
        return OutlierModel(
            axes=a["ood_axes"],
            mean=a["ood_mean"],
            class_means=a["ood_class_means"],
            precision=a["ood_precision"],
            stats_mean=a["ood_stats_mean"],
            stats_precision=a["ood_stats_precision"],
            standardise=a["ood_standardise"],
            reference_scores=a["outlier_scores"],
            rate=rate,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "rank": self.rank,
            "threshold": self.threshold,
            "expected_rate": self.expected_rate,
            "axes": int(self.axes.shape[0]),
            "reference_images": int(len(self.reference_scores)),
        }


def fit_outlier_model(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    fit_stats: np.ndarray,
    reference_features: np.ndarray,
    reference_stats: np.ndarray,
    *,
    num_classes: int,
    rate: float = DEFAULT_RATE,
) -> OutlierModel:
    """Fit the two distances on the training sample, score the reference with them.

    ``fit_labels`` are the training images' true class indices (-1: unknown,
    left out of the class means).
    """
    x = np.asarray(fit_features, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[: min(MAX_AXES, len(vt))]
    z = (x - mean) @ axes.T
    labels = np.asarray(fit_labels)
    class_means = np.full((num_classes, axes.shape[0]), np.nan)
    for c in range(num_classes):
        if np.any(labels == c):
            class_means[c] = z[labels == c].mean(axis=0)
    known = labels >= 0
    precision = _shrunk_precision(z[known] - class_means[labels[known]])
    s = stats_features(fit_stats)
    stats_mean = s.mean(axis=0)
    stats_precision = _shrunk_precision(s - stats_mean, floor=np.full(s.shape[1], STAT_FLOOR))
    unscaled = OutlierModel(
        axes=axes,
        mean=mean,
        class_means=class_means,
        precision=precision,
        stats_mean=stats_mean,
        stats_precision=stats_precision,
        standardise=np.array([0.0, 1.0, 0.0, 1.0]),
        reference_scores=np.zeros(1),
        rate=rate,
    )
    emb, st = unscaled.parts(x, fit_stats)
    standardise = np.array([emb.mean(), max(emb.std(), 1e-6), st.mean(), max(st.std(), 1e-6)])
    # Stored as float32; the reference is scored with the stored arrays, as every later image will be.
    f32 = np.float32
    stored = OutlierModel(
        axes=axes.astype(f32),
        mean=mean.astype(f32),
        class_means=class_means.astype(f32),
        precision=precision.astype(f32),
        stats_mean=stats_mean.astype(f32),
        stats_precision=stats_precision.astype(f32),
        standardise=standardise.astype(f32),
        reference_scores=np.zeros(1, f32),
        rate=rate,
    )
    return replace(stored, reference_scores=stored.score(reference_features, reference_stats))
