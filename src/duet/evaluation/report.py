"""The evaluation report: metrics (from ``duet.evaluation.metrics``) written for people.

``write_report`` writes three files atomically into one folder: ``report.json``
(``{"title", "context", "metrics", "misclassified"}``: the metrics dict as
``compute_metrics`` returned it, unchanged), ``report.md`` (the same, as
tables) and ``confusion_matrix.png``; ``format_summary`` gives the few lines
the terminal shows::

    metrics = compute_metrics(y_true, probs, labels)
    paths = write_report(metrics, run_dir / "eval", title="Evaluation: my-run",
                         context={"run": "my-run", "split": "val"})
    print(format_summary(metrics))

Nothing here computes a metric; everything reads the dict it is given.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from duet.system.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

MD_MATRIX_MAX_CLASSES = 30
PNG_ANNOTATE_MAX_CLASSES = 20
PNG_TICKS_MAX_CLASSES = 60
MD_MISCLASSIFIED_MAX = 20


def format_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy, top-k, macro F1, worst class by recall."""
    top_k = metrics["top_k_accuracy"]
    also = f" (top-{top_k['k']} {top_k['value']:.2%})" if top_k else ""
    lines = [
        f"accuracy   {metrics['accuracy']:.2%} on {metrics['num_images']} {metrics.get('unit', 'images')}{also}",
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
    curves: Path | None = None,
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
        curves: the run's learning curves (a PNG), shown in the Markdown by its
            path relative to ``out_dir``.

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
            render_markdown(
                metrics,
                title=title,
                context=context,
                misclassified=misclassified,
                curves=None if curves is None else Path(os.path.relpath(curves, out_dir)).as_posix(),
            ),
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
    curves: str | None = None,
) -> str:
    """The human-readable report as one Markdown string (``curves``: the
    learning curves' PNG, a path relative to the report)."""
    sections = [
        f"# {title}\n",
        _md_context(context),
        _md_headline(metrics, context.get("split")),
        f"## Training curves\n\n![loss, validation accuracy and learning rate per epoch]({curves})\n" if curves else "",
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
        [str(metrics.get("unit", "images")).capitalize(), metrics["num_images"]],
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
        f"({int(counts.sum())} {metrics.get('unit', 'images')}, accuracy {metrics['accuracy']:.2%})",
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
