"""What the table and text evaluations (``tabular_evaluate``, ``text_evaluate``) share:
the report's context around the modality's own lines, the report written with
the run's curves, and the baseline added to it afterwards."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from duet.evaluation.report import write_report
from duet.system.atomic import write_json_atomic, write_text_atomic
from duet.training.curves import write_curves

RUNTIME = "torch on cpu (the run's best weights, best.safetensors)"


def report_context(
    run_dir: Path, info: dict[str, Any], data: Path, split: str, meaning: str, own: dict[str, Any]
) -> dict[str, Any]:
    """The report's context: the run, data and split, then ``own`` (the modality's counts), then how it ran."""
    return {
        "run": str(run_dir),
        "model": info["model"],
        "data": str(data),
        "split": split,
        "split means": meaning,
        **own,
        "runtime": RUNTIME,
        "precision": "fp32",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_run_report(
    metrics: dict[str, Any],
    out: Path,
    run_dir: Path,
    split: str,
    context: dict[str, Any],
    misclassified: list[dict[str, Any]],
) -> dict[str, Path]:
    """eval.json / eval.md (``duet.evaluation.report``) with the run's training curves."""
    return write_report(
        metrics,
        out,
        title=f"Evaluation of {run_dir.name} on {split}",
        context=context,
        misclassified=misclassified,
        curves=write_curves(run_dir),
    )


def append_to_report(files: dict[str, Path], keys: dict[str, Any], markdown: str) -> None:
    """Adds ``keys`` to the report's JSON and ``markdown`` to the end of its Markdown."""
    document = json.loads(files["json"].read_text(encoding="utf-8"))
    write_json_atomic(files["json"], {**document, **keys})
    text = files["md"].read_text(encoding="utf-8")
    write_text_atomic(files["md"], text.rstrip("\n") + "\n\n" + markdown)
