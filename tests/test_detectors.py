"""The drift detector registry on seeded synthetic observations (no model, no files):
what each detector compares, when it is skipped and why, and how the verdict's
threshold follows from the detectors that ran."""

from __future__ import annotations

import numpy as np
import pytest

from duet.monitor.drift import DETECTORS, REGISTRY, DriftResult, DriftSettings, Observations, compare_observations
from duet.monitor.imagestats import STAT_NAMES

LABELS = ["a", "b", "c", "d"]


def _observations(n: int, *, seed: int, shift: float = 0.0, brightness: float = 0.0) -> Observations:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(LABELS)), n).astype(np.float32)
    stats = rng.normal(0.5, 0.1, (n, len(STAT_NAMES))).astype(np.float32)
    stats[:, STAT_NAMES.index("brightness")] += brightness
    return Observations.from_probabilities(
        probabilities,
        embeddings=rng.normal(shift, 1.0, (n, 8)).astype(np.float32),
        image_stats=stats,
        outlier_scores=rng.gamma(2.0, 1.0, n).astype(np.float32),
    )


def _compare(current: Observations, settings: DriftSettings | None = None) -> DriftResult:
    return compare_observations(
        _observations(150, seed=0), current, labels=LABELS, sigma2=8.0, stat_names=STAT_NAMES, settings=settings
    )


def test_the_registry_runs_every_detector_in_the_documented_order() -> None:
    assert tuple(REGISTRY) == DETECTORS
    result = _compare(_observations(100, seed=1))
    assert [d.detector for d in result.detectors] == list(DETECTORS)
    assert {d.detector: d.statistic_name for d in result.detectors} == {
        "embedding": "MMD²",
        "predicted_class": "PSI",
        "confidence": "KS D",
        "image_stats": "max KS D",
        "outlier_rate": "outlier share",
    }


def test_a_detector_without_its_signal_is_skipped_with_why_and_leaves_the_threshold_to_the_others() -> None:
    full = _observations(100, seed=1)
    current = Observations(classes=full.classes, confidences=full.confidences)
    result = _compare(current)
    skipped = {d.detector: d.skipped for d in result.detectors if d.skipped}
    assert skipped == {
        "embedding": "no embeddings were recorded",
        "image_stats": "no image statistics were recorded",
        "outlier_rate": "no outlier scores (the profile predates them, or the model gave no embeddings)",
    }
    assert all(d.sentence == f"Not tested: {d.skipped}." and d.p_value is None for d in result.detectors if d.skipped)
    ran = result.ran()
    assert [d.detector for d in ran] == ["predicted_class", "confidence"]
    assert all(d.threshold == pytest.approx(0.04 / 2) for d in ran)  # Bonferroni over the 2 that ran


def test_too_few_current_images_is_insufficient_not_no_drift() -> None:
    result = _compare(_observations(10, seed=1), DriftSettings(min_images=30))
    assert result.status == "insufficient" and result.drift is None
    assert all(d.skipped == "only 10 current images (needs 30)" for d in result.detectors)


def test_a_shifted_sample_is_flagged_and_the_same_seed_gives_the_same_numbers() -> None:
    clean = _compare(_observations(100, seed=1))
    assert clean.status == "no_drift" and clean.drift is False
    shifted = _observations(100, seed=1, shift=1.0)
    first, again = _compare(shifted), _compare(shifted)
    assert first.status == "drift" and first.detector("embedding").drift  # type: ignore[union-attr]
    assert first.sentence.startswith("Drift detected by") and "embedding" in first.sentence
    assert [d.p_value for d in first.detectors] == [d.p_value for d in again.detectors]
    assert all(d.threshold == pytest.approx(0.04 / len(DETECTORS)) for d in first.detectors)


def test_image_stats_names_the_statistic_that_changed() -> None:
    result = _compare(_observations(100, seed=1, brightness=0.3))
    image_stats = result.detector("image_stats")
    assert image_stats is not None and image_stats.drift
    assert image_stats.details["changed"] == ["brightness"]
    assert image_stats.sentence.startswith("Image statistics changed: brightness (median")


def test_the_mmd_reference_subsample_is_what_the_embedding_detector_reports() -> None:
    result = _compare(_observations(100, seed=1), DriftSettings(max_reference=60))
    counts = {d.detector: d.n_reference for d in result.detectors}
    assert counts["embedding"] == 60 and counts["confidence"] == 150
    assert result.detector("embedding").details["reference_rows_used"] == 60  # type: ignore[union-attr]
