"""Membership inference as pure functions over arrays: the scores two attacks
compute, and what their ROC says about privacy.

Every score is "higher = more likely a member (a training image)".

- :func:`loss_scores`: the loss-threshold attack (Yeom et al. 2018), the score
  is minus the cross-entropy of the true label.
- :func:`offline_lira_scores`: the offline variant of the likelihood-ratio
  attack (Carlini et al. 2022, "Membership inference attacks from first
  principles"): shadow models that never trained on an example give the
  distribution of its logit-scaled confidence ``log(p / (1 - p))`` when it is
  *not* a member (a Gaussian per example); the score is how far above that
  distribution the target model's confidence lies (a one-sided test).
- :func:`attack_metrics`: ROC AUC, TPR at low FPR, and the empirical ε lower
  bound the ROC implies (Jagielski et al. 2020, Nasr et al. 2021): a
  (ε, δ)-DP model forces every threshold to satisfy TPR <= e^ε FPR + δ (and
  TNR <= e^ε FNR + δ), so any threshold whose Clopper-Pearson bounds break
  that for some ε proves the model is not (ε, δ)-DP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score, roc_curve

CONFIDENCE = 0.95  # of the Clopper-Pearson intervals behind the ε lower bound
MIN_OUT_FOR_OWN_STD = 8  # fewer OUT shadows than this: the pooled std (Carlini et al.'s "fixed variance")
MAX_CURVE_POINTS = 1000  # ROC points kept in the JSON report
_TINY = np.finfo(np.float64).tiny


def _true_and_rest(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p_y and sum_{j != y} p_j per row, the latter summed from the small
    probabilities themselves (``1 - p_y`` rounds to 0 for a confident model)."""
    p = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(p))
    true = p[rows, labels]
    others = p.copy()
    others[rows, labels] = 0.0
    rest = others.sum(1)
    return np.maximum(true, _TINY), np.maximum(rest, _TINY)


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p_y per row, computed as log1p(rest / p_y) so that it stays exact near 0."""
    true, rest = _true_and_rest(probs, labels)
    return np.log1p(rest / true)


def loss_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The loss-threshold attack's score: minus the true label's cross-entropy."""
    return -cross_entropy(probs, labels)


def logit_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence log(p_y / (1 - p_y)), roughly Gaussian over models."""
    true, rest = _true_and_rest(probs, labels)
    return np.log(true) - np.log(rest)


def offline_lira_scores(target: np.ndarray, shadows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Offline LiRA: ``target`` (N,) confidences of the audited model, ``shadows`` (K, N)
    confidences of K shadow models, ``out`` (K, N) True where shadow k never trained
    on example n. Returns the one-sided Gaussian test statistic
    ``-log P[Z >= target]`` with ``Z ~ N(mean_out, std_out)`` per example: high
    when the target is far more confident than models that did not see it.

    The std is per example when every example has at least ``MIN_OUT_FOR_OWN_STD``
    OUT shadows, else the pooled std of all examples for all (few samples make a
    per-example std noisy; Carlini et al. fix the variance for small K)."""
    target = np.asarray(target, dtype=np.float64)
    shadows = np.asarray(shadows, dtype=np.float64)
    out = np.asarray(out, dtype=bool)
    counts = out.sum(0)
    if shadows.shape != out.shape or shadows.shape[1] != target.shape[0]:
        raise ValueError(f"shapes differ: target {target.shape}, shadows {shadows.shape}, out {out.shape}")
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} examples have no OUT shadow model")
    mean = np.where(out, shadows, 0.0).sum(0) / counts
    dev = np.where(out, shadows - mean, 0.0)
    var_own = (dev**2).sum(0) / np.maximum(counts - 1, 1)
    pooled = float((dev**2).sum() / max(int(counts.sum()) - len(counts), 1))
    var = var_own if counts.min() >= MIN_OUT_FOR_OWN_STD else np.full_like(var_own, pooled)
    std = np.sqrt(np.maximum(var, 1e-12))
    return -norm.logsf((target - mean) / std)


def _clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided (1 - alpha) Clopper-Pearson interval of k successes out of n."""
    k = np.asarray(k, dtype=np.float64)
    lo = np.where(k > 0, beta.ppf(alpha / 2, np.maximum(k, 1), n - k + 1), 0.0)
    hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)), 1.0)
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def epsilon_lower_bound(members: np.ndarray, non_members: np.ndarray, delta: float) -> dict[str, Any]:
    """The largest ε that some threshold of the scores proves the model exceeds.

    For each threshold t (guess "member" when score >= t): TPR's lower and FPR's
    upper Clopper-Pearson bound give ε >= log((TPR_lo - δ) / FPR_hi), and the
    rejections give ε >= log((TNR_lo - δ) / FNR_hi). Returns the best of both
    over every threshold (0 when none proves anything) with the threshold's counts."""
    members = np.asarray(members, dtype=np.float64)
    non_members = np.asarray(non_members, dtype=np.float64)
    n_in, n_out = len(members), len(non_members)
    thresholds = np.unique(np.concatenate([members, non_members, [np.inf]]))
    tp = n_in - np.searchsorted(np.sort(members), thresholds, side="left")
    fp = n_out - np.searchsorted(np.sort(non_members), thresholds, side="left")
    alpha = 1 - CONFIDENCE
    tpr_lo, _ = _clopper_pearson(tp, n_in, alpha)
    _, fpr_hi = _clopper_pearson(fp, n_out, alpha)
    tnr_lo, _ = _clopper_pearson(n_out - fp, n_out, alpha)
    _, fnr_hi = _clopper_pearson(n_in - tp, n_in, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_pos = np.where(tpr_lo > delta, np.log((tpr_lo - delta) / fpr_hi), -np.inf)
        eps_neg = np.where(tnr_lo > delta, np.log((tnr_lo - delta) / fnr_hi), -np.inf)
    i, j = int(np.argmax(eps_pos)), int(np.argmax(eps_neg))
    use_neg = eps_neg[j] > eps_pos[i]
    k = j if use_neg else i
    value = float(max(eps_pos[i], eps_neg[j], 0.0))
    return {
        "epsilon_lb": value,
        "delta": delta,
        "confidence": CONFIDENCE,
        "side": "non-members (TNR vs FNR)" if use_neg else "members (TPR vs FPR)",
        "threshold": float(thresholds[k]),
        "true_positives": int(tp[k]),
        "false_positives": int(fp[k]),
    }


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``target``."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _curve(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, list[float]]:
    if len(fpr) > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, MAX_CURVE_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]}


def attack_metrics(members: np.ndarray, non_members: np.ndarray, delta: float) -> dict[str, Any]:
    """ROC AUC, TPR at 1 % FPR (and 0.1 % with >= 1000 non-members), the ε lower
    bound and the ROC curve of one attack's scores."""
    members = np.asarray(members, dtype=np.float64)
    non_members = np.asarray(non_members, dtype=np.float64)
    if not len(members) or not len(non_members):
        raise ValueError("an attack needs at least one member and one non-member")
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    s = np.concatenate([members, non_members])
    fpr, tpr, _ = roc_curve(y, s)
    at = {"0.01": tpr_at_fpr(fpr, tpr, 0.01)}
    if len(non_members) >= 1000:
        at["0.001"] = tpr_at_fpr(fpr, tpr, 0.001)
    return {
        "auc": float(roc_auc_score(y, s)),
        "tpr_at_fpr": at,
        "min_fpr": 1.0 / len(non_members),  # the smallest FPR these non-members can measure
        "members": len(members),
        "non_members": len(non_members),
        **epsilon_lower_bound(members, non_members, delta),
        "roc": _curve(fpr, tpr),
    }
