"""The champion/challenger gate: may a retrained model replace the one in service?

Pure functions over both models' predictions on the same held-out images
(numpy + scipy, no torch): :func:`compare_predictions` scores both, runs the
checks and returns a :class:`Comparison` with the decision and its reasons;
:func:`markdown` renders it. ``duet.lifecycle.retrain`` feeds it the predictions.

The rule (:class:`GateSettings` holds every number):

1. **Overall accuracy** on all held-out images (the champion's own plus the
   new data's) at least the champion's minus ``tolerance`` (0).
2. **Drop test on the champion's own held-out images** (labels the champion
   was validated on, so a batch of wrongly labelled new data cannot grade
   itself): both models on the same images, so only the discordant images
   count. With ``losses`` = images the champion gets right and the challenger
   wrong, ``gains`` = the reverse, the challenger is refused when an exact
   one-sided McNemar test (conditional binomial: ``losses ~ Bin(losses +
   gains, 1/2)`` if both were equally good) is significant at
   ``significance`` (5%) *and* the estimated drop ``(losses - gains) / n``
   exceeds ``drop_margin`` (2 points). The null hypothesis is "not worse",
   so an equal or better challenger is refused at most 5% of the time, at
   any size (exact). The margin is a floor of practical relevance: at
   thousands of images a 0.5-point drop is significant but not refused.
   On 120 images, 7 losses and no gains (4 in one class, 3 elsewhere) are
   refused (p = 0.008, 5.8 points).
3. **Per class**, where a check can fire at all: a class's recall dropping by
   more than ``class_margin`` (5 points) with the same exact test significant
   at ``significance`` / (classes checked) (Bonferroni). A class is checked
   when losing all of its images would be significant at the level
   Bonferroni-corrected over all classes (``0.5 ** images <= significance /
   classes``: 8 images at 10 classes, 11 at 100); the others are listed as
   unchecked. Checked on all held-out images and on the champion's own.

**Minimum detectable drop** (printed beside every test): the smallest true
accuracy drop ``D`` that the test refuses with probability ``power`` (80%)
at its level and sample size, computed exactly, not simulated. Model: each of
the ``n`` images is independently a loss with probability ``g + D`` and a
gain with probability ``g``, ``g`` being the observed gain rate
(``gains / n``: the churn the challenger showed here). Then the number of
discordant images is ``M ~ Bin(n, 2g + D)`` and, given ``M = m``, the losses
are ``Bin(m, (g + D) / (2g + D))``; the test refuses when the losses reach
``r(m)``, the larger of the exact McNemar critical value and the count that
puts the estimated drop above the margin, so
``P(refuse) = sum_m P(M = m) P(losses >= r(m) | m)``, increasing in ``D``,
and the drop is found by bisection. With ``g = 0`` (the challenger only
loses) it is a lower bound: the test cannot see smaller drops however the
errors fall. At margin 2%, 5%, 80% power: 120 images -> 5.5 points (8.2 at
a 2% gain rate), 500 -> 2.7 (3.2), 2000 -> 2.3 (2.5). ``docs/monitoring.md``
section 6 has the table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sstats

from duet.errors import ConfigError, DataError

EPS = 1e-12  # "more than the margin" means more, not equal up to rounding


@dataclass(frozen=True)
class GateSettings:
    """When a challenger may replace the champion.

    tolerance: the challenger's overall accuracy on all held-out images may be
        at most this far below the champion's (0 = at least as good).
    drop_margin: on the champion's own held-out images, a drop is refused only
        when it is significant and larger than this (0.02 = 2 points).
    class_margin: the largest allowed drop of one class's recall (0.05 = 5
        points), counted when significant (Bonferroni over the classes checked).
        On a held-out class of 20 images a two-image swing is noise, not a regression.
    significance: level of the exact one-sided McNemar tests (0.05).
    power: the power at which the minimum detectable drop is stated (0.8).
    """

    tolerance: float = 0.0
    drop_margin: float = 0.02
    class_margin: float = 0.05
    significance: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        for name, example in (("tolerance", "0"), ("drop_margin", "0.02"), ("class_margin", "0.05")):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"`{name}` must be in [0, 1), e.g. {example}. Received: {name}={value!r}")
        for name, example in (("significance", "0.05"), ("power", "0.8")):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"`{name}` must be in (0, 1), e.g. {example}. Received: {name}={value!r}")


@dataclass
class DropTest:
    """The paired test of one set of images: did the challenger get significantly worse?"""

    where: str  # "the champion's own held-out images" | "all held-out images" | a class
    images: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    losses: int  # the champion right, the challenger wrong
    gains: int  # the champion wrong, the challenger right
    drop: float  # (losses - gains) / images
    p_value: float  # exact one-sided McNemar
    level: float  # the significance level it was tested at
    margin: float
    refused: bool
    min_detectable_drop: float | None  # None: no drop is detectable at this size and level
    power: float


@dataclass
class Comparison:
    """Both models on the same held-out images, and the gate's decision."""

    split: str
    images: int
    old_images: int
    champion: dict[str, Any]
    challenger: dict[str, Any]
    per_class: list[dict[str, Any]]
    per_class_old: list[dict[str, Any]]
    promote: bool
    reasons: list[str]
    gate: dict[str, float]
    drop_test: dict[str, Any] = field(default_factory=dict)  # DropTest on the champion's own held-out images


# --------------------------------------------------------------------------- statistics


def mcnemar_worse(champion_right: np.ndarray, challenger_right: np.ndarray) -> float:
    """One-sided exact McNemar p-value that the challenger is worse on these
    images: of the images exactly one model gets right, how surprising is it
    that the champion has this many, if both were equally good."""
    b = int(np.sum(champion_right & ~challenger_right))
    c = int(np.sum(~champion_right & challenger_right))
    if b + c == 0:
        return 1.0
    return float(sstats.binomtest(b, b + c, 0.5, alternative="greater").pvalue)


@lru_cache(maxsize=256)
def _mcnemar_critical(n: int, level: float) -> np.ndarray:
    """``k[m]``: the fewest losses among ``m`` discordant images that the exact
    one-sided McNemar test finds significant (``P(Bin(m, 1/2) >= k) <= level``);
    ``m + 1`` where none is."""
    m = np.arange(n + 1)
    k = np.minimum(sstats.binom.isf(level, m, 0.5).astype(int) + 1, m + 1)
    for _ in range(n + 2):  # isf is exact up to floating point; settle the edge cases
        too_low = (k <= m) & (sstats.binom.sf(k - 1, m, 0.5) > level)
        too_high = (k >= 1) & (k - 1 <= m) & (sstats.binom.sf(k - 2, m, 0.5) <= level)
        if not (too_low.any() or too_high.any()):
            return k
        k = k + too_low - too_high
    raise AssertionError("McNemar critical values did not settle")


def refusal_probability(n: int, loss_rate: float, gain_rate: float, *, level: float, margin: float) -> float:
    """Exact probability that the drop test refuses, when each of ``n`` images is
    a loss with probability ``loss_rate`` and a gain with ``gain_rate``."""
    discordance = loss_rate + gain_rate
    if n == 0 or discordance <= 0:
        return 0.0
    m = np.arange(n + 1)
    by_margin = np.floor((m + n * margin) / 2 + EPS).astype(int) + 1  # losses - gains > n * margin
    needed = np.maximum(_mcnemar_critical(n, level), by_margin)
    pm = sstats.binom.pmf(m, n, min(discordance, 1.0))
    return float(np.sum(pm * sstats.binom.sf(needed - 1, m, loss_rate / discordance)))


@lru_cache(maxsize=1024)
def min_detectable_drop(
    n: int, *, gain_rate: float = 0.0, level: float = 0.05, margin: float = 0.0, power: float = 0.8
) -> float | None:
    """The smallest accuracy drop the drop test refuses with probability ``power``
    on ``n`` images (model in the module docstring); None when even losing
    every image the challenger could lose is not detected that often."""
    top = 1.0 - 2 * gain_rate  # losses + gains <= 1
    if n == 0 or top <= 0 or refusal_probability(n, gain_rate + top, gain_rate, level=level, margin=margin) < power:
        return None
    lo, hi = 0.0, top
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if refusal_probability(n, gain_rate + mid, gain_rate, level=level, margin=margin) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def drop_test(
    champion_right: np.ndarray, challenger_right: np.ndarray, *, where: str, level: float, margin: float, power: float
) -> DropTest:
    """Refuse when the challenger is significantly worse (exact one-sided McNemar
    at ``level``) and its estimated drop exceeds ``margin``."""
    champion_right, challenger_right = np.asarray(champion_right, bool), np.asarray(challenger_right, bool)
    n = len(champion_right)
    losses = int(np.sum(champion_right & ~challenger_right))
    gains = int(np.sum(~champion_right & challenger_right))
    drop = (losses - gains) / n if n else 0.0
    p = mcnemar_worse(champion_right, challenger_right)
    return DropTest(
        where=where,
        images=n,
        champion_accuracy=float(champion_right.mean()) if n else None,
        challenger_accuracy=float(challenger_right.mean()) if n else None,
        losses=losses,
        gains=gains,
        drop=drop,
        p_value=p,
        level=level,
        margin=margin,
        refused=bool(n and p <= level and drop > margin + EPS),
        min_detectable_drop=min_detectable_drop(
            n, gain_rate=gains / n if n else 0.0, level=level, margin=margin, power=power
        ),
        power=power,
    )


# --------------------------------------------------------------------------- the decision


def scores(pred: np.ndarray, true: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, and per class support / correct / recall."""
    correct = pred == true
    per_class = {}
    for label in labels:
        mask = true == label
        if mask.any():
            per_class[label] = {
                "support": int(mask.sum()),
                "correct": int(correct[mask].sum()),
                "recall": float(correct[mask].mean()),
            }
    return {"accuracy": float(correct.mean()) if len(true) else None, "images": int(len(true)), "per_class": per_class}


def checkable(images: int, level: float) -> bool:
    """Whether an exact one-sided McNemar test on ``images`` images can ever be
    significant at ``level``: losing all of them, and gaining none, would be."""
    return images > 0 and images * math.log(2) >= -math.log(level) - EPS


def class_rows(
    true: np.ndarray, champion_right: np.ndarray, challenger_right: np.ndarray, labels: list[str], gate: GateSettings
) -> list[dict[str, Any]]:
    """One row per class: recalls, and the class's drop test where it can fire."""
    present = [label for label in labels if np.any(true == label)]
    checked = [
        label for label in present if checkable(int(np.sum(true == label)), gate.significance / max(len(present), 1))
    ]
    level = gate.significance / max(len(checked), 1)  # Bonferroni over the classes checked
    rows = []
    for label in present:
        mask = true == label
        t = drop_test(
            champion_right[mask],
            challenger_right[mask],
            where=f"class '{label}'",
            level=level,
            margin=gate.class_margin,
            power=gate.power,
        )
        rows.append(
            {
                "label": label,
                "support": t.images,
                "champion_recall": t.champion_accuracy,
                "challenger_recall": t.challenger_accuracy,
                "change": None
                if t.challenger_accuracy is None or t.champion_accuracy is None
                else t.challenger_accuracy - t.champion_accuracy,
                "p_value": t.p_value,
                "checked": label in checked,
                "min_detectable_drop": t.min_detectable_drop if label in checked else None,
                "regressed": bool(label in checked and t.refused),
                "champion_correct": int(champion_right[mask].sum()),
                "challenger_correct": int(challenger_right[mask].sum()),
            }
        )
    return rows


def compare_predictions(
    true: np.ndarray,
    champion_pred: np.ndarray,
    challenger_pred: np.ndarray,
    champion_held_out: np.ndarray,
    gate: GateSettings,
    *,
    split: str = "val",
) -> Comparison:
    """The gate over both models' predicted labels on the same images.

    ``champion_held_out`` marks the images that were held out of the champion's
    own training (its val or test split); the drop test runs on them (on all
    images when there are none)."""
    true, champion_pred, challenger_pred = (np.asarray(a, dtype=object) for a in (true, champion_pred, challenger_pred))
    old = np.asarray(champion_held_out, bool)
    if not len(true):
        raise DataError(
            "no held-out image was read by both models, so there is nothing to compare them on; "
            "check the images of the merged data's held-out split"
        )
    labels = sorted(set(true))
    champ_right, chall_right = champion_pred == true, challenger_pred == true
    champ, chall = scores(champion_pred, true, labels), scores(challenger_pred, true, labels)
    for d, pred in ((champ, champion_pred), (chall, challenger_pred)):
        d["accuracy_on_champion_held_out"] = scores(pred[old], true[old], labels)["accuracy"]
    where = "the champion's own held-out images" if old.any() else "all held-out images"
    sel = old if old.any() else np.ones(len(true), bool)
    test = drop_test(
        champ_right[sel],
        chall_right[sel],
        where=where,
        level=gate.significance,
        margin=gate.drop_margin,
        power=gate.power,
    )
    rows = class_rows(true, champ_right, chall_right, labels, gate)
    rows_old = class_rows(true[old], champ_right[old], chall_right[old], labels, gate) if old.any() else []
    overall_ok = chall["accuracy"] >= champ["accuracy"] - gate.tolerance - EPS
    regressions = [(r, "held-out images") for r in rows if r["regressed"]]
    regressions += [(r, "the champion's own held-out images") for r in rows_old if r["regressed"]]
    reasons = [_overall_reason(champ, chall, overall_ok, gate), _drop_reason(test)]
    reasons += [_class_reason(r, where, gate) for r, where in regressions]
    if not regressions:
        reasons.append(_no_class_reason(rows, rows_old, gate))
    return Comparison(
        split,
        len(true),
        int(old.sum()),
        champ,
        chall,
        rows,
        rows_old,
        bool(overall_ok and not test.refused and not regressions),
        reasons,
        asdict(gate),
        asdict(test),
    )


def _points(x: float | None) -> str:
    return "none" if x is None else f"{100 * x:.1f} points"


def _overall_reason(champ: dict[str, Any], chall: dict[str, Any], ok: bool, gate: GateSettings) -> str:
    a, b = champ["accuracy"], chall["accuracy"]
    return (
        f"overall accuracy {b:.1%} vs champion {a:.1%} ({100 * (b - a):+.1f} points) on {champ['images']} "
        f"held-out images: {'at least as good' if ok else 'worse'}"
        + (f" (tolerance {gate.tolerance:.1%})" if gate.tolerance else "")
    )


def _drop_reason(t: DropTest) -> str:
    counts = (
        f"{t.challenger_accuracy:.1%} vs {t.champion_accuracy:.1%}, {t.losses} images lost and {t.gains} "
        f"gained of {t.images}; exact McNemar p = {t.p_value:.2g}"
    )
    seen = (
        f"minimum detectable drop {_points(t.min_detectable_drop)} (caught {t.power:.0%} of the time)"
        if t.min_detectable_drop is not None
        else f"no drop is detectable on {t.images} images at {t.level:.0%}"
    )
    if t.refused:
        return (
            f"significantly worse on {t.where} ({counts}): a drop of {_points(t.drop)}, more than the "
            f"{t.margin:.0%} margin; {seen}"
        )
    return f"not significantly worse by more than {t.margin:.0%} on {t.where} ({counts}); {seen}"


def _class_reason(r: dict[str, Any], where: str, gate: GateSettings) -> str:
    return (
        f"class '{r['label']}' regressed on {where}: recall {r['challenger_recall']:.0%} vs "
        f"{r['champion_recall']:.0%} ({r['challenger_correct']}/{r['support']} vs "
        f"{r['champion_correct']}/{r['support']}; McNemar p = {r['p_value']:.2g}), more than the "
        f"{gate.class_margin:.0%} margin"
    )


def _no_class_reason(rows: list[dict[str, Any]], rows_old: list[dict[str, Any]], gate: GateSettings) -> str:
    text = (
        f"no class recall dropped significantly by more than {gate.class_margin:.0%} "
        f"({sum(r['checked'] for r in rows)} of {len(rows)} classes checked on all held-out images"
    )
    if rows_old:
        text += f", {sum(r['checked'] for r in rows_old)} on the champion's own"
    mdd = [r["min_detectable_drop"] for r in rows_old or rows if r["min_detectable_drop"] is not None]
    if mdd:
        text += (
            f"; there a class's minimum detectable drop is {100 * min(mdd):.0f}"
            + (f"-{100 * max(mdd):.0f}" if round(100 * max(mdd)) != round(100 * min(mdd)) else "")
            + " points"
        )
    return text + ")"


# --------------------------------------------------------------------------- report


def markdown(c: Comparison, *, champion: Path, challenger: Path, decision: str) -> list[str]:
    """The report's lines: both models, the gate (with what it could detect), per class."""
    lines = [
        f"# Champion vs challenger: {decision}",
        "",
        "| | champion | challenger |",
        "|---|---|---|",
        f"| run | `{champion}` | `{challenger}` |",
        f"| accuracy, {c.images} held-out images ({c.split}) | {c.champion['accuracy']:.2%} | "
        f"{c.challenger['accuracy']:.2%} |",
    ]
    if c.old_images:
        lines.append(
            f"| accuracy, the champion's {c.old_images} held-out images | "
            f"{c.champion['accuracy_on_champion_held_out']:.2%} | "
            f"{c.challenger['accuracy_on_champion_held_out']:.2%} |"
        )
    g, t = c.gate, c.drop_test
    lines += [
        "",
        "## Gate",
        "",
        f"Settings: overall tolerance {g['tolerance']:.1%}; drop margin {g['drop_margin']:.0%} on "
        f"{t.get('where', 'the held-out images')} (refused when an exact one-sided McNemar test is significant "
        f"at {g['significance']:.0%} and the drop exceeds it); class margin {g['class_margin']:.0%} "
        "(the same test, Bonferroni over the classes checked).",
        "",
    ]
    if t:
        lines += [
            f"Minimum detectable drop ({g['power']:.0%} power): **{_points(t['min_detectable_drop'])}** "
            f"on {t['images']} images at a gain rate of {t['gains']}/{t['images']}; smaller drops pass "
            "unseen.",
            "",
        ]
    lines += [f"- {r}" for r in c.reasons]
    for title, rows in (
        ("Per class, all held-out images", c.per_class),
        ("Per class, the champion's own held-out images", c.per_class_old),
    ):
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| class | images | champion recall | challenger recall | change | McNemar p | min. detectable drop | regressed |",
            "|---|--:|--:|--:|--:|--:|--:|---|",
        ]
        lines += [
            f"| {r['label']} | {r['support']} | {r['champion_recall']:.1%} | {r['challenger_recall']:.1%} | "
            f"{100 * r['change']:+.1f} | {r['p_value']:.2g} | "
            + (f"{_points(r['min_detectable_drop'])} |" if r["checked"] else "not checked |")
            + f" {'**yes**' if r['regressed'] else 'no'} |"
            for r in rows
        ]
    return lines
