"""Drift detectors: is recent data still like the data the model was validated on?

Five detectors compare a *current* sample (a folder of new images, or the
server's window of recent requests) with the *reference* sample of the run's
profile (its held-out images, see :mod:`duet.monitor.profile`):

- ``embedding``: MMD between PCA-projected penultimate features, Gaussian
  kernel, permutation p-value (or KS per component + Bonferroni); score MMD².
- ``predicted_class``: chi-square of the 2 x C table of predicted-class
  counts, permutation p-value; score PSI.
- ``confidence``: two-sample KS on the top-1 probability; score KS D.
- ``image_stats``: two-sample KS per image statistic, Bonferroni over the
  statistics; score the largest KS D.
- ``outlier_rate``: how many images are individually foreign (a per-image
  score, :mod:`duet.monitor.outliers`, above the reference's 1 % threshold);
  exact beta-binomial p-value; score the window's outlier fraction. It sees a
  few foreign images among many ordinary ones, which the others average away.

Each detector yields one p-value (corrected within the detector where it runs
several tests). The verdict flags drift when any p-value is below
``alpha / m``, m being the number of detectors that ran (Bonferroni across
detectors), so when nothing changed the chance of a false alarm is at most
``alpha`` (4% by default) for the verdict as a whole, not per detector.
``docs/monitoring.md`` justifies the defaults and reports the measured rates.

Fewer current images than ``min_images`` is its own verdict: ``drift`` is
None and ``status`` is ``"insufficient"`` (never a green "no drift").

numpy + scipy only (no torch): the server imports it. ``DriftMonitor`` keeps a
bounded, thread-safe window of recent observations and computes a
:class:`DriftResult` on demand::

    profile = ReferenceProfile.load(run_dir / "profile")
    monitor = DriftMonitor(profile, window=500)
    monitor.add(probabilities=probs, embeddings=features, image_stats=stats)   # per batch
    result = monitor.compute()        # periodically, off the request path
    result.status, result.drift, result.scores(), result.to_dict()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sstats

from duet.errors import ConfigError
from duet.monitor.outliers import outlier_rank, outlier_threshold, window_test

if TYPE_CHECKING:
    from duet.monitor.estimate import AccuracyEstimator
    from duet.monitor.profile import ReferenceProfile

DETECTORS: tuple[str, ...] = ("embedding", "predicted_class", "confidence", "image_stats", "outlier_rate")
STATUSES: tuple[str, ...] = ("drift", "no_drift", "insufficient")
EMBEDDING_TESTS: tuple[str, ...] = ("mmd", "ks")
PSI_EPSILON = 1e-4  # share given to an empty class before taking logs (as Evidently does)


# --------------------------------------------------------------------------- settings and data


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
            embeddings,
            classes,
            probabilities[np.arange(len(classes)), classes],
            image_stats,
            outlier_scores,
            accuracy_scores,
        )


@dataclass
class DetectorResult:
    """One detector's answer. ``statistic`` is its score (higher = more
    different); ``drift`` is ``p_value < threshold``; ``skipped`` says why it
    did not run (then ``drift`` is False and it does not count in the verdict)."""

    detector: str
    method: str
    statistic_name: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drift: bool
    sentence: str
    n_reference: int
    n_current: int
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftResult:
    """The verdict and every detector's result (``to_dict`` is JSON-able).

    ``status`` is "drift", "no_drift" or "insufficient" (too few images for
    any detector to run); ``drift`` is True, False or None respectively.
    ``accuracy`` is the label-free accuracy estimate of the current images
    (``AccuracyEstimator.estimate``), None without an estimator or with fewer
    than ``min_images``; it informs, it does not vote in the verdict.
    """

    drift: bool | None
    sentence: str
    detectors: list[DetectorResult]
    n_reference: int
    n_current: int
    alpha: float
    settings: dict[str, Any]
    computed_at: str
    status: str = "no_drift"
    accuracy: dict[str, Any] | None = None

    def detector(self, name: str) -> DetectorResult | None:
        return next((d for d in self.detectors if d.detector == name), None)

    def ran(self) -> list[DetectorResult]:
        return [d for d in self.detectors if not d.skipped]

    def scores(self) -> dict[str, float]:
        """``{detector: statistic}`` of the detectors that ran (for ``duet_drift_score{detector}``)."""
        return {d.detector: float(d.statistic) for d in self.ran() if d.statistic is not None}

    def p_values(self) -> dict[str, float]:
        return {d.detector: float(d.p_value) for d in self.ran() if d.p_value is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "drift": self.drift,
            "sentence": self.sentence,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "alpha": self.alpha,
            "computed_at": self.computed_at,
            "settings": self.settings,
            "detectors": [d.to_dict() for d in self.detectors],
            "accuracy_estimate": self.accuracy,
        }


# --------------------------------------------------------------------------- statistics


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, sigma2: float, permutations: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Unbiased MMD² between samples ``x`` (n, d) and ``y`` (m, d) with the
    Gaussian kernel ``exp(-|a-b|² / (2 sigma2))``, and its permutation p-value.

    Every permutation is scored from the one pooled kernel matrix: with ``A``
    the (N, B) membership matrix of B random relabellings, a single ``K @ A``
    gives all B statistics (one matmul instead of B index-gathers).

    Returns ``(mmd2, p_value, threshold)``: ``p = (1 + #{perm >= mmd2}) / (B + 1)``
    (never 0), and ``threshold`` the 95th percentile of the permuted values.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("the MMD test needs at least 2 rows in each sample")
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    # float32 for the (N, N) x (N, B) products: about twice as fast as float64
    # (150 + 100 rows, 500 permutations: ~40 -> ~20 ms on 2 busy cores), and
    # the rounding (~1e-7 of the kernel sums) is far below the spread of the
    # permuted statistics.
    kernel = np.exp(-d2 / (2.0 * sigma2)).astype(np.float32)
    np.fill_diagonal(kernel, 0.0)  # the unbiased estimator leaves out i == j
    total = float(kernel.sum(dtype=np.float64))
    row_sums = kernel.sum(1, dtype=np.float64).astype(np.float32)

    def mmd2(members: np.ndarray) -> np.ndarray:
        sxx = np.einsum("ib,ib->b", members, kernel @ members).astype(np.float64)
        sxy = (members.T @ row_sums).astype(np.float64) - sxx
        syy = total - 2.0 * sxy - sxx
        return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)

    first = np.zeros((n + m, 1), dtype=np.float32)
    first[:n] = 1.0
    observed = float(mmd2(first)[0])
    permuted = []
    for start in range(0, permutations, 128):  # bounded memory: (N, 128) at a time
        b = min(128, permutations - start)
        order = rng.random((n + m, b)).argsort(axis=0)
        members = np.zeros((n + m, b), dtype=np.float32)
        np.put_along_axis(members, order[:n], 1.0, axis=0)
        permuted.append(mmd2(members))
    null = np.concatenate(permuted)
    p = (1.0 + float((null >= observed).sum())) / (permutations + 1.0)
    return observed, p, float(np.quantile(null, 0.95))


def median_heuristic_sigma2(z: np.ndarray, *, max_rows: int = 1000, seed: int = 0) -> float:
    """``sigma²`` of the Gaussian kernel by the median heuristic (Gretton et al.,
    2012; alibi-detect's ``sigma_median``): half the median squared distance
    between distinct rows, so ``k = exp(-d² / median(d²))``."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) > max_rows:
        z = z[np.random.default_rng(seed).choice(len(z), max_rows, replace=False)]
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    off = d2[np.triu_indices(len(z), k=1)]
    med = float(np.median(off)) if off.size else 1.0
    return med / 2.0 if med > 0 else 1.0


def psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = np.maximum(ref_counts / max(ref_counts.sum(), 1), PSI_EPSILON)
    q = np.maximum(cur_counts / max(cur_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def chi2_permutation_test(
    ref: np.ndarray, cur: np.ndarray, *, num_classes: int, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Pearson's chi-square statistic of the 2 x C table of class counts, with a
    permutation p-value: the class labels of the pooled sample are reassigned
    to the two samples at random ``permutations`` times. Exact at any sample
    size: the column totals never change, so no rare class needs pooling (the
    asymptotic p-value needs ~5 expected counts per cell, a rule that gets
    shaky at the 1% level the verdict uses).

    Returns ``(chi2, p_value)`` with ``p = (1 + #{perm >= chi2}) / (B + 1)``.
    """
    pooled = np.concatenate([ref, cur]).astype(np.int64)
    n, big_n = len(ref), len(ref) + len(cur)
    onehot = np.zeros((big_n, num_classes))
    onehot[np.arange(big_n), pooled] = 1.0
    totals = onehot.sum(0)
    present = totals > 0
    onehot, totals = onehot[:, present], totals[present]
    expected_ref, expected_cur = n * totals / big_n, (big_n - n) * totals / big_n

    def chi2(ref_counts: np.ndarray) -> np.ndarray:
        cur_counts = totals - ref_counts
        return (
            ((ref_counts - expected_ref) ** 2) / expected_ref + ((cur_counts - expected_cur) ** 2) / expected_cur
        ).sum(-1)

    observed = float(chi2(onehot[:n].sum(0)))
    null = []
    for start in range(0, permutations, 128):
        b = min(128, permutations - start)
        order = rng.random((b, big_n)).argsort(axis=1)[:, :n]
        members = np.zeros((b, big_n))
        np.put_along_axis(members, order, 1.0, axis=1)
        null.append(chi2(members @ onehot))
    null_values = np.concatenate(null)
    return observed, (1.0 + float((null_values >= observed - 1e-9).sum())) / (permutations + 1.0)


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# --------------------------------------------------------------------------- detectors


def _skip(detector: str, method: str, statistic_name: str, n_ref: int, n_cur: int, why: str) -> DetectorResult:
    return DetectorResult(
        detector, method, statistic_name, None, None, None, False, f"Not tested: {why}.", n_ref, n_cur, {}, why
    )


def _too_few(n_cur: int, settings: DriftSettings) -> str:
    return f"only {n_cur} current image{'s' if n_cur != 1 else ''} (needs {settings.min_images})"


def format_statistic(name: str, value: float | None, digits: int = 4) -> str:
    """``"MMD² = 0.0123"`` for a person to read. An unbiased MMD² below 0 (its
    estimate of a true 0 scatters around 0) reads ``"MMD² ≈ 0"``: a squared
    distance is never negative, and the raw value stays in the JSON."""
    if value is None:
        return f"{name} –"
    if name == "MMD²" and value < 0:
        return f"{name} ≈ 0"
    return f"{name} = {value:.{digits}f}"


def embedding_detector(
    ref: np.ndarray | None, cur: np.ndarray | None, *, sigma2: float, settings: DriftSettings, rng: np.random.Generator
) -> DetectorResult:
    if settings.embedding_test == "mmd":
        method = f"MMD, Gaussian kernel (median heuristic), {settings.permutations} permutations"
        stat_name = "MMD²"
    else:
        method = "KS per PCA component, Bonferroni over components"
        stat_name = "max KS D"
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        return _skip("embedding", method, stat_name, n_ref, n_cur, "no embeddings were recorded")
    if n_cur < settings.min_images:
        return _skip("embedding", method, stat_name, n_ref, n_cur, _too_few(n_cur, settings))
    if n_ref > settings.max_reference:
        ref = ref[np.sort(rng.choice(n_ref, settings.max_reference, replace=False))]
    details: dict[str, Any] = {"components": int(ref.shape[1]), "reference_rows_used": int(len(ref))}
    if settings.embedding_test == "mmd":
        stat, p, null95 = mmd_permutation_test(ref, cur, sigma2=sigma2, permutations=settings.permutations, rng=rng)
        # The unbiased estimate (``statistic``, kept raw here too) dips below 0 when
        # the samples are alike; sentences and reports show it as "≈ 0" then.
        details.update({"sigma2": sigma2, "null_95th_percentile": null95, "mmd2_unbiased": float(stat)})
    else:
        tests = [sstats.ks_2samp(ref[:, j], cur[:, j]) for j in range(ref.shape[1])]
        d = np.array([t.statistic for t in tests])
        ps = np.array([t.pvalue for t in tests])
        stat, p = float(d.max()), float(min(1.0, ps.min() * len(ps)))
        details.update({"most_shifted_component": int(d.argmax()), "per_component_d": d.round(4).tolist()})
    details["if_drift"] = (
        f"Embeddings moved away from the reference ({format_statistic(stat_name, stat)}, {_fmt_p(p)}): "
        "the model is seeing images unlike those it was validated on."
    )
    details["if_not"] = f"Embeddings look like the reference ({format_statistic(stat_name, stat)}, {_fmt_p(p)})."
    return DetectorResult(
        "embedding", method, stat_name, float(stat), float(p), None, False, "", len(ref), n_cur, details
    )


def class_detector(
    ref: np.ndarray | None,
    cur: np.ndarray | None,
    *,
    labels: Sequence[str],
    settings: DriftSettings,
    rng: np.random.Generator,
) -> DetectorResult:
    method = f"chi-square of predicted-class counts, {settings.permutations} permutations; PSI as effect size"
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        return _skip("predicted_class", method, "PSI", n_ref, n_cur, "no predictions were recorded")
    if n_cur < settings.min_images:
        return _skip("predicted_class", method, "PSI", n_ref, n_cur, _too_few(n_cur, settings))
    c = len(labels)
    ref_counts = np.bincount(ref, minlength=c)[:c].astype(np.float64)
    cur_counts = np.bincount(cur, minlength=c)[:c].astype(np.float64)
    index = psi(ref_counts, cur_counts)
    ref_share, cur_share = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    moved = int(np.argmax(np.abs(cur_share - ref_share)))
    chi2, p = chi2_permutation_test(ref, cur, num_classes=c, permutations=settings.permutations, rng=rng)
    details = {
        "chi2": chi2,
        "per_class": [
            {"label": labels[i], "reference_share": float(ref_share[i]), "current_share": float(cur_share[i])}
            for i in range(c)
        ],
        "if_drift": (
            f"Predicted classes shifted (chi-square {_fmt_p(p)}, PSI {index:.2f}): '{labels[moved]}' is "
            f"{cur_share[moved]:.0%} of predictions now vs {ref_share[moved]:.0%} in the reference."
        ),
        "if_not": f"The mix of predicted classes matches the reference (chi-square {_fmt_p(p)}, PSI {index:.2f}).",
    }
    return DetectorResult("predicted_class", method, "PSI", index, p, None, False, "", n_ref, n_cur, details)


def confidence_detector(ref: np.ndarray | None, cur: np.ndarray | None, *, settings: DriftSettings) -> DetectorResult:
    method = "two-sample Kolmogorov-Smirnov test on the top-1 probability"
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        return _skip("confidence", method, "KS D", n_ref, n_cur, "no predictions were recorded")
    if n_cur < settings.min_images:
        return _skip("confidence", method, "KS D", n_ref, n_cur, _too_few(n_cur, settings))
    test = sstats.ks_2samp(ref, cur)
    d, p = float(test.statistic), float(test.pvalue)
    med_ref, med_cur = float(np.median(ref)), float(np.median(cur))
    low_ref, low_cur = float(np.mean(ref < 0.5)), float(np.mean(cur < 0.5))
    way = "dropped" if med_cur < med_ref else "rose"
    details = {
        "reference_median": med_ref,
        "current_median": med_cur,
        "reference_below_0.5": low_ref,
        "current_below_0.5": low_cur,
        "if_drift": (
            f"Top-1 confidence {way}: median {med_cur:.2f} now vs {med_ref:.2f} in the reference, "
            f"{low_cur:.0%} of images below 0.5 vs {low_ref:.0%} (KS D = {d:.2f}, {_fmt_p(p)})."
        ),
        "if_not": f"Top-1 confidence is as in the reference (median {med_cur:.2f} vs {med_ref:.2f}, KS {_fmt_p(p)}).",
    }
    return DetectorResult("confidence", method, "KS D", d, p, None, False, "", n_ref, n_cur, details)


def image_stats_detector(
    ref: np.ndarray | None, cur: np.ndarray | None, *, stat_names: Sequence[str], settings: DriftSettings
) -> DetectorResult:
    method = f"two-sample KS test per image statistic, Bonferroni over {len(stat_names)}"
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        return _skip("image_stats", method, "max KS D", n_ref, n_cur, "no image statistics were recorded")
    if n_cur < settings.min_images:
        return _skip("image_stats", method, "max KS D", n_ref, n_cur, _too_few(n_cur, settings))
    k = len(stat_names)
    per_stat = []
    for j, name in enumerate(stat_names):
        a, b = ref[:, j], cur[:, j]
        if np.all(a == a[0]) and np.all(b == a[0]):
            d, p = 0.0, 1.0  # the same constant on both sides (e.g. every image 32 x 32)
        else:
            t = sstats.ks_2samp(a, b)
            d, p = float(t.statistic), float(t.pvalue)
        per_stat.append(
            {
                "stat": name,
                "ks_d": d,
                "p_value": p,
                "corrected_p": min(1.0, p * k),
                "reference_median": float(np.median(a)),
                "current_median": float(np.median(b)),
            }
        )
    p = min(s["corrected_p"] for s in per_stat)
    d = max(s["ks_d"] for s in per_stat)
    details: dict[str, Any] = {
        "per_stat": per_stat,
        "if_drift": "Image statistics changed: {changed} (KS, Bonferroni-corrected {p}).".format(
            changed="{changed}", p=_fmt_p(p)
        ),
        "if_not": (
            f"Image size, aspect ratio, brightness, contrast and saturation are as in the reference "
            f"(smallest corrected KS {_fmt_p(p)})."
        ),
    }
    return DetectorResult("image_stats", method, "max KS D", d, p, None, False, "", n_ref, n_cur, details)


def outlier_detector(ref: np.ndarray | None, cur: np.ndarray | None, *, settings: DriftSettings) -> DetectorResult:
    rate = settings.outlier_rate
    method = (
        f"per-image outlier score above the reference's {rate:.0%} threshold, exact beta-binomial test of the count"
    )
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        return _skip(
            "outlier_rate",
            method,
            "outlier share",
            n_ref,
            n_cur,
            "no outlier scores (the profile predates them, or the model gave no embeddings)",
        )
    if n_cur < settings.min_images:
        return _skip("outlier_rate", method, "outlier share", n_ref, n_cur, _too_few(n_cur, settings))
    x, p = window_test(ref, cur, rate)
    share, expected = x / n_cur, outlier_rank(n_ref, rate) / (n_ref + 1)
    details = {
        "outliers": x,
        "expected_share": expected,
        "threshold": outlier_threshold(ref, rate),
        "if_drift": (
            f"{x} of {n_cur} images ({share:.0%}) are unlike the reference, each on its own (outlier score "
            f"above the threshold {expected:.1%} of clean images exceed; {_fmt_p(p)}): some inputs come "
            "from somewhere else."
        ),
        "if_not": f"{x} of {n_cur} images are outliers ({share:.0%}; {expected:.1%} expected on clean data, {_fmt_p(p)}).",
    }
    return DetectorResult("outlier_rate", method, "outlier share", share, p, None, False, "", n_ref, n_cur, details)


def _finalise(result: DetectorResult, threshold: float) -> DetectorResult:
    """Apply the verdict's threshold: the decision and the sentence that goes with it."""
    details = dict(result.details)
    if_drift, if_not = details.pop("if_drift"), details.pop("if_not")
    drift = result.p_value is not None and result.p_value < threshold
    if result.detector == "image_stats":
        changed = sorted((s for s in details["per_stat"] if s["corrected_p"] < threshold), key=lambda s: -s["ks_d"])
        details["changed"] = [s["stat"] for s in changed]
        if_drift = if_drift.format(
            changed=", ".join(
                f"{s['stat']} (median {s['current_median']:.3g} now vs {s['reference_median']:.3g})" for s in changed
            )
        )
    return replace(result, threshold=threshold, drift=drift, sentence=if_drift if drift else if_not, details=details)


# --------------------------------------------------------------------------- the comparison


def compare_observations(
    reference: Observations,
    current: Observations,
    *,
    labels: Sequence[str],
    sigma2: float,
    stat_names: Sequence[str],
    settings: DriftSettings | None = None,
    accuracy: AccuracyEstimator | None = None,
) -> DriftResult:
    """Run every detector on ``current`` against ``reference`` and give the verdict
    (and, with an ``accuracy`` estimator, the current images' estimated accuracy)."""
    return _detect(
        reference,
        current._arrays(),
        labels=labels,
        sigma2=sigma2,
        stat_names=stat_names,
        settings=settings or DriftSettings(),
        window=False,
        accuracy=accuracy,
    )


def _detect(
    reference: Observations,
    current: dict[str, np.ndarray],
    *,
    labels: Sequence[str],
    sigma2: float,
    stat_names: Sequence[str],
    settings: DriftSettings,
    window: bool,
    accuracy: AccuracyEstimator | None = None,
) -> DriftResult:
    """The detectors and the verdict. ``current`` maps Observations field names
    to rows; signals may differ in length (a server may record embeddings for
    some requests only), so each detector gets its own rows."""
    rng = np.random.default_rng(settings.seed)
    cur = current.get
    raw = [
        embedding_detector(reference.embeddings, cur("embeddings"), sigma2=sigma2, settings=settings, rng=rng),
        class_detector(reference.classes, cur("classes"), labels=labels, settings=settings, rng=rng),
        confidence_detector(reference.confidences, cur("confidences"), settings=settings),
        image_stats_detector(reference.image_stats, cur("image_stats"), stat_names=stat_names, settings=settings),
        outlier_detector(reference.outlier_scores, cur("outlier_scores"), settings=settings),
    ]
    ran = [r for r in raw if not r.skipped]
    threshold = settings.alpha / max(len(ran), 1)
    results = [r if r.skipped else _finalise(r, threshold) for r in raw]
    drifted = [r for r in results if r.drift]
    n_cur = max((r.n_current for r in results), default=0)
    images = f"{n_cur} image{'s' if n_cur != 1 else ''}"
    status = "insufficient" if not ran else ("drift" if drifted else "no_drift")
    if not ran:
        lead = "Warming up" if window else "Not enough data to decide"
        sentence = f"{lead}: {images}, and each detector needs {settings.min_images}. This is not a 'no drift' verdict."
    elif drifted:
        names = ", ".join(r.detector for r in drifted)
        sentence = f"Drift detected by {len(drifted)} of {len(ran)} detectors ({names}). {drifted[0].sentence}"
    else:
        where = f"the last {images}" if window else f"the {images}"
        sentence = (
            f"No drift: {where} look like the reference on all {len(ran)} detectors "
            f"(false-alarm rate at most {settings.alpha:.0%})."
        )
    scores = cur("accuracy_scores")
    estimate = (
        accuracy.estimate(scores)
        if accuracy is not None and scores is not None and len(scores) >= settings.min_images
        else None
    )
    if estimate is not None:
        # Under a shift the model is mostly over-confident, so a confidence-based
        # estimate errs upward (docs/monitoring.md, "Estimated accuracy"): say so with it.
        estimate["caution"] = (
            None
            if not drifted
            else f"the inputs drifted ({', '.join(r.detector for r in drifted)}): estimates from "
            "confidence are often too optimistic under such shifts; label a sample to measure"
        )
    return DriftResult(
        accuracy=estimate,
        drift=None if status == "insufficient" else bool(drifted),
        sentence=sentence,
        detectors=results,
        n_reference=len(reference),
        n_current=n_cur,
        alpha=settings.alpha,
        settings=asdict(settings),
        computed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status=status,
    )


def compare(profile: ReferenceProfile, current: Observations, settings: DriftSettings | None = None) -> DriftResult:
    """Compare ``current`` with the profile's reference sample."""
    return compare_observations(
        profile.observations(),
        current,
        labels=profile.labels,
        sigma2=profile.sigma2,
        stat_names=profile.stat_names,
        settings=settings,
        accuracy=profile.accuracy,
    )


def false_alarm_rate(
    held_out: Observations,
    *,
    labels: Sequence[str],
    sigma2: float,
    stat_names: Sequence[str],
    reference_size: int,
    window: int,
    trials: int = 200,
    settings: DriftSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibration by resampling: split ``held_out`` (images from the training
    distribution the model never trained on) ``trials`` times at random into a
    disjoint reference of ``reference_size`` rows and a current window of
    ``window`` rows, run the full verdict, and count the alarms. Every alarm is
    false by construction, so ``rate`` estimates the false-alarm rate."""
    settings = settings or DriftSettings()
    if reference_size + window > len(held_out):
        raise ValueError(f"reference_size + window = {reference_size + window} exceeds the {len(held_out)} rows")
    rng = np.random.default_rng(seed)
    alarms = 0
    per_detector = dict.fromkeys(DETECTORS, 0)
    for t in range(trials):
        order = rng.permutation(len(held_out))
        ref, cur = held_out.take(order[:reference_size]), held_out.take(order[reference_size : reference_size + window])
        result = compare_observations(
            ref,
            cur,
            labels=labels,
            sigma2=sigma2,
            stat_names=stat_names,
            settings=replace(settings, seed=settings.seed + t),
        )
        alarms += bool(result.drift)
        for d in result.detectors:
            per_detector[d.detector] += d.drift
    return {
        "trials": trials,
        "alarms": alarms,
        "rate": alarms / trials,
        "per_detector": per_detector,
        "reference_size": reference_size,
        "window": window,
    }


# --------------------------------------------------------------------------- the rolling window


class _Ring:
    """A fixed-capacity FIFO of rows (oldest overwritten first)."""

    def __init__(self, capacity: int, width: int | None, dtype: Any) -> None:
        shape = (capacity,) if width is None else (capacity, width)
        self.data = np.zeros(shape, dtype=dtype)
        self.capacity, self.next, self.size = capacity, 0, 0

    def add(self, rows: np.ndarray) -> None:
        rows = rows[-self.capacity :]
        n = len(rows)
        end = self.next + n
        if end <= self.capacity:
            self.data[self.next : end] = rows
        else:
            split = self.capacity - self.next
            self.data[self.next :] = rows[:split]
            self.data[: n - split] = rows[split:]
        self.next = end % self.capacity
        self.size = min(self.capacity, self.size + n)

    def values(self) -> np.ndarray | None:
        if self.size == 0:
            return None
        if self.size < self.capacity:
            return self.data[: self.size].copy()
        return np.concatenate([self.data[self.next :], self.data[: self.next]])


class DriftMonitor:
    """A bounded window of the most recent observations and the drift verdict on it.

    Thread-safe: ``add`` may be called from request handlers while another
    thread calls ``compute``. ``add`` only copies rows into ring buffers under a
    lock (microseconds); ``compute`` snapshots the window under the lock and
    runs the tests outside it, so requests never wait for a computation.

    Args:
        profile: the run's ``ReferenceProfile``.
        window: how many recent images are compared (default 500).
        settings: detector settings (defaults calibrated, see docs/monitoring.md).
    """

    def __init__(self, profile: ReferenceProfile, *, window: int = 500, settings: DriftSettings | None = None) -> None:
        if window < 2:
            raise ConfigError(f"`window` must be at least 2 images. Received: window={window!r}")
        self.profile = profile
        self.window = window
        self.settings = settings or DriftSettings()
        self._lock = threading.Lock()
        self._embeddings = _Ring(window, profile.n_components, np.float32)
        self._classes = _Ring(window, None, np.int64)
        self._confidences = _Ring(window, None, np.float32)
        self._stats = _Ring(window, len(profile.stat_names), np.float32)
        self._outliers = _Ring(window, None, np.float32)
        self._accuracy = _Ring(window, None, np.float32)
        self._seen = 0
        if profile.outliers is not None:
            _ = profile.outliers.whitening  # computed once here (~0.5 s for 512 features), not on a request

    def add(
        self,
        *,
        probabilities: np.ndarray | None = None,
        classes: np.ndarray | None = None,
        confidences: np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        image_stats: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Record one batch. Pass ``probabilities`` (N, C) or ``classes`` and
        ``confidences`` (N,); ``embeddings`` are raw penultimate features (N, D)
        and are projected here; ``image_stats`` (N, 6) from ``image_stats()``.

        Returns the batch's per-image outlier scores (N,) when the profile has
        an outlier model and both embeddings and image statistics were given,
        else None."""
        accuracy = None
        if probabilities is not None:
            obs = Observations.from_probabilities(probabilities)
            classes, confidences = obs.classes, obs.confidences
            accuracy = self.profile.accuracy_scores(probabilities)
        if (classes is None) != (confidences is None):
            raise ValueError("pass classes and confidences together (or probabilities)")
        if classes is not None:
            classes = np.asarray(classes, dtype=np.int64).reshape(-1)
            confidences = np.asarray(confidences, dtype=np.float32).reshape(-1)
            if len(classes) != len(confidences):
                raise ValueError(f"{len(classes)} classes but {len(confidences)} confidences")
        projected = None if embeddings is None else self.profile.project(embeddings)
        stats = None
        if image_stats is not None:
            stats = np.asarray(image_stats, dtype=np.float32).reshape(-1, len(self.profile.stat_names))
        outliers = None
        if self.profile.outliers is not None and embeddings is not None and stats is not None:
            outliers = self.profile.outliers.score(embeddings, stats)
        batch = next((len(a) for a in (classes, projected, stats) if a is not None), 0)
        with self._lock:
            if classes is not None:
                self._classes.add(classes)
                self._confidences.add(confidences)
            if projected is not None:
                self._embeddings.add(projected)
            if stats is not None:
                self._stats.add(stats)
            if outliers is not None:
                self._outliers.add(outliers)
            if accuracy is not None:
                self._accuracy.add(accuracy)
            self._seen += batch
        return outliers

    @property
    def seen(self) -> int:
        """Images recorded since the monitor started (or was reset)."""
        return self._seen

    def snapshot(self) -> dict[str, np.ndarray | None]:
        """Copies of the window's rows, per signal (they may differ in length)."""
        with self._lock:
            return {
                "embeddings": self._embeddings.values(),
                "classes": self._classes.values(),
                "confidences": self._confidences.values(),
                "image_stats": self._stats.values(),
                "outlier_scores": self._outliers.values(),
                "accuracy_scores": self._accuracy.values(),
            }

    def compute(self) -> DriftResult:
        """The verdict on the current window (tens to hundreds of ms; call it off the request path)."""
        current = {k: v for k, v in self.snapshot().items() if v is not None}
        p = self.profile
        return _detect(
            p.observations(),
            current,
            labels=p.labels,
            sigma2=p.sigma2,
            stat_names=p.stat_names,
            settings=self.settings,
            window=True,
            accuracy=p.accuracy,
        )

    def reset(self) -> None:
        """Empty the window (e.g. after a new champion is swapped in)."""
        with self._lock:
            for ring in (
                self._embeddings,
                self._classes,
                self._confidences,
                self._stats,
                self._outliers,
                self._accuracy,
            ):
                ring.next = ring.size = 0
            self._seen = 0
