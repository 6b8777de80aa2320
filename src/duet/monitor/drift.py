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

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sstats

from duet.errors import ConfigError
from duet.monitor.outliers import outlier_rank, outlier_threshold, window_test
from duet.monitor.signals import DETECTORS, DriftSettings, Observations
from duet.monitor.stattests import chi2_permutation_test, mmd_permutation_test, psi

if TYPE_CHECKING:
    from duet.monitor.estimate import AccuracyEstimator
    from duet.monitor.profile import ReferenceProfile

__all__ = [
    "DETECTORS",
    "REGISTRY",
    "STATUSES",
    "Detector",
    "DetectorResult",
    "DriftMonitor",
    "DriftResult",
    "DriftSettings",
    "Observations",
    "compare",
    "compare_observations",
    "false_alarm_rate",
    "format_statistic",
    "run_detectors",
]

STATUSES: tuple[str, ...] = ("drift", "no_drift", "insufficient")


# --------------------------------------------------------------------------- results


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


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def format_statistic(name: str, value: float | None, digits: int = 4) -> str:
    """``"MMD² = 0.0123"`` for a person to read. An unbiased MMD² below 0 (its
    estimate of a true 0 scatters around 0) reads ``"MMD² ≈ 0"``: a squared
    distance is never negative, and the raw value stays in the JSON."""
    if value is None:
        return f"{name} –"
    if name == "MMD²" and value < 0:
        return f"{name} ≈ 0"
    return f"{name} = {value:.{digits}f}"


# --------------------------------------------------------------------------- the detectors


@dataclass(frozen=True)
class Context:
    """What a detector may use besides the two samples. One ``rng`` is shared by
    the detectors in registry order, so a result is reproducible from the seed."""

    settings: DriftSettings
    rng: np.random.Generator
    labels: Sequence[str]
    sigma2: float
    stat_names: Sequence[str]


@dataclass(frozen=True)
class Measured:
    """A detector's test before the verdict's threshold is applied: its score,
    p-value and details, and the sentence for either decision. ``n_reference``:
    the reference rows used, when the test subsampled them (else all)."""

    statistic: float
    p_value: float
    details: dict[str, Any]
    if_drift: str
    if_not: str
    n_reference: int | None = None


@dataclass(frozen=True)
class Detector:
    """One entry of the registry (``REGISTRY``).

    signal: the ``Observations`` field it compares.
    describe: ``(method, statistic name)`` for the settings (a skipped detector reports them too).
    missing: why it is skipped when either side lacks the signal.
    test: the test on the two samples; it runs only with both present and at
        least ``min_images`` current rows (the preamble every detector shares).
    at_threshold: completes the result once the threshold is known (optional).
    """

    signal: str
    describe: Callable[[Context], tuple[str, str]]
    missing: str
    test: Callable[[np.ndarray, np.ndarray, Context], Measured]
    at_threshold: Callable[[Measured, float], Measured] | None = None


def _describe_embedding(ctx: Context) -> tuple[str, str]:
    if ctx.settings.embedding_test == "mmd":
        return f"MMD, Gaussian kernel (median heuristic), {ctx.settings.permutations} permutations", "MMD²"
    return "KS per PCA component, Bonferroni over components", "max KS D"


def _embedding(ref: np.ndarray, cur: np.ndarray, ctx: Context) -> Measured:
    settings, rng = ctx.settings, ctx.rng
    if len(ref) > settings.max_reference:
        ref = ref[np.sort(rng.choice(len(ref), settings.max_reference, replace=False))]
    details: dict[str, Any] = {"components": int(ref.shape[1]), "reference_rows_used": int(len(ref))}
    if settings.embedding_test == "mmd":
        stat, p, null95 = mmd_permutation_test(ref, cur, sigma2=ctx.sigma2, permutations=settings.permutations, rng=rng)
        # The unbiased estimate (``statistic``, kept raw here too) dips below 0 when
        # the samples are alike; sentences and reports show it as "≈ 0" then.
        details.update({"sigma2": ctx.sigma2, "null_95th_percentile": null95, "mmd2_unbiased": float(stat)})
    else:
        tests = [sstats.ks_2samp(ref[:, j], cur[:, j]) for j in range(ref.shape[1])]
        d = np.array([t.statistic for t in tests])
        ps = np.array([t.pvalue for t in tests])
        stat, p = float(d.max()), float(min(1.0, ps.min() * len(ps)))
        details.update({"most_shifted_component": int(d.argmax()), "per_component_d": d.round(4).tolist()})
    shown = f"{format_statistic(_describe_embedding(ctx)[1], stat)}, {_fmt_p(p)}"
    return Measured(
        statistic=float(stat),
        p_value=float(p),
        details=details,
        if_drift=(
            f"Embeddings moved away from the reference ({shown}): "
            "the model is seeing images unlike those it was validated on."
        ),
        if_not=f"Embeddings look like the reference ({shown}).",
        n_reference=len(ref),
    )


def _predicted_class(ref: np.ndarray, cur: np.ndarray, ctx: Context) -> Measured:
    labels, c = ctx.labels, len(ctx.labels)
    ref_counts = np.bincount(ref, minlength=c)[:c].astype(np.float64)
    cur_counts = np.bincount(cur, minlength=c)[:c].astype(np.float64)
    index = psi(ref_counts, cur_counts)
    ref_share, cur_share = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    moved = int(np.argmax(np.abs(cur_share - ref_share)))
    chi2, p = chi2_permutation_test(ref, cur, num_classes=c, permutations=ctx.settings.permutations, rng=ctx.rng)
    per_class = [
        {"label": labels[i], "reference_share": float(ref_share[i]), "current_share": float(cur_share[i])}
        for i in range(c)
    ]
    return Measured(
        statistic=index,
        p_value=p,
        details={"chi2": chi2, "per_class": per_class},
        if_drift=(
            f"Predicted classes shifted (chi-square {_fmt_p(p)}, PSI {index:.2f}): '{labels[moved]}' is "
            f"{cur_share[moved]:.0%} of predictions now vs {ref_share[moved]:.0%} in the reference."
        ),
        if_not=f"The mix of predicted classes matches the reference (chi-square {_fmt_p(p)}, PSI {index:.2f}).",
    )


def _confidence(ref: np.ndarray, cur: np.ndarray, ctx: Context) -> Measured:
    test = sstats.ks_2samp(ref, cur)
    d, p = float(test.statistic), float(test.pvalue)
    med_ref, med_cur = float(np.median(ref)), float(np.median(cur))
    low_ref, low_cur = float(np.mean(ref < 0.5)), float(np.mean(cur < 0.5))
    way = "dropped" if med_cur < med_ref else "rose"
    return Measured(
        statistic=d,
        p_value=p,
        details={
            "reference_median": med_ref,
            "current_median": med_cur,
            "reference_below_0.5": low_ref,
            "current_below_0.5": low_cur,
        },
        if_drift=(
            f"Top-1 confidence {way}: median {med_cur:.2f} now vs {med_ref:.2f} in the reference, "
            f"{low_cur:.0%} of images below 0.5 vs {low_ref:.0%} (KS D = {d:.2f}, {_fmt_p(p)})."
        ),
        if_not=f"Top-1 confidence is as in the reference (median {med_cur:.2f} vs {med_ref:.2f}, KS {_fmt_p(p)}).",
    )


def _image_stats(ref: np.ndarray, cur: np.ndarray, ctx: Context) -> Measured:
    k = len(ctx.stat_names)
    per_stat: list[dict[str, Any]] = []
    for j, name in enumerate(ctx.stat_names):
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
    p = min(float(s["corrected_p"]) for s in per_stat)
    return Measured(
        statistic=max(float(s["ks_d"]) for s in per_stat),
        p_value=p,
        details={"per_stat": per_stat},
        if_drift="",  # names the changed statistics, which depends on the threshold: _image_stats_at
        if_not=(
            f"Image size, aspect ratio, brightness, contrast and saturation are as in the reference "
            f"(smallest corrected KS {_fmt_p(p)})."
        ),
    )


def _image_stats_at(measured: Measured, threshold: float) -> Measured:
    """The statistics whose corrected p-value is below the threshold, most shifted first."""
    per_stat = measured.details["per_stat"]
    changed = sorted((s for s in per_stat if s["corrected_p"] < threshold), key=lambda s: -s["ks_d"])
    named = ", ".join(
        f"{s['stat']} (median {s['current_median']:.3g} now vs {s['reference_median']:.3g})" for s in changed
    )
    return replace(
        measured,
        details={**measured.details, "changed": [s["stat"] for s in changed]},
        if_drift=f"Image statistics changed: {named} (KS, Bonferroni-corrected {_fmt_p(measured.p_value)}).",
    )


def _outlier_rate(ref: np.ndarray, cur: np.ndarray, ctx: Context) -> Measured:
    rate, n_ref, n_cur = ctx.settings.outlier_rate, len(ref), len(cur)
    x, p = window_test(ref, cur, rate)
    share, expected = x / n_cur, outlier_rank(n_ref, rate) / (n_ref + 1)
    return Measured(
        statistic=share,
        p_value=p,
        details={"outliers": x, "expected_share": expected, "threshold": outlier_threshold(ref, rate)},
        if_drift=(
            f"{x} of {n_cur} images ({share:.0%}) are unlike the reference, each on its own (outlier score "
            f"above the threshold {expected:.1%} of clean images exceed; {_fmt_p(p)}): some inputs come "
            "from somewhere else."
        ),
        if_not=f"{x} of {n_cur} images are outliers ({share:.0%}; {expected:.1%} expected on clean data, {_fmt_p(p)}).",
    )


# Name -> detector, in the order they run (and draw from the shared rng) and report.
REGISTRY: dict[str, Detector] = {
    "embedding": Detector(
        signal="embeddings", describe=_describe_embedding, missing="no embeddings were recorded", test=_embedding
    ),
    "predicted_class": Detector(
        signal="classes",
        describe=lambda ctx: (
            f"chi-square of predicted-class counts, {ctx.settings.permutations} permutations; PSI as effect size",
            "PSI",
        ),
        missing="no predictions were recorded",
        test=_predicted_class,
    ),
    "confidence": Detector(
        signal="confidences",
        describe=lambda ctx: ("two-sample Kolmogorov-Smirnov test on the top-1 probability", "KS D"),
        missing="no predictions were recorded",
        test=_confidence,
    ),
    "image_stats": Detector(
        signal="image_stats",
        describe=lambda ctx: (
            f"two-sample KS test per image statistic, Bonferroni over {len(ctx.stat_names)}",
            "max KS D",
        ),
        missing="no image statistics were recorded",
        test=_image_stats,
        at_threshold=_image_stats_at,
    ),
    "outlier_rate": Detector(
        signal="outlier_scores",
        describe=lambda ctx: (
            f"per-image outlier score above the reference's {ctx.settings.outlier_rate:.0%} threshold, "
            "exact beta-binomial test of the count",
            "outlier share",
        ),
        missing="no outlier scores (the profile predates them, or the model gave no embeddings)",
        test=_outlier_rate,
    ),
}
if tuple(REGISTRY) != DETECTORS:  # DriftSettings (duet.monitor.signals) counts them for Bonferroni
    raise RuntimeError(f"the detector registry {tuple(REGISTRY)} does not match DETECTORS {DETECTORS}")


def _measure(
    name: str, ref: np.ndarray | None, cur: np.ndarray | None, ctx: Context
) -> tuple[DetectorResult, Measured | None]:
    """The preamble every detector shares, then its test: ``(result, measured)``;
    ``measured`` is None when the detector was skipped (``result.skipped`` says why)."""
    spec = REGISTRY[name]
    method, statistic_name = spec.describe(ctx)
    n_ref, n_cur = (0 if ref is None else len(ref)), (0 if cur is None else len(cur))
    if ref is None or cur is None:
        why = spec.missing
    elif n_cur < ctx.settings.min_images:
        why = f"only {n_cur} current image{'s' if n_cur != 1 else ''} (needs {ctx.settings.min_images})"
    else:
        measured = spec.test(ref, cur, ctx)
        result = DetectorResult(
            detector=name,
            method=method,
            statistic_name=statistic_name,
            statistic=measured.statistic,
            p_value=measured.p_value,
            threshold=None,
            drift=False,
            sentence="",
            n_reference=n_ref if measured.n_reference is None else measured.n_reference,
            n_current=n_cur,
            details=measured.details,
        )
        return result, measured
    skipped = DetectorResult(
        detector=name,
        method=method,
        statistic_name=statistic_name,
        statistic=None,
        p_value=None,
        threshold=None,
        drift=False,
        sentence=f"Not tested: {why}.",
        n_reference=n_ref,
        n_current=n_cur,
        skipped=why,
    )
    return skipped, None


def run_detectors(reference: Observations, current: Mapping[str, np.ndarray], ctx: Context) -> list[DetectorResult]:
    """Every registered detector on its signal, in registry order, decided at the
    verdict's threshold: ``alpha / m`` for the m detectors that ran (Bonferroni)."""
    measured = [
        _measure(name, getattr(reference, spec.signal), current.get(spec.signal), ctx)
        for name, spec in REGISTRY.items()
    ]
    threshold = ctx.settings.alpha / max(sum(m is not None for _, m in measured), 1)
    results = []
    for result, m in measured:
        if m is not None:
            at_threshold = REGISTRY[result.detector].at_threshold
            m = at_threshold(m, threshold) if at_threshold is not None else m
            drift = m.p_value < threshold
            result = replace(
                result, threshold=threshold, drift=drift, sentence=m.if_drift if drift else m.if_not, details=m.details
            )
        results.append(result)
    return results


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
    current: Mapping[str, np.ndarray],
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
    ctx = Context(
        settings=settings,
        rng=np.random.default_rng(settings.seed),
        labels=labels,
        sigma2=sigma2,
        stat_names=stat_names,
    )
    results = run_detectors(reference, current, ctx)
    ran = [r for r in results if not r.skipped]
    drifted = [r for r in results if r.drift]
    n_cur = max((r.n_current for r in results), default=0)
    status = "insufficient" if not ran else ("drift" if drifted else "no_drift")
    return DriftResult(
        accuracy=_accuracy_estimate(accuracy, current.get("accuracy_scores"), drifted, settings),
        drift=None if status == "insufficient" else bool(drifted),
        sentence=_verdict_sentence(ran, drifted, n_cur, settings, window=window),
        detectors=results,
        n_reference=len(reference),
        n_current=n_cur,
        alpha=settings.alpha,
        settings=asdict(settings),
        computed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status=status,
    )


def _verdict_sentence(
    ran: list[DetectorResult], drifted: list[DetectorResult], n_cur: int, settings: DriftSettings, *, window: bool
) -> str:
    images = f"{n_cur} image{'s' if n_cur != 1 else ''}"
    if not ran:
        lead = "Warming up" if window else "Not enough data to decide"
        return f"{lead}: {images}, and each detector needs {settings.min_images}. This is not a 'no drift' verdict."
    if drifted:
        names = ", ".join(r.detector for r in drifted)
        return f"Drift detected by {len(drifted)} of {len(ran)} detectors ({names}). {drifted[0].sentence}"
    where = f"the last {images}" if window else f"the {images}"
    return (
        f"No drift: {where} look like the reference on all {len(ran)} detectors "
        f"(false-alarm rate at most {settings.alpha:.0%})."
    )


def _accuracy_estimate(
    accuracy: AccuracyEstimator | None,
    scores: np.ndarray | None,
    drifted: list[DetectorResult],
    settings: DriftSettings,
) -> dict[str, Any] | None:
    """The current images' label-free accuracy estimate (None without an estimator
    or with fewer than ``min_images`` scores), with a caution when they drifted."""
    if accuracy is None or scores is None or len(scores) < settings.min_images:
        return None
    estimate = accuracy.estimate(scores)
    # Under a shift the model is mostly over-confident, so a confidence-based
    # estimate errs upward (docs/monitoring.md, "Estimated accuracy"): say so with it.
    estimate["caution"] = (
        None
        if not drifted
        else f"the inputs drifted ({', '.join(r.detector for r in drifted)}): estimates from "
        "confidence are often too optimistic under such shifts; label a sample to measure"
    )
    return estimate


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
            if classes is not None and confidences is not None:  # together, checked above
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
