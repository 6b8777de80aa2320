"""Classification metrics over arrays: pure functions, numpy only.

The caller runs the model and passes true labels and softmax probabilities;
``compute_metrics`` turns them into plain, JSON-able numbers (no files, no
plotting, no scikit-learn import: ``duet.evaluation.report`` writes them)::

    metrics = compute_metrics(y_true, probs, labels)

The numbers are scikit-learn's definitions (``tests/test_metrics.py`` checks
each against scikit-learn on random predictions): ``macro`` is the unweighted
mean over the classes that occur in ``y_true`` or in the predictions, so a
class absent from an evaluation split neither helps nor hurts it;
``weighted`` weights each class by its support; a ratio with a zero
denominator is 0; ``log_loss`` clips probabilities to ``[eps, 1 - eps]``
(float64 eps); top-k breaks ties toward the higher class index.
``per_class`` and the confusion matrix always list every class, with zeros
where a class has no support.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MOST_CONFUSED = 5
PROB_SUM_TOLERANCE = 1e-3


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], *, top_k: int = 5) -> dict[str, Any]:
    """Metrics for a classifier's predictions, as a JSON-able dict.

    Args:
        y_true: int class indices, shape ``(N,)``, each in ``range(C)``.
        probs: softmax probabilities, shape ``(N, C)``; rows must sum to 1
            (within 1e-3; logits are refused).
        labels: the ``C`` class names, index ``i`` naming class ``i``.
        top_k: k for top-k accuracy; capped at ``C - 1`` (reported as ``k``):
            with ``k >= C`` every class is in the top k and the value is 100 %
            whatever the model does, so top-k is reported only for
            ``2 <= k < C`` and is ``None`` otherwise (e.g. for 2 classes).

    Returns:
        ``num_images``, ``accuracy``, ``top_k_accuracy`` (``k``, ``value``; or None),
        ``macro`` and ``weighted`` (``precision``, ``recall``, ``f1``),
        ``log_loss``, ``per_class`` (one row per label: ``label``,
        ``precision``, ``recall``, ``f1``, ``support``), ``confusion_matrix``
        (``labels``, ``matrix``, ``rows``: "true", ``columns``: "predicted") and
        ``most_confused`` (up to 5 ``{"true", "predicted", "count"}``, largest
        off-diagonal counts first).

    Raises:
        ValueError: shapes, dtypes or ranges that are not the above; the
            message names the argument and what was received.
    """
    y_true, probs = _validate_inputs(y_true, probs, labels, top_k)
    num_classes = len(labels)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_counts(y_true, y_pred, num_classes)
    k = min(top_k, num_classes - 1)
    return {
        "num_images": int(y_true.shape[0]),
        "accuracy": float(np.mean(y_true == y_pred)),
        "top_k_accuracy": {"k": k, "value": top_k_accuracy(y_true, probs, k)} if k >= 2 else None,
        "macro": _averaged(matrix, "macro"),
        "weighted": _averaged(matrix, "weighted"),
        "log_loss": log_loss(y_true, probs),
        "per_class": _per_class(matrix, labels),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist(), "rows": "true", "columns": "predicted"},
        "most_confused": _most_confused(matrix, labels),
    }


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable.

    Ties: a stable sort read from the top, so of equal probabilities the higher
    class index ranks first (scikit-learn's ``top_k_accuracy_score``)."""
    ranked = np.argsort(probs, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.mean((ranked == y_true[:, None]).any(axis=1)))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class, clipped to ``[eps, 1 - eps]``."""
    eps = np.finfo(np.float64).eps
    true_probs = np.clip(probs[np.arange(y_true.shape[0]), y_true], eps, 1.0 - eps)
    return float(-np.mean(np.log(true_probs)))


def _validate_inputs(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and ranges; return int64 labels and row-normalised float64 probs."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(labels)
    if num_classes < 2:
        raise ValueError(f"labels must name at least 2 classes; received {num_classes}: {labels!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; received top_k={top_k}")
    if y_true.ndim != 1 or y_true.shape[0] == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array; received shape {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices; received dtype {y_true.dtype}")
    if probs.shape != (y_true.shape[0], num_classes):
        raise ValueError(f"probs must have shape (N, C) = ({y_true.shape[0]}, {num_classes}); received {probs.shape}")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(
            f"y_true values must lie in [0, {num_classes - 1}]; received min={y_true.min()}, max={y_true.max()}"
        )
    return y_true.astype(np.int64), _normalised_probs(probs)


def _normalised_probs(probs: np.ndarray) -> np.ndarray:
    """Refuse non-probabilities; remove float32 rounding so each row sums to exactly 1."""
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0:
        raise ValueError("probs must be finite and non-negative (softmax probabilities, not logits)")
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > PROB_SUM_TOLERANCE:
        raise ValueError(
            f"each row of probs must sum to 1 (softmax probabilities); row {worst} sums to {sums[worst]:.6f}"
        )
    return probs / sums[:, None]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator``, 0 where the denominator is 0."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class: precision, recall, F1 (0 where undefined) and support, from the counts."""
    hits = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2.0 * hits, predicted + support)
    return precision, recall, f1, support


def _averaged(matrix: np.ndarray, average: str) -> dict[str, float]:
    """``macro``: mean over classes seen as true or predicted; ``weighted``: by support."""
    precision, recall, f1, support = _class_scores(matrix)
    if average == "macro":
        seen = (support > 0) | (matrix.sum(axis=0) > 0)
        weights = seen.astype(np.float64)
    else:
        weights = support.astype(np.float64)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    return {name: float(np.average(values, weights=weights)) for name, values in scores.items()}


def _per_class(matrix: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    precision, recall, f1, support = _class_scores(matrix)
    return [
        {
            "label": label,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    ]


def _most_confused(matrix: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    rows, cols = np.nonzero(off_diagonal)
    pairs = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-off_diagonal[rc], rc))
    return [
        {"true": labels[r], "predicted": labels[c], "count": int(off_diagonal[r, c])} for r, c in pairs[:MOST_CONFUSED]
    ]


def misclassified_samples(
    names: list[str], labels: np.ndarray, probs: np.ndarray, ok: np.ndarray | None, classes: list[str]
) -> list[dict[str, Any]]:
    """The samples (``ok``: the readable ones; None: all) predicted wrong, most confident first:
    the report's list, each named by ``names[i]`` (a file, or a table's line)."""
    predicted = probs.argmax(1)
    wrong = [
        {
            "path": names[i],
            "true": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": float(probs[i, predicted[i]]),
        }
        for i in np.flatnonzero((predicted != labels) if ok is None else ok & (predicted != labels))
    ]
    return sorted(wrong, key=lambda m: -m["confidence"])
