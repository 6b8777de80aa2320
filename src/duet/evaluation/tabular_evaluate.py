"""`duet evaluate RUN` for a tabular run: the image evaluation's metrics and report, on rows.

``evaluate_tabular(run_dir)`` predicts the run's test split (its validation
split when there is no test split; ``split`` picks one) with the run's best
weights, and writes RUN/eval/report.json, report.md and confusion_matrix.png
through ``duet.evaluation.metrics`` and ``duet.evaluation.report``, as the
image evaluation does. The rows are read again from the run's table file
(``duet.training.tabular_run.reread``: a changed file is refused by its
sha256), so a misclassified row is named by its line in that file.

The HistGradientBoosting baseline that training scored on the same split
(run.json's ``baseline``) is put beside the model's accuracy: a "baseline"
record in report.json and a "Baseline" section in report.md. ``data`` (a
labelled table file with the run's columns) evaluates other rows instead; the
baseline was not scored on those, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.run_dir import RunPaths, slug
from duet.data.tabular.read import TableData, read_table
from duet.data.tabular.schema import ColumnSchema, take
from duet.errors import ConfigError, DataError, RunError
from duet.evaluation.eval_result import EvalResult, describe_split
from duet.evaluation.memory_report import RUNTIME, append_to_report, report_context, write_run_report
from duet.evaluation.metrics import compute_metrics, misclassified_samples
from duet.training.tabular_run import (
    SPLITS_FILE,
    column_kinds,
    load_tabular_model,
    predict_proba,
    read_run_info,
    reread,
)


def _split_rows(run_dir: Path, info: dict[str, Any], split: str | None) -> tuple[TableData, str]:
    """The rows of one of the run's splits (default: test if it has rows, else val), as read from its file."""
    schema = ColumnSchema.from_dict(info["columns"])
    source = info["source"]
    rows = {k: np.asarray(v, dtype=np.int64) for k, v in json.loads((run_dir / SPLITS_FILE).read_text("utf-8")).items()}
    if split is None:
        split = "test" if len(rows.get("test", ())) else "val"
    if split == "val" and source.get("val_data"):
        return reread(Path(source["val_data"]), source["val_sha256"], schema), split
    data = reread(Path(source["data"]), source["sha256"], schema)
    index = rows.get(split, np.zeros(0, np.int64))
    if not len(index):
        raise RunError(f"run '{run_dir}' has no '{split}' rows to evaluate; pass --data FILE with labelled rows")
    kept = TableData(data.source, take(data.table, index), data.schema, data.lines[index], unit=data.unit)
    return kept, split


def _file_rows(path: Path, schema: ColumnSchema, labels: list[str]) -> TableData:
    """A labelled table file read with the run's column kinds; DataError for classes the run lacks."""
    if not path.is_file():
        raise DataError(f"no such table file '{path}'")
    data = read_table(path, schema.target, column_kinds(schema))
    unknown = sorted({str(v) for v in data.table[schema.target]} - set(labels))
    if unknown:
        raise DataError(f"{path} has classes the model does not know: {', '.join(unknown[:5])} (its labels: {labels})")
    if not len(data.lines):
        raise DataError(f"no usable labelled row in '{path}'")
    return data


def baseline_record(info: dict[str, Any], split: str, model_accuracy: float, own_split: bool) -> dict[str, Any]:
    """report.json's ``baseline``: run.json's HistGB record and its accuracy on this split, beside the model's."""
    recorded = info.get("baseline") or {}
    accuracy = recorded.get(f"{split}_accuracy") if own_split else None
    if not recorded:
        note = "No baseline was trained with this run"
    elif accuracy is None:
        note = "The baseline was scored on the run's validation and test splits only, not on these rows"
    else:
        note = "Trained on the same training rows, scored on the same rows"
    return {
        "model": recorded.get("model"),
        "params": recorded.get("params"),
        "split": split,
        "accuracy": accuracy,
        "model_accuracy": model_accuracy,
        "note": note,
    }


def _baseline_markdown(record: dict[str, Any], model_name: str) -> str:
    def pct(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.2%}"

    return (
        f"## Baseline\n\n{record['note']}.\n\n"
        f"| Model | Accuracy ({record['split']}) |\n|---|--:|\n"
        f"| {model_name} (this run) | {pct(record['model_accuracy'])} |\n"
        f"| {record['model'] or 'HistGradientBoosting'} (default settings) | {pct(record['accuracy'])} |\n"
    )


def _add_baseline(files: dict[str, Path], record: dict[str, Any], model_name: str) -> None:
    """Put the baseline beside the model's numbers in the report write_report just wrote."""
    append_to_report(files, {"baseline": record}, _baseline_markdown(record, model_name))


def evaluate_tabular(
    run_dir: Path,
    *,
    data: Path | None = None,
    split: str | None = None,
    out_dir: Path | None = None,
) -> EvalResult:
    """Evaluate a tabular run on its held-out split (or ``data``) and write its report (module docstring)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    model, spec, schema, labels = load_tabular_model(run_dir)
    paths = RunPaths(run_dir)
    if data is None:
        rows, split_name = _split_rows(run_dir, info, split)
        out = out_dir or paths.eval
    else:
        if split is not None:
            raise ConfigError("--split picks one of the run's splits; it does not apply with --data FILE")
        rows, split_name = _file_rows(Path(data), schema, labels), "all"
        out = out_dir or paths.eval / slug(Path(data).resolve().stem)
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.asarray([index[str(v)] for v in rows.table[schema.target]], dtype=np.int64)
    probs = predict_proba(model, spec, rows.table)
    metrics = compute_metrics(y_true, probs, labels)
    metrics["unit"] = "rows"  # the report says rows, not images
    names = [f"{rows.source.name} {rows.unit} {int(line)}" for line in rows.lines]
    misclassified = misclassified_samples(names, y_true, probs, None, labels)
    meaning = describe_split(split_name, None if data is None else rows.source)
    own = {"rows": len(y_true), "skipped rows": len(rows.skipped)}
    context = report_context(run_dir, info, rows.source, split_name, meaning, own)
    files = write_run_report(metrics, out, run_dir, split_name, context, misclassified)
    record = baseline_record(info, split_name, float(metrics["accuracy"]), own_split=data is None)
    _add_baseline(files, record, str(info["model"]))
    return EvalResult(
        metrics,
        files,
        split_name,
        rows.source,
        len(rows.skipped),
        meaning,
        "fp32",
        RUNTIME,
        unit="rows",
        baseline=record,
    )
