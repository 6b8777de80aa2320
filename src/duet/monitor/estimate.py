"""Label-free accuracy estimate: how accurate is the model on recent images,
before their labels arrive?

The estimator is fitted once on held-out images *with* labels (the run's
validation split, the drift profile's reference sample); afterwards it needs
only the model's class probabilities of each new image. It is cheap enough to
run per request: ``score`` turns each image's probabilities into one number,
a server keeps those numbers in its window, and ``estimate`` turns a window of
them into an accuracy with an interval::

    est = AccuracyEstimator.fit(val_probabilities, val_labels)     # end of training
    json.dumps(est.to_dict())                                       # stored with the profile
    est = AccuracyEstimator.from_dict(doc)                          # the server
    scores = est.score(probabilities)                               # per batch, (n,)
    est.estimate(window_scores)   # {"accuracy": 0.91, "low": 0.87, "high": 0.94, "n": 300, ...}

Methods (``METHODS``), all on temperature-scaled probabilities unless said:

- ``ac``: average calibrated confidence, the mean top-1 probability after
  temperature scaling. NannyML's CBPE estimates accuracy the same way (the
  expected accuracy of a window is the mean calibrated top-1 probability);
  the two differ only in the calibrator, see ``cbpe``.
- ``cbpe``: CBPE as NannyML does it: the raw top-1 probability mapped to
  P(correct) by isotonic regression fitted on the reference, then averaged.
- ``atc_mc`` / ``atc_ne``: average thresholded confidence (Garg et al., 2022,
  "Leveraging unlabeled data to predict out-of-distribution performance"):
  a threshold ``t`` is fitted on the reference so that the share of its
  scores above ``t`` equals its accuracy; the estimate for a window is the
  share of its scores above ``t``. Score: max confidence (``mc``) or negative
  entropy (``ne``) of the calibrated probabilities.
- ``doc``: difference of confidences (Guillory et al., 2021): reference
  accuracy minus the drop of the mean *raw* top-1 probability.

``DEFAULT_METHOD`` is ``atc_ne``, chosen by measurement (docs/monitoring.md;
``duet bench monitor --setup-seed 0|1|2`` reruns it): over the issue's shifts
(brightness, contrast, scale, translate, 10 %/25 % mixtures) on three digits
champions at window 300, it was within 5 points in the most cells (10 of 24)
and over-estimated by more than 5 points in the fewest (10 of 24; the other
methods 17-20): under a shift the model is mostly over-confident, and an
over-estimate is the error that gives false comfort. No method is within 5
points when the shift makes the model confidently wrong (scaled, dimmed or
low-contrast digits, photos).

The interval is Wilson's for a binomial share at the window size: it covers
the sampling of the window's images, assuming the calibration still holds on
them. It covers neither the error of the calibration under shift (what the
measurement bounds) nor the reference's own sampling: the estimate is anchored
to the accuracy of ``n_reference`` images (standard error about 3 points at
150), which largely cancels in the comparison with ``reference_accuracy`` (``drop``).

numpy + scipy only (no torch): the server imports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sstats
from scipy.special import logsumexp

METHODS: tuple[str, ...] = ("ac", "atc_mc", "atc_ne", "doc", "cbpe")
DEFAULT_METHOD = "atc_ne"
SCHEMA = "duet.accuracy_estimator/1"
TEMPERATURE_BOUNDS = (0.05, 20.0)
PROBABILITY_FLOOR = 1e-12  # a softmax underflowed to 0 becomes log(1e-12) ~ -27.6 before scaling


# --------------------------------------------------------------------------- calibration


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (n, classes) with at least 2 classes; got {p.shape}")
    return p


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """log p: the logits up to a per-row constant, which softmax ignores."""
    return np.log(np.clip(_check_probabilities(probabilities), PROBABILITY_FLOOR, 1.0))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of
    ``softmax(log(p) / T)`` on labelled rows (Guo et al., 2017).

    Args:
        probabilities: (n, C) class probabilities of held-out images.
        labels: (n,) true class indices in ``[0, C)``.

    Returns:
        T in ``TEMPERATURE_BOUNDS``: > 1 when the model is over-confident.
    """
    z = _log_probabilities(probabilities)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(z),) or len(z) == 0:
        raise ValueError(f"labels must have shape ({len(z)},) and be non-empty; got {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1]}); got {int(y.min())}..{int(y.max())}")
    true = z[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(logsumexp(z / t, axis=1) - true / t))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / temperature)`` row by row, float64 (n, C)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}")
    z = _log_probabilities(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def max_confidence(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 probability per row."""
    return _check_probabilities(probabilities).max(axis=1)


def negative_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``sum p log p`` per row (0 for a one-hot row, ``-log C`` for a uniform one)."""
    p = _check_probabilities(probabilities)
    return np.sum(p * np.log(np.clip(p, PROBABILITY_FLOOR, 1.0)), axis=1)


def fit_atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """The threshold t with ``mean(scores > t) == mean(correct)`` (to the nearest row):
    midway between the k-th and (k+1)-th largest score, k = round(accuracy * n).
    Scores tied at that boundary all fall at or below t (the share rounds down)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    n = len(s)
    if n == 0 or len(correct) != n:
        raise ValueError(f"scores and correct must be non-empty and of equal length; got {n} and {len(correct)}")
    k = int(round(float(np.mean(correct)) * n))
    if k == 0:
        return float(s[0])  # nothing above the largest score
    if k == n:
        return float(np.nextafter(s[-1], -np.inf))  # everything above
    return float((s[k - 1] + s[k]) / 2) if s[k - 1] > s[k] else float(s[k])


def isotonic_curve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool adjacent violators).

    Returns the curve's knots ``(xs, ys)``, two per block (its lowest and highest
    x), for ``np.interp`` (linear between blocks, clipped beyond), the way
    scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` predicts."""
    order = np.argsort(np.asarray(x, dtype=np.float64), kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    blocks: list[list[float]] = []  # [sum of y, count, lowest x, highest x]
    for xi, yi in zip(xs, ys):
        blocks.append([yi, 1.0, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s, c, _, hi = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
            blocks[-1][3] = hi
    knots_x = np.array([v for b in blocks for v in (b[2], b[3])])
    knots_y = np.array([b[0] / b[1] for b in blocks for _ in (0, 1)])
    return knots_x, knots_y


def wilson_interval(share: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share observed on n trials."""
    z = float(sstats.norm.ppf(0.5 + confidence / 2))
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def raw_scores(
    method: str,
    probabilities: np.ndarray,
    temperature: float,
    curve_x: tuple[float, ...] = (),
    curve_y: tuple[float, ...] = (),
) -> np.ndarray:
    """Per image, the quantity ``method`` averages or thresholds (float64 (n,))."""
    if method == "doc":
        return max_confidence(probabilities)
    if method == "cbpe":
        return np.interp(max_confidence(probabilities), curve_x, curve_y)
    calibrated = calibrate(probabilities, temperature)
    return negative_entropy(calibrated) if method == "atc_ne" else max_confidence(calibrated)


# --------------------------------------------------------------------------- the estimator


@dataclass(frozen=True)
class AccuracyEstimator:
    """A fitted label-free accuracy estimator (plain data; ``to_dict`` is JSON-able).

    method: one of ``METHODS``.
    temperature: fitted by ``fit_temperature`` on the reference (every method keeps it).
    threshold: the ATC threshold (``atc_*`` only, else None).
    reference_accuracy: accuracy on the labelled reference rows it was fitted on.
    reference_score: mean per-image ``score`` on the reference (``estimate`` of the
        reference itself is its accuracy, up to the fit's rounding).
    n_reference: labelled rows it was fitted on.
    curve_x, curve_y: the CBPE isotonic map from raw top-1 probability to P(correct).
    """

    method: str
    temperature: float
    threshold: float | None
    reference_accuracy: float
    reference_score: float
    n_reference: int
    curve_x: tuple[float, ...] = ()
    curve_y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={self.method!r}")
        if self.method.startswith("atc") and self.threshold is None:
            raise ValueError(f"method {self.method!r} needs its threshold")
        if self.method == "cbpe" and (not self.curve_x or len(self.curve_x) != len(self.curve_y)):
            raise ValueError("method 'cbpe' needs its calibration curve (curve_x, curve_y of equal, non-zero length)")

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD) -> AccuracyEstimator:
        """Fit on held-out images with labels. Rows whose label is outside
        ``[0, C)`` (e.g. -1: a label the model does not know) are left out."""
        p = _check_probabilities(probabilities)
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (len(p),):
            raise ValueError(f"labels must have shape ({len(p)},); got {y.shape}")
        keep = (y >= 0) & (y < p.shape[1])
        p, y = p[keep], y[keep]
        if len(y) < 2:
            raise ValueError(f"need at least 2 labelled rows to fit an accuracy estimator; got {len(y)}")
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        correct = (p.argmax(1) == y).astype(np.float64)
        temperature = fit_temperature(p, y)
        threshold = fit_atc_threshold(raw_scores(method, p, temperature), correct) if method.startswith("atc") else None
        curve_x, curve_y = isotonic_curve(max_confidence(p), correct) if method == "cbpe" else ((), ())
        fitted = cls(
            method,
            temperature,
            threshold,
            float(correct.mean()),
            0.0,
            len(y),
            tuple(map(float, curve_x)),
            tuple(map(float, curve_y)),
        )
        return cls(**{**asdict(fitted), "reference_score": float(np.mean(fitted.score(p)))})

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        """Per image, float32 (n,): its contribution to the window's estimate
        (``ac``/``cbpe``: P(correct); ``atc_*``: 1.0 above the threshold, else 0.0;
        ``doc``: the raw top-1 probability). Cheap: one softmax per row."""
        raw = raw_scores(self.method, probabilities, self.temperature, self.curve_x, self.curve_y)
        if self.threshold is not None:
            raw = (raw > self.threshold).astype(np.float64)
        return raw.astype(np.float32)

    def estimate(self, scores: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
        """The window's estimated accuracy from its per-image ``score`` values.

        Returns ``{"method", "accuracy", "low", "high", "n", "reference_accuracy",
        "drop"}``; accuracy, low, high and drop are None when ``scores`` is empty.
        ``drop`` is ``reference_accuracy - accuracy`` (positive = worse)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        out: dict[str, Any] = {
            "method": self.method,
            "accuracy": None,
            "low": None,
            "high": None,
            "n": int(len(s)),
            "reference_accuracy": self.reference_accuracy,
            "drop": None,
        }
        if len(s) == 0:
            return out
        offset = self.reference_accuracy - self.reference_score if self.method == "doc" else 0.0
        accuracy = float(np.clip(np.mean(s) + offset, 0.0, 1.0))
        low, high = wilson_interval(accuracy, len(s), confidence)
        out.update(accuracy=accuracy, low=low, high=high, drop=self.reference_accuracy - accuracy)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self), "curve_x": list(self.curve_x), "curve_y": list(self.curve_y)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AccuracyEstimator:
        """Inverse of ``to_dict``; refuses another schema or unknown keys."""
        doc = dict(doc)
        schema = doc.pop("schema", None)
        if schema != SCHEMA:
            raise ValueError(f"not an accuracy estimator of schema {SCHEMA!r}: schema={schema!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown accuracy estimator keys {unknown}; known: {sorted(known)}")
        threshold = doc.get("threshold")
        return cls(
            **{
                **doc,
                "temperature": float(doc["temperature"]),
                "threshold": None if threshold is None else float(threshold),
                "curve_x": tuple(map(float, doc.get("curve_x", ()))),
                "curve_y": tuple(map(float, doc.get("curve_y", ()))),
            }
        )
