"""Drift of a table of new rows against a tabular run's reference (pure functions).

Each feature column gets the tests that fit its kind, and the model's outputs
two more (``compare_table``):

- **numeric**: two-sample Kolmogorov-Smirnov on the present values (the
  p-value); the Wasserstein distance divided by the reference's standard
  deviation is the score ("the values moved by 0.8 std").
- **categorical** and **boolean**: chi-square of the 2 x B table of counts over
  the reference's top values, OTHER and UNSEEN (values the model's vocabulary
  lacks), bins with an expected count under ``min_expected`` pooled (Cochran's
  rule, so the asymptotic p-value holds); PSI over the unpooled bins is the score.
- **missing rate** of every column: Fisher's exact test of the 2 x 2 table
  (missing / present, reference / window): exact at any count, so a column that
  was never missing and now is gets a correct p-value.
- **confidence** (top-1 probability): KS; **predicted_class**: chi-square as above, PSI score.

A column's p-value is the smallest of its tests times their number
(Bonferroni within the column). The verdict corrects over all columns and
outputs with Holm's method, so when nothing changed the chance that *any*
column raises an alarm is at most ``alpha`` (0.04); each column's
``adjusted_p`` is compared with ``alpha``. Fewer rows than ``min_rows`` is its
own verdict, ``"insufficient"``. numpy + scipy only: the server imports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
from scipy import stats as sstats

from duet.monitor.stattests import psi
from duet.monitor.tabular_profile import (
    CategoricalReference,
    NumericReference,
    TabularDriftSettings,
    TabularProfile,
    build_profile,
    present_values,
)

OUTPUTS = ("confidence", "predicted_class")
STATUSES = ("drift", "no_drift", "insufficient")


@dataclass
class ColumnDrift:
    """One column's (or output's) answer: its tests, its score, and the corrected decision.

    ``p_value`` is the column's own (Bonferroni over its tests), ``adjusted_p``
    Holm's over every column and output; ``drift`` is ``adjusted_p < alpha``.
    ``skipped`` says why nothing was tested (then ``drift`` is False)."""

    column: str
    kind: str
    statistic_name: str
    statistic: float | None
    p_value: float | None
    adjusted_p: float | None = None
    drift: bool = False
    sentence: str = ""
    tests: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    if_drift: str = ""  # the sentence when the verdict says drift (set by the column's test)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("if_drift")
        return d


@dataclass
class DriftVerdict:
    """A verdict over several tests (``columns``; ``to_dict`` is JSON-able): a table's or a text's."""

    MODALITY: ClassVar[str] = ""

    status: str
    drift: bool | None
    sentence: str
    columns: list[ColumnDrift]
    n_reference: int
    n_current: int
    alpha: float
    settings: dict[str, Any]
    computed_at: str

    def drifted(self) -> list[ColumnDrift]:
        """The columns and outputs that drifted, most significant first."""
        return sorted((c for c in self.columns if c.drift), key=lambda c: (c.adjusted_p or 0.0, c.column))

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.MODALITY,
            "status": self.status,
            "drift": self.drift,
            "sentence": self.sentence,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "alpha": self.alpha,
            "correction": "holm",
            "computed_at": self.computed_at,
            "settings": self.settings,
            "drifted": [c.column for c in self.drifted()],
            "columns": [c.to_dict() for c in self.columns],
        }


@dataclass
class TabularDriftResult(DriftVerdict):
    """The verdict over every column and output (``to_dict`` is JSON-able)."""

    MODALITY: ClassVar[str] = "tabular"

    def column(self, name: str) -> ColumnDrift | None:
        return next((c for c in self.columns if c.column == name), None)


# --------------------------------------------------------------------------- the tests


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def rate_test(ref_hits: int, ref_rows: int, cur_hits: int, cur_rows: int) -> float:
    """Fisher's exact p-value that a rate (missing values, unseen values) differs between
    the reference and the window (1.0 when neither side has any)."""
    if ref_hits == 0 and cur_hits == 0:
        return 1.0
    table = [[ref_hits, ref_rows - ref_hits], [cur_hits, cur_rows - cur_hits]]
    return float(sstats.fisher_exact(table).pvalue)


def pool_bins(ref: np.ndarray, cur: np.ndarray, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """The 2 x B counts ``[ref, cur]`` with empty bins dropped and rare ones pooled: bins
    whose expected count (in the smaller sample) is under ``min_expected`` become one bin;
    if that bin is still under it, it joins the smallest other bin (Cochran's rule)."""
    ref, cur = np.asarray(ref, np.float64), np.asarray(cur, np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    if len(ref) < 2 or n_ref == 0 or n_cur == 0:
        return ref, cur
    expected = (ref + cur) * min(n_ref, n_cur) / (n_ref + n_cur)
    small = expected < min_expected
    if small.any():
        pooled_ref, pooled_cur, pooled_expected = ref[small].sum(), cur[small].sum(), expected[small].sum()
        ref, cur = ref[~small], cur[~small]
        if pooled_expected >= min_expected or len(ref) == 0:
            ref, cur = np.append(ref, pooled_ref), np.append(cur, pooled_cur)
        else:
            j = int(np.argmin(ref + cur))
            ref[j] += pooled_ref
            cur[j] += pooled_cur
    return ref, cur


def pooled_chi2(ref: np.ndarray, cur: np.ndarray, min_expected: float) -> tuple[float, float, int]:
    """Pearson's chi-square of the 2 x B counts ``[ref, cur]`` after :func:`pool_bins`:
    ``(chi2, p, degrees of freedom)``; one bin left (or an empty side): nothing to test, p = 1."""
    ref, cur = pool_bins(ref, cur, min_expected)
    if len(ref) < 2 or ref.sum() == 0 or cur.sum() == 0:
        return 0.0, 1.0, 0
    result = sstats.chi2_contingency(np.stack([ref, cur]), correction=False)
    return float(result.statistic), float(result.pvalue), int(result.dof)


def pooled_psi(ref: np.ndarray, cur: np.ndarray, min_expected: float) -> float:
    """PSI over the bins :func:`pool_bins` keeps (PSI of sparse bins grows with their number,
    not with drift: 30 rare values in 300 rows gave 0.36 on unchanged data)."""
    return psi(*pool_bins(ref, cur, min_expected))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (reject where adjusted < alpha: family-wise error at most alpha)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted


def _combine(column: ColumnDrift) -> ColumnDrift:
    """The column's p-value: its smallest test p-value times the number of tests."""
    ps = [t["p_value"] for t in column.tests]
    if not ps:
        return column
    return replace(column, p_value=min(1.0, min(ps) * len(ps)))


def _rate_part(what: str, ref_hits: int, ref_rows: int, cur_hits: int, cur_rows: int) -> dict[str, Any]:
    """A rate test as a column's test entry: ``what`` is "missing" or "unseen"."""
    p = rate_test(ref_hits, ref_rows, cur_hits, cur_rows)
    before, now = ref_hits / max(ref_rows, 1), cur_hits / max(cur_rows, 1)
    where = "of rows" if what == "missing" else "of values"
    return {
        "test": f"{what} rate (Fisher exact)",
        "statistic": now - before,
        "p_value": p,
        "finding": f"{what} in {now:.1%} {where} now vs {before:.1%} ({fmt_p(p)})",
    }


def numeric_drift(ref: NumericReference, column: np.ndarray, settings: TabularDriftSettings) -> ColumnDrift:
    """KS + Wasserstein / std on the present values, and the missing-rate test."""
    cur, missing = present_values("numeric", column)
    cur = np.asarray(cur, dtype=np.float64)
    tests = [_rate_part("missing", ref.missing, ref.rows, missing, len(column))]
    result = ColumnDrift(ref.name, "numeric", "W/std", None, None)
    details: dict[str, Any] = {
        "reference_missing": ref.missing / max(ref.rows, 1),
        "current_missing": missing / max(len(column), 1),
    }
    if len(cur) >= settings.min_present and len(ref.sample) >= settings.min_present:
        ks = sstats.ks_2samp(ref.sample, cur)
        scale = ref.std if ref.std > 0 else 1.0
        w = float(sstats.wasserstein_distance(ref.sample, cur)) / scale
        med_ref, med_cur = float(np.median(ref.sample)), float(np.median(cur))
        details.update(
            {"ks_d": float(ks.statistic), "reference_median": med_ref, "current_median": med_cur, "w_std": w}
        )
        finding = f"moved {w:.2f} std: median {med_cur:.4g} now vs {med_ref:.4g} (KS {fmt_p(float(ks.pvalue))})"
        tests.insert(
            0, {"test": "KS", "statistic": float(ks.statistic), "p_value": float(ks.pvalue), "finding": finding}
        )
        result.statistic = w
    return finish(_combine(replace(result, tests=tests, details=details)))


def categorical_drift(ref: CategoricalReference, column: np.ndarray, settings: TabularDriftSettings) -> ColumnDrift:
    """Chi-square (pooled) + PSI over the reference's bins, and the missing-rate test."""
    values, missing = present_values(ref.kind, column)
    values = list(values)
    tests = [_rate_part("missing", ref.missing, ref.rows, missing, len(column))]
    details: dict[str, Any] = {
        "reference_missing": ref.missing / max(ref.rows, 1),
        "current_missing": missing / max(len(column), 1),
    }
    result = ColumnDrift(ref.name, ref.kind, "PSI", None, None)
    ref_counts = ref.reference_counts()
    if len(values) >= settings.min_present and ref_counts.sum() >= settings.min_present:
        cur_counts = ref.count(values)
        # chi-square over the values the model knows (top ones + the rest); unseen ones get their own test
        chi2, p, dof = pooled_chi2(ref_counts[:-1], cur_counts[:-1], settings.min_expected)
        index = pooled_psi(ref_counts, cur_counts, settings.min_expected)
        moved = _moved_bins(ref.bins(), ref_counts, cur_counts)
        new = _new_values(ref, values)
        details.update({"chi2": chi2, "dof": dof, "psi": index, "shares": moved, "new_values": new})
        top = moved[0]
        finding = (
            f"'{top['value']}' {top['current_share']:.0%} now vs {top['reference_share']:.0%} (chi-square {fmt_p(p)})"
        )
        tests.insert(0, {"test": "chi-square", "statistic": chi2, "p_value": p, "finding": finding})
        if ref.known is not None and ref.kind == "categorical":
            unseen = _rate_part("unseen", ref.unseen, int(ref_counts.sum()), int(cur_counts[-1]), len(values))
            if new:
                unseen["finding"] += ": " + ", ".join(f"'{v['value']}' ({v['count']})" for v in new[:3])
            tests.insert(1, unseen)
        result.statistic = index
    return finish(_combine(replace(result, tests=tests, details=details)))


def _moved_bins(bins: list[str], ref: np.ndarray, cur: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The bins whose share moved most (reference vs window), largest change first."""
    a, b = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    order = np.argsort(-np.abs(b - a), kind="stable")[:top]
    return [{"value": bins[i], "reference_share": float(a[i]), "current_share": float(b[i])} for i in order]


def _new_values(ref: CategoricalReference, values: list[str], top: int = 5) -> list[dict[str, Any]]:
    """Window values outside the column's known values (the model's vocabulary, else the reference's)."""
    if ref.known is None:
        return []
    outside = Counter(v for v in values if v not in ref.known)
    return [{"value": v, "count": n} for v, n in outside.most_common(top)]


def confidence_drift(ref: np.ndarray, confidences: np.ndarray) -> ColumnDrift:
    ks = sstats.ks_2samp(ref, confidences)
    d, p = float(ks.statistic), float(ks.pvalue)
    med_ref, med_cur = float(np.median(ref)), float(np.median(confidences))
    way = "dropped" if med_cur < med_ref else "rose"
    finding = f"top-1 confidence {way}: median {med_cur:.2f} now vs {med_ref:.2f} (KS {fmt_p(p)})"
    tests = [{"test": "KS", "statistic": d, "p_value": p, "finding": finding}]
    details = {"reference_median": med_ref, "current_median": med_cur}
    return finish(ColumnDrift("confidence", "output", "KS D", d, p, tests=tests, details=details))


def class_drift(labels: Sequence[str], ref_counts: np.ndarray, classes: np.ndarray, min_expected: float) -> ColumnDrift:
    cur = np.bincount(classes, minlength=len(labels))[: len(labels)].astype(np.float64)
    chi2, p, dof = pooled_chi2(ref_counts, cur, min_expected)
    index = pooled_psi(ref_counts, cur, min_expected)
    moved = _moved_bins(list(labels), ref_counts, cur)
    top = moved[0]
    finding = (
        f"'{top['value']}' predicted for {top['current_share']:.0%} now vs {top['reference_share']:.0%} "
        f"(chi-square {fmt_p(p)})"
    )
    tests = [{"test": "chi-square", "statistic": chi2, "p_value": p, "finding": finding}]
    details = {"chi2": chi2, "dof": dof, "shares": moved}
    return finish(ColumnDrift("predicted_class", "output", "PSI", index, p, tests=tests, details=details))


def finish(c: ColumnDrift) -> ColumnDrift:
    """The sentence for either decision: the finding of the column's most significant test."""
    if not c.tests:
        return c
    worst = min(c.tests, key=lambda t: t["p_value"])
    return replace(
        c, if_drift=f"{c.column}: {worst['finding']}", sentence=f"{c.column}: as in the reference ({worst['finding']})"
    )


# --------------------------------------------------------------------------- the comparison


def compare_table(
    profile: TabularProfile,
    table: Mapping[str, np.ndarray],
    probabilities: np.ndarray | None = None,
    settings: TabularDriftSettings | None = None,
) -> TabularDriftResult:
    """Every feature column of ``table`` (and the model's ``probabilities`` on it) against ``profile``.

    A column the table lacks counts as missing in every row (the missing-rate test reports it).
    """
    settings = settings or profile.settings
    n = len(probabilities) if probabilities is not None else _num_rows(table)
    base: dict[str, Any] = {
        "n_reference": profile.rows,
        "n_current": n,
        "alpha": settings.alpha,
        "settings": asdict(settings),
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if n < settings.min_rows:
        why = f"only {n} row{'s' if n != 1 else ''} (needs {settings.min_rows})"
        columns = [
            ColumnDrift(c.name, c.kind, "", None, None, sentence=f"Not tested: {why}.", skipped=why)
            for c in profile.columns
        ]
        sentence = f"Not enough data to decide: {why}."
        return TabularDriftResult("insufficient", None, sentence, columns, **base)
    results = [_column_drift(ref, table.get(ref.name), n, settings) for ref in profile.columns]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        classes = probabilities.argmax(1)
        results.append(confidence_drift(profile.confidences, probabilities[np.arange(n), classes]))
        results.append(class_drift(profile.labels, profile.class_counts, classes, settings.min_expected))
    results = decide(results, settings.alpha)
    drifted = sorted((c for c in results if c.drift), key=lambda c: c.adjusted_p or 0.0)
    status = "drift" if drifted else "no_drift"
    return TabularDriftResult(status, bool(drifted), _sentence(results, drifted), results, **base)


def _column_drift(ref: Any, column: np.ndarray | None, n: int, settings: TabularDriftSettings) -> ColumnDrift:
    if column is None:  # the whole column is missing from the window
        column = (
            np.full(n, np.nan)
            if isinstance(ref, NumericReference) or ref.kind == "boolean"
            else np.full(n, None, dtype=object)
        )
    if isinstance(ref, NumericReference):
        return numeric_drift(ref, column, settings)
    return categorical_drift(ref, column, settings)


def decide(results: list[ColumnDrift], alpha: float) -> list[ColumnDrift]:
    """Holm over the columns that were tested; each column decided at ``alpha``."""
    tested = [i for i, c in enumerate(results) if c.p_value is not None]
    adjusted = holm([results[i].p_value or 0.0 for i in tested]) if tested else np.array([])
    out = list(results)
    for i, a in zip(tested, adjusted):
        c = results[i]
        drift = bool(a < alpha)
        out[i] = replace(c, adjusted_p=float(a), drift=drift, sentence=c.if_drift if drift else c.sentence)
    return out


def _sentence(results: list[ColumnDrift], drifted: list[ColumnDrift]) -> str:
    features = [c for c in results if c.kind != "output"]
    if not drifted:
        smallest = min((c.adjusted_p for c in results if c.adjusted_p is not None), default=1.0)
        outputs = " or the model's outputs" if len(features) < len(results) else ""
        return f"No drift in {len(features)} columns{outputs} (smallest Holm-adjusted {fmt_p(smallest)})."
    names = ", ".join(c.column for c in drifted[:5]) + (f" and {len(drifted) - 5} more" if len(drifted) > 5 else "")
    return f"Drift in {len(drifted)} of {len(results)} columns and outputs: {names}. {drifted[0].sentence}."


def _num_rows(table: Mapping[str, np.ndarray]) -> int:
    lengths = {len(v) for v in table.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


# --------------------------------------------------------------------------- calibration


def false_alarm_rate(
    table: Mapping[str, np.ndarray],
    columns: Sequence[tuple[str, str]],
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    reference_rows: int,
    window: int,
    trials: int = 50,
    known: Mapping[str, Sequence[str]] | None = None,
    settings: TabularDriftSettings | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibration by resampling: ``trials`` times, split rows of one distribution at
    random into a disjoint reference (``reference_rows``) and window (``window``),
    build the profile and compare. Every alarm is false by construction."""
    n = len(probabilities)
    if reference_rows + window > n:
        raise ValueError(f"reference_rows + window = {reference_rows + window} exceeds the {n} rows")
    rng = np.random.default_rng(seed)
    alarms, per_column = 0, Counter[str]()
    for _ in range(trials):
        order = rng.permutation(n)
        ref, cur = order[:reference_rows], order[reference_rows : reference_rows + window]
        profile = build_profile(
            {k: np.asarray(v)[ref] for k, v in table.items()},
            columns,
            probabilities[ref],
            labels,
            known=known,
            settings=settings,
        )
        result = compare_table(profile, {k: np.asarray(v)[cur] for k, v in table.items()}, probabilities[cur])
        alarms += bool(result.drift)
        per_column.update(c.column for c in result.drifted())
    return {
        "trials": trials,
        "alarms": alarms,
        "rate": alarms / trials,
        "per_column": dict(per_column),
        "reference_rows": reference_rows,
        "window": window,
    }
