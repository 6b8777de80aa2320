"""Specifications for duet.evaluation.metrics: numpy-only metrics that give scikit-learn's numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from duet.evaluation.metrics import compute_metrics


def random_predictions(seed: int, num: int, num_classes: int, *, skip_class: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded labels and float32 softmax rows; with ``skip_class`` class 1 is never true."""
    rng = np.random.default_rng(seed)
    choices = [c for c in range(num_classes) if not (skip_class and c == 1)]
    y_true = rng.choice(choices, size=num)
    logits = rng.normal(size=(num, num_classes)) * 3.0
    logits[np.arange(num), y_true] += rng.normal(1.0, 1.0, size=num)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs[0, :] = 1.0  # one row of ties: top-k's tie order matters
    return y_true.astype(np.int64), (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("seed", "num_classes", "skip_class"), [(0, 3, False), (1, 7, True), (2, 12, False)])
def test_metrics_equal_scikit_learn_on_random_predictions(seed: int, num_classes: int, skip_class: bool) -> None:
    y_true, probs = random_predictions(seed, 200, num_classes, skip_class=skip_class)
    labels = [f"c{i}" for i in range(num_classes)]
    metrics = compute_metrics(y_true, probs, labels, top_k=5)

    exact = probs.astype(np.float64) / probs.astype(np.float64).sum(axis=1, keepdims=True)
    y_pred = exact.argmax(axis=1)
    ids = list(range(num_classes))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert metrics["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=ids).tolist()
    assert metrics["log_loss"] == pytest.approx(log_loss(y_true, exact, labels=ids), rel=1e-12)
    k = min(5, num_classes - 1)
    assert metrics["top_k_accuracy"] == {
        "k": k,
        "value": pytest.approx(top_k_accuracy_score(y_true, exact, k=k, labels=ids)),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert metrics[average] == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    assert [row["support"] for row in metrics["per_class"]] == s.tolist()
    for name, values in (("precision", p), ("recall", r), ("f1", f)):
        assert [row[name] for row in metrics["per_class"]] == pytest.approx(values.tolist(), abs=1e-12)


def test_top_k_counts_a_tie_as_scikit_learn_does() -> None:
    # Four equal probabilities: a stable sort read from the top puts classes 3 and 2 in the top 2
    # (lowest index first would count neither row).
    y_true = np.array([3, 2, 1], dtype=np.int64)
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25], [0.1, 0.7, 0.1, 0.1]])
    metrics = compute_metrics(y_true, probs, ["a", "b", "c", "d"], top_k=2)
    assert metrics["top_k_accuracy"] == {"k": 2, "value": 1.0}


def test_importing_metrics_imports_neither_scikit_learn_nor_matplotlib() -> None:
    code = (
        "import sys, duet.evaluation.metrics; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
