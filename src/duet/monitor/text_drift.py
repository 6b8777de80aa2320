"""Drift of new texts against a text run's reference (pure functions, numpy + scipy: the server imports it).

Five tests, one p-value each, corrected together by Holm's method as the
tabular verdict corrects its columns (:mod:`duet.monitor.tabular_drift`):

- **oov_rate**: the share of tokens the vocabulary lacks (the model's OOV id),
  over all tokens of the window vs the reference; the p-value is a permutation
  test over *documents* (a document's tokens are not independent draws, so a
  per-token test would alarm on unchanged data); score: the change in the rate.
- **length**: two-sample Kolmogorov-Smirnov on words per document; score KS D.
- **predicted_class**: chi-square of predicted-class counts (rare bins pooled); score PSI.
- **confidence**: KS on the top-1 probability; score KS D.
- **embedding**: kernel MMD² between the model's pooled ``features`` of the
  window and of the reference, both projected on the profile's PCA axes,
  Gaussian kernel, permutation p-value (the image embedding detector's test,
  :func:`duet.monitor.stattests.mmd_permutation_test`); score MMD².

The verdict is ``"drift"`` when any Holm-adjusted p-value is below ``alpha``
(when nothing changed the chance of any alarm is at most ``alpha``), and
``"insufficient"`` under ``min_rows`` documents. ``to_dict`` has the layout of
the tabular verdict (``columns``: one entry per test), so the server's
monitor publishes both on the same gauges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
from scipy import stats as sstats

from duet.monitor.stattests import mmd_permutation_test
from duet.monitor.tabular_drift import ColumnDrift, DriftVerdict, class_drift, confidence_drift, decide, finish, fmt_p
from duet.monitor.text_profile import DocStats, TextDriftSettings, TextProfile

TESTS = ("oov_rate", "length", "predicted_class", "confidence", "embedding")


@dataclass
class TextDriftResult(DriftVerdict):
    """The verdict over the five tests (``to_dict`` is JSON-able; ``columns``: one per test, named as TESTS)."""

    MODALITY: ClassVar[str] = "text"

    def test(self, name: str) -> ColumnDrift | None:
        return next((c for c in self.columns if c.column == name), None)


# --------------------------------------------------------------------------- the tests


def oov_permutation_test(
    ref: DocStats, cur: DocStats, *, permutations: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """``(rate now - rate before, p, rate before, rate now)``: the pooled OOV rate
    (OOV tokens / tokens) of each side, documents exchanged at random between the
    sides ``permutations`` times for the p-value (two-sided, never 0)."""
    oov = np.concatenate([ref.oov, cur.oov]).astype(np.float64)
    tok = np.concatenate([ref.tokens, cur.tokens]).astype(np.float64)
    n, total = len(ref), len(oov)
    before = ref.oov.sum() / max(ref.tokens.sum(), 1)
    now = cur.oov.sum() / max(cur.tokens.sum(), 1)
    observed = abs(now - before)
    null = []
    for start in range(0, permutations, 128):  # bounded memory: (N, 128) at a time
        b = min(128, permutations - start)
        order = rng.random((total, b)).argsort(axis=0)
        members = np.zeros((total, b))
        np.put_along_axis(members, order[:n], 1.0, axis=0)
        o_ref, t_ref = oov @ members, tok @ members
        o_cur, t_cur = oov.sum() - o_ref, tok.sum() - t_ref
        null.append(np.abs(o_cur / np.maximum(t_cur, 1) - o_ref / np.maximum(t_ref, 1)))
    exceed = float((np.concatenate(null) >= observed - 1e-12).sum())
    return float(now - before), (1.0 + exceed) / (permutations + 1.0), float(before), float(now)


def oov_drift(ref: DocStats, cur: DocStats, settings: TextDriftSettings, rng: np.random.Generator) -> ColumnDrift:
    if ref.tokens.sum() == 0 or cur.tokens.sum() == 0:
        return ColumnDrift("oov_rate", "input", "Δ rate", None, None, skipped="no token on one side")
    delta, p, before, now = oov_permutation_test(ref, cur, permutations=settings.permutations, rng=rng)
    finding = f"{now:.1%} of tokens out of vocabulary now vs {before:.1%} (permutation {fmt_p(p)})"
    tests = [{"test": "permutation over documents", "statistic": delta, "p_value": p, "finding": finding}]
    details = {"reference_rate": before, "current_rate": now}
    return finish(ColumnDrift("oov_rate", "input", "Δ rate", delta, p, tests=tests, details=details))


def length_drift(ref: DocStats, cur: DocStats) -> ColumnDrift:
    ks = sstats.ks_2samp(ref.lengths, cur.lengths)
    d, p = float(ks.statistic), float(ks.pvalue)
    med_ref, med_cur = float(np.median(ref.lengths)), float(np.median(cur.lengths))
    finding = f"median {med_cur:g} words per document now vs {med_ref:g} (KS {fmt_p(p)})"
    tests = [{"test": "KS", "statistic": d, "p_value": p, "finding": finding}]
    details = {"reference_median": med_ref, "current_median": med_cur}
    return finish(ColumnDrift("length", "input", "KS D", d, p, tests=tests, details=details))


def embedding_drift(
    profile: TextProfile, features: np.ndarray, settings: TextDriftSettings, rng: np.random.Generator
) -> ColumnDrift:
    emb = profile.embedding
    assert emb is not None
    ref = emb.reference
    if len(ref) > settings.max_reference:
        ref = ref[np.sort(rng.choice(len(ref), settings.max_reference, replace=False))]
    cur = emb.project(features)
    stat, p, null95 = mmd_permutation_test(ref, cur, sigma2=emb.sigma2, permutations=settings.permutations, rng=rng)
    shown = "≈ 0" if stat <= 0 else f"{stat:.4g}"
    finding = f"pooled features moved: MMD² {shown} (95th percentile of the null {null95:.3g}, permutation {fmt_p(p)})"
    tests = [{"test": "MMD (Gaussian kernel, permutations)", "statistic": stat, "p_value": p, "finding": finding}]
    details = {"sigma2": emb.sigma2, "null_95th_percentile": null95, "components": int(ref.shape[1])}
    return finish(ColumnDrift("embedding", "output", "MMD²", stat, p, tests=tests, details=details))


# --------------------------------------------------------------------------- the comparison


def compare_text(
    profile: TextProfile,
    docs: DocStats,
    probabilities: np.ndarray | None = None,
    features: np.ndarray | None = None,
    settings: TextDriftSettings | None = None,
) -> TextDriftResult:
    """The window's documents (``docs``: :func:`~duet.monitor.text_profile.doc_stats` under the
    profile's spec) and the model's outputs on them against ``profile``. Without
    ``probabilities`` (or ``features``, or an embedding reference) those tests are skipped."""
    settings = settings or profile.settings
    n = len(docs)
    base: dict[str, Any] = {
        "n_reference": profile.rows,
        "n_current": n,
        "alpha": settings.alpha,
        "settings": asdict(settings),
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if n < settings.min_rows:
        why = f"only {n} document{'s' if n != 1 else ''} (needs {settings.min_rows})"
        skipped = [ColumnDrift(t, "", "", None, None, sentence=f"Not tested: {why}.", skipped=why) for t in TESTS]
        return TextDriftResult("insufficient", None, f"Not enough data to decide: {why}.", skipped, **base)
    rng = np.random.default_rng(settings.seed)
    results = [oov_drift(profile.docs, docs, settings, rng), length_drift(profile.docs, docs)]
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        classes = probs.argmax(1)
        results.append(class_drift(profile.labels, profile.class_counts, classes, settings.min_expected))
        results.append(confidence_drift(profile.confidences, probs[np.arange(len(probs)), classes]))
    if features is not None and profile.embedding is not None:
        results.append(embedding_drift(profile, features, settings, rng))
    results += [_skipped(t, profile, probabilities, features) for t in TESTS if t not in {c.column for c in results}]
    results = decide(results, settings.alpha)
    drifted = sorted((c for c in results if c.drift), key=lambda c: c.adjusted_p or 0.0)
    return TextDriftResult(
        "drift" if drifted else "no_drift", bool(drifted), _sentence(results, drifted), results, **base
    )


def _skipped(name: str, profile: TextProfile, probabilities: Any, features: Any) -> ColumnDrift:
    if name == "embedding" and profile.embedding is None:
        why = "the profile has no embedding reference"
    elif name == "embedding" and features is None:
        why = "no pooled features (the model has no features output)"
    else:
        why = "no model outputs were given"
    return ColumnDrift(name, "output", "", None, None, sentence=f"Not tested: {why}.", skipped=why)


def _sentence(results: list[ColumnDrift], drifted: list[ColumnDrift]) -> str:
    if not drifted:
        smallest = min((c.adjusted_p for c in results if c.adjusted_p is not None), default=1.0)
        ran = sum(c.adjusted_p is not None for c in results)
        return (
            f"No drift in {ran} tests of the texts and the model's outputs (smallest Holm-adjusted {fmt_p(smallest)})."
        )
    names = ", ".join(c.column for c in drifted)
    return f"Drift in {len(drifted)} of {len(results)} tests: {names}. {drifted[0].sentence}."
