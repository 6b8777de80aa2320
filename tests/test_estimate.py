"""The label-free accuracy estimate on synthetic models whose answers are known.

A synthetic "perfectly calibrated" model: its probabilities p are drawn first,
then each label is drawn from p, so P(top-1 is right) equals the top-1
probability exactly. Error bounds are 4 standard errors of the quantity tested.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from duet.monitor.estimate import (
    METHODS,
    AccuracyEstimator,
    calibrate,
    fit_atc_threshold,
    fit_temperature,
    isotonic_curve,
    wilson_interval,
)

CLASSES = 10


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def calibrated_model(n: int, *, sharpness: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, labels)`` with labels drawn from the probabilities."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(0.0, sharpness, (n, CLASSES)))
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return p.astype(np.float32), labels


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    """The model reports softmax(z * T0) when the truth is softmax(z): the fit finds T0."""
    p, y = calibrated_model(20000, sharpness=2.0, seed=0)
    z = np.log(p.astype(np.float64))
    for t0 in (0.5, 2.0):
        assert fit_temperature(softmax(z * t0), y) == pytest.approx(t0, rel=0.05)
    assert fit_temperature(p, y) == pytest.approx(1.0, rel=0.05)  # already calibrated


def test_probabilities_of_zero_are_clipped_not_fatal() -> None:
    p, y = calibrated_model(500, sharpness=2.0, seed=1)
    p[:, 0] = 0.0  # an underflowed softmax
    p /= p.sum(1, keepdims=True)
    y = np.where(y == 0, 1, y)
    t = fit_temperature(p, y)
    assert math.isfinite(t) and t > 0
    q = calibrate(p, t)
    assert np.all(np.isfinite(q)) and np.allclose(q.sum(1), 1.0)
    assert np.array_equal(q.argmax(1), p.argmax(1))  # temperature never changes the prediction


@pytest.mark.parametrize("method", ["ac", "cbpe", "doc"])
def test_a_calibrated_model_is_estimated_within_sampling_error_under_shift(method: str) -> None:
    """Fitted on a confident reference (~80 % right), applied to a window where the
    model is less sure (~45 % right) but still calibrated: the averaging methods
    find the window's accuracy (DoC because its confidence drop equals the accuracy drop)."""
    ref_p, ref_y = calibrated_model(4000, sharpness=3.0, seed=2)
    est = AccuracyEstimator.fit(ref_p, ref_y, method)
    p, y = calibrated_model(5000, sharpness=1.2, seed=3)
    truth = float(np.mean(p.argmax(1) == y))
    got = est.estimate(est.score(p))
    assert truth < est.reference_accuracy - 0.2  # a real drop
    se = math.sqrt(truth * (1 - truth) / len(y)) + math.sqrt(0.2 / len(ref_y))  # window + reference sampling
    assert abs(got["accuracy"] - truth) < 4 * se, (got, truth)
    assert got["low"] <= got["accuracy"] <= got["high"] and got["n"] == 5000
    assert got["drop"] == pytest.approx(est.reference_accuracy - got["accuracy"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_estimates_new_images_of_the_reference_distribution(method: str) -> None:
    ref_p, ref_y = calibrated_model(3000, sharpness=2.0, seed=4)
    est = AccuracyEstimator.fit(ref_p, ref_y, method)
    assert est.estimate(est.score(ref_p))["accuracy"] == pytest.approx(est.reference_accuracy, abs=1e-3)
    p, y = calibrated_model(3000, sharpness=2.0, seed=5)
    truth = float(np.mean(p.argmax(1) == y))
    se = math.sqrt(truth * (1 - truth) / len(y)) * math.sqrt(2)  # window and reference
    assert abs(est.estimate(est.score(p))["accuracy"] - truth) < 4 * se


def test_atc_threshold_puts_the_reference_accuracy_above_it() -> None:
    rng = np.random.default_rng(6)
    scores = rng.random(200)
    for share in (0.0, 0.13, 0.5, 0.87, 1.0):
        correct = np.arange(200) < round(share * 200)
        t = fit_atc_threshold(scores, correct)
        assert np.mean(scores > t) == pytest.approx(share)
    assert fit_atc_threshold(np.array([0.9, 0.9, 0.2, 0.1]), np.array([1, 0, 0, 0])) == 0.9  # tie: round down
    with pytest.raises(ValueError, match="non-empty"):
        fit_atc_threshold(np.array([]), np.array([]))


def test_atc_scores_are_zero_or_one_and_average_to_the_estimate() -> None:
    p, y = calibrated_model(1000, sharpness=2.0, seed=7)
    for method in ("atc_mc", "atc_ne"):
        est = AccuracyEstimator.fit(p, y, method)
        s = est.score(p)
        assert s.dtype == np.float32 and set(np.unique(s)) <= {0.0, 1.0}
        assert est.estimate(s)["accuracy"] == pytest.approx(float(s.mean()))


def test_isotonic_curve_is_monotone_and_averages_the_labels() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    kx, ky = isotonic_curve(x, y)
    assert np.all(np.diff(kx) >= 0) and np.all(np.diff(ky) >= 0)
    assert np.interp(x, kx, ky).mean() == pytest.approx(y.mean())  # least squares keeps the mean
    assert np.interp(x, kx, ky)[1:4] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("method", METHODS)
def test_estimator_round_trips_through_json(method: str) -> None:
    p, y = calibrated_model(500, sharpness=2.0, seed=8)
    est = AccuracyEstimator.fit(p, y, method)
    back = AccuracyEstimator.from_dict(json.loads(json.dumps(est.to_dict())))
    assert back == est
    assert np.array_equal(back.score(p), est.score(p))


def test_from_dict_refuses_another_schema_or_unknown_keys() -> None:
    p, y = calibrated_model(200, sharpness=2.0, seed=9)
    doc = AccuracyEstimator.fit(p, y).to_dict()
    with pytest.raises(ValueError, match="schema"):
        AccuracyEstimator.from_dict({**doc, "schema": "duet.accuracy_estimator/0"})
    with pytest.raises(ValueError, match="unknown accuracy estimator keys"):
        AccuracyEstimator.from_dict({**doc, "bias": 0.1})


def test_fit_leaves_out_unknown_labels_and_refuses_bad_input() -> None:
    p, y = calibrated_model(300, sharpness=2.0, seed=10)
    known = AccuracyEstimator.fit(p, y)
    with_unknown = AccuracyEstimator.fit(np.concatenate([p, p[:50]]), np.concatenate([y, np.full(50, -1)]))
    assert with_unknown == known
    with pytest.raises(ValueError, match="method"):
        AccuracyEstimator.fit(p, y, "magic")
    with pytest.raises(ValueError, match="shape"):
        AccuracyEstimator.fit(p, y[:-1])
    with pytest.raises(ValueError, match="at least 2 labelled"):
        AccuracyEstimator.fit(p[:3], np.full(3, -1))


def test_an_empty_window_has_no_estimate_and_intervals_narrow_with_n() -> None:
    p, y = calibrated_model(300, sharpness=2.0, seed=11)
    est = AccuracyEstimator.fit(p, y)
    empty = est.estimate(np.array([], np.float32))
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["low"] is None
    small, large = wilson_interval(0.8, 30), wilson_interval(0.8, 3000)
    assert small[0] < large[0] < 0.8 < large[1] < small[1]
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(0.0, 50)[0] == 0.0
