"""Classification metrics and the evaluation report.

Pure functions over arrays: the caller runs the model and passes true labels
and softmax probabilities; this module turns them into plain, JSON-able
metrics (``compute_metrics``) and writes them as ``report.json``,
``report.md`` and ``confusion_matrix.png`` (``write_report``)::

    metrics = compute_metrics(y_true, probs, labels)
    paths = write_report(metrics, run_dir / "eval", title="Evaluation: my-run",
                         context={"run": "my-run", "split": "val"})
    print(format_summary(metrics))

Averages: ``macro`` is the unweighted mean over the classes that occur in
``y_true`` or in the predictions (scikit-learn's default), so a class absent
from an evaluation split neither helps nor hurts it; ``weighted`` weights each
class by its support. ``per_class`` and the confusion matrix always list every
class, with zeros where a class has no support.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from duet.system.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

MOST_CONFUSED = 5
MD_MATRIX_MAX_CLASSES = 30
PNG_ANNOTATE_MAX_CLASSES = 20
PNG_TICKS_MAX_CLASSES = 60
MD_MISCLASSIFIED_MAX = 20
PROB_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- metrics


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
    """
    y_true, probs = _validate_inputs(y_true, probs, labels, top_k)
    num_classes = len(labels)
    class_ids = list(range(num_classes))
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, labels=class_ids)
    k = min(top_k, num_classes - 1)
    return {
        "num_images": int(y_true.shape[0]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top_k_accuracy": {"k": k, "value": _top_k_accuracy(y_true, probs, k)} if k >= 2 else None,
        "macro": _averaged(y_true, y_pred, "macro"),
        "weighted": _averaged(y_true, y_pred, "weighted"),
        "log_loss": float(log_loss(y_true, probs, labels=class_ids)),
        "per_class": _per_class(y_true, y_pred, labels),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist(), "rows": "true", "columns": "predicted"},
        "most_confused": _most_confused(matrix, labels),
    }


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


def _top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable (2 <= k < C)."""
    return float(top_k_accuracy_score(y_true, probs, k=k, labels=list(range(probs.shape[1]))))


def _averaged(y_true: np.ndarray, y_pred: np.ndarray, average: str) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), average=None, zero_division=0
    )
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


def format_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy, top-k, macro F1, worst class by recall."""
    top_k = metrics["top_k_accuracy"]
    also = f" (top-{top_k['k']} {top_k['value']:.2%})" if top_k else ""
    lines = [
        f"accuracy   {metrics['accuracy']:.2%} on {metrics['num_images']} images{also}",
        f"macro F1   {metrics['macro']['f1']:.3f}   log loss {metrics['log_loss']:.3f}",
    ]
    worst = _worst_class(metrics["per_class"])
    if worst is not None:
        lines.append(f"worst      {worst['label']} (recall {worst['recall']:.2%}, support {worst['support']})")
    return "\n".join(lines)


def _worst_class(per_class: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The supported class with the lowest recall (ties: the larger support)."""
    supported = [row for row in per_class if row["support"] > 0]
    if not supported:
        return None
    return min(supported, key=lambda row: (row["recall"], -row["support"]))


# --------------------------------------------------------------------------- report files


def write_report(
    metrics: dict[str, Any],
    out_dir: Path,
    *,
    title: str,
    context: dict[str, Any] | None = None,
    misclassified: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``confusion_matrix.png`` atomically.

    Args:
        metrics: the dict from ``compute_metrics``.
        out_dir: folder to write into (created if missing).
        title: the report's heading.
        context: what was evaluated (e.g. run, model, data, split, date);
            shown as a table, in insertion order; ``split`` is also named in
            the summary heading and the confusion matrix's title.
        misclassified: rows with ``path``, ``true``, ``predicted`` and
            ``confidence``; all go to JSON, the first 20 to Markdown.

    Returns:
        ``{"json": path, "md": path, "png": path}``.
    """
    out_dir = Path(out_dir)
    context = dict(context or {})
    misclassified = list(misclassified or [])
    document = {"title": title, "context": context, "metrics": metrics, "misclassified": misclassified}
    return {
        "json": write_json_atomic(out_dir / "report.json", document),
        "md": write_text_atomic(
            out_dir / "report.md",
            render_markdown(metrics, title=title, context=context, misclassified=misclassified),
        ),
        "png": write_bytes_atomic(
            out_dir / "confusion_matrix.png", render_confusion_png(metrics, context.get("split"))
        ),
    }


def render_markdown(
    metrics: dict[str, Any],
    *,
    title: str,
    context: dict[str, Any],
    misclassified: list[dict[str, Any]],
) -> str:
    """The human-readable report as one Markdown string."""
    sections = [
        f"# {title}\n",
        _md_context(context),
        _md_headline(metrics, context.get("split")),
        _md_per_class(metrics["per_class"]),
        _md_confusion(metrics["confusion_matrix"]),
        _md_most_confused(metrics["most_confused"]),
        _md_misclassified(misclassified),
    ]
    return "\n".join(section for section in sections if section)


def _cell(value: Any) -> str:
    """A value made safe for a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _md_context(context: dict[str, Any]) -> str:
    if not context:
        return ""
    return _table(["Context", "Value"], [[key, value] for key, value in context.items()])


def _md_headline(metrics: dict[str, Any], split: str | None = None) -> str:
    top_k = metrics["top_k_accuracy"]
    rows = [
        ["Images", metrics["num_images"]],
        ["Accuracy", f"{metrics['accuracy']:.2%}"],
        *([[f"Top-{top_k['k']} accuracy", f"{top_k['value']:.2%}"]] if top_k else []),
        ["Macro F1", f"{metrics['macro']['f1']:.4f}"],
        ["Weighted F1", f"{metrics['weighted']['f1']:.4f}"],
        ["Log loss", f"{metrics['log_loss']:.4f}"],
    ]
    heading = f"## Summary ({split} split)" if split else "## Summary"
    return heading + "\n\n" + _table(["Metric", "Value"], rows, ["---", "--:"])


def _md_per_class(per_class: list[dict[str, Any]]) -> str:
    rows = [
        [r["label"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]] for r in per_class
    ]
    header = ["Class", "Precision", "Recall", "F1", "Support"]
    return "## Per class\n\n" + _table(header, rows, ["---", "--:", "--:", "--:", "--:"])


def _md_confusion(confusion: dict[str, Any]) -> str:
    labels = confusion["labels"]
    heading = "## Confusion matrix\n\nRows: the true class. Columns: the predicted class.\n\n"
    if len(labels) > MD_MATRIX_MAX_CLASSES:
        return heading + (
            f"{len(labels)} classes are too many for a readable table: see `confusion_matrix.png` and `report.json`.\n"
        )
    rows = [[label, *counts] for label, counts in zip(labels, confusion["matrix"])]
    header = ["true ↓ / predicted →", *labels]
    return heading + _table(header, rows, ["---"] + ["--:"] * len(labels))


def _md_most_confused(pairs: list[dict[str, Any]]) -> str:
    if not pairs:
        return "## Most confused\n\nNo misclassifications.\n"
    rows = [[p["true"], p["predicted"], p["count"]] for p in pairs]
    return "## Most confused\n\n" + _table(["True", "Predicted as", "Count"], rows, ["---", "---", "--:"])


def _md_misclassified(misclassified: list[dict[str, Any]]) -> str:
    if not misclassified:
        return ""
    shown = misclassified[:MD_MISCLASSIFIED_MAX]
    rows = [[f"`{m['path']}`", m["true"], m["predicted"], f"{m['confidence']:.2%}"] for m in shown]
    note = ""
    if len(misclassified) > len(shown):
        note = f"\nShowing {len(shown)} of {len(misclassified)}; all are in `report.json`.\n"
    header = ["File", "True", "Predicted", "Confidence"]
    return "## Misclassified\n\n" + _table(header, rows, ["---", "---", "---", "--:"]) + note


def render_confusion_png(metrics: dict[str, Any], split: str | None = None) -> bytes:
    """The confusion matrix as PNG bytes: colour = share of the true class, counts
    when small; ``split`` (e.g. "test") is named in the title."""
    buffer = io.BytesIO()
    confusion_figure(metrics, split).savefig(buffer, format="png")
    return buffer.getvalue()


def confusion_figure(metrics: dict[str, Any], split: str | None = None) -> Figure:
    """The figure behind ``render_confusion_png``: rows the true class (y axis,
    labelled), columns the predicted class (x axis, labelled)."""
    labels = metrics["confusion_matrix"]["labels"]
    counts = np.asarray(metrics["confusion_matrix"]["matrix"], dtype=np.int64)
    num_classes = len(labels)
    side = min(max(5.0, 0.45 * num_classes + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(_row_normalised(counts), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    _set_ticks(ax, labels)
    if num_classes <= PNG_ANNOTATE_MAX_CLASSES:
        _annotate_counts(ax, counts)
    text_size = max(10.0, 0.6 * side)  # stays legible as the figure grows with C
    ax.set_xlabel("predicted class", fontsize=text_size, fontweight="bold")
    ax.set_ylabel("true class", fontsize=text_size, fontweight="bold")
    ax.set_title(
        f"Confusion matrix{f', {split} split' if split else ''} "
        f"({int(counts.sum())} images, accuracy {metrics['accuracy']:.2%})",
        fontsize=text_size,
    )
    return fig


def _row_normalised(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def _set_ticks(ax: Any, labels: list[str]) -> None:
    num_classes = len(labels)
    if num_classes > PNG_TICKS_MAX_CLASSES:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    short = [label if len(label) <= 20 else label[:19] + "…" for label in labels]
    font = max(6.0, min(10.0, 200.0 / num_classes))
    rotate = num_classes > 5
    ax.set_xticks(
        range(num_classes),
        short,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=font,
    )
    ax.set_yticks(range(num_classes), short, fontsize=font)


def _annotate_counts(ax: Any, counts: np.ndarray) -> None:
    shares = _row_normalised(counts)
    font = max(6.0, min(11.0, 160.0 / counts.shape[0]))
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=font)
