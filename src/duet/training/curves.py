"""A run's learning curves as one picture: ``RUN/eval/curves.png``.

Drawn from ``metrics.jsonl`` (one row per epoch) after training, and again by
``duet evaluate`` (so a run trained before this existed gets one too): loss
(train and validation), validation accuracy with the best epoch marked, and
the learning rate; like Ultralytics' results.png, on one screen.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from duet.system.atomic import write_bytes_atomic

CURVES_NAME = "curves.png"


def read_rows(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The epoch rows of a metrics.jsonl; a torn last line (a kill mid-write) is left out."""
    rows: list[dict[str, Any]] = []
    if not metrics_jsonl.is_file():
        return rows
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["epoch"]), float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def render_curves_png(rows: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """Three panels (loss, validation accuracy, learning rate) over epochs, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    loss, acc, lr = fig.subplots(1, 3)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        x, y = _series(rows, key)
        if x:
            loss.plot(x, y, marker="o", markersize=3, label=label)
    loss.set(title="loss", xlabel="epoch")
    loss.legend(loc="best")
    x, y = _series(rows, "val_accuracy")
    if x:
        acc.plot(x, [100 * v for v in y], marker="o", markersize=3, color="tab:green")
        best = max(range(len(y)), key=lambda i: y[i])  # the first best, as training keeps it
        acc.axvline(x[best], color="tab:red", linestyle="--", label=f"best {100 * y[best]:.2f}% (epoch {x[best]})")
        acc.legend(loc="lower right")
    else:
        acc.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=acc.transAxes)
    acc.set(title="validation accuracy (%)", xlabel="epoch")
    x, y = _series(rows, "lr")
    lr.plot(x, y, color="tab:purple")
    lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (loss, acc, lr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_curves(run_root: Path) -> Path | None:
    """Write ``run_root/eval/curves.png`` from its metrics.jsonl (atomically);
    None when no epoch has finished yet."""
    rows = read_rows(run_root / "metrics.jsonl")
    if not rows:
        return None
    return write_bytes_atomic(run_root / "eval" / CURVES_NAME, render_curves_png(rows, title=run_root.name))
