"""`duet demo --tabular`: the whole tabular pipeline on bundled real data.

The data are scikit-learn's Wisconsin breast cancer table (569 real biopsies,
30 numeric measurements, malignant or benign), shipped inside scikit-learn, so
nothing is downloaded; it is written as a CSV, as a user's table would be. The
demo then runs the stage functions the CLI commands call:
scan -> train (+ HistGradientBoosting on the same split) -> evaluate -> export
(parity gate) -> predict through the exported graph -> drift, on the test rows
as they are (no drift expected) and with one measurement moved by a plausible
instrument error (drift expected, naming the column).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import read_package
from duet.data.tabular.checks import table_report
from duet.data.tabular.read import read_table
from duet.data.tabular.schema import Table
from duet.evaluation.eval_result import EvalResult
from duet.evaluation.tabular_evaluate import evaluate_tabular
from duet.exporting.staging import ExportResult
from duet.exporting.tabular_export import export_tabular_run
from duet.monitor.profile import ensure_profile
from duet.monitor.tabular_check import TableDrift, table_drift_check
from duet.serve.tabular_service import TabularRuntime, pack
from duet.system.atomic import write_text_atomic
from duet.training.state import Log, TrainResult
from duet.training.tabular_config import build_table_config
from duet.training.tabular_fit import train_table
from duet.training.tabular_run import load_split_tables

TARGET = "diagnosis"
SHIFTED_COLUMN = "mean radius"
SHIFT = 1.25  # a caliper read 25 % high: plausible, and far outside the reference's spread


@dataclass
class TabularDemoResult:
    data: Path
    report: dict[str, Any]  # duet scan's table report
    train: TrainResult
    evaluation: EvalResult
    export: ExportResult
    predictions: list[dict[str, Any]]
    drift: dict[str, TableDrift]  # "test rows" and "shifted"
    seconds: float


def table_csv(table: Table, columns: list[str]) -> str:
    """A table as CSV text (missing cells empty), columns in the given order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    n = len(table[columns[0]])
    for i in range(n):
        writer.writerow(["" if _missing(table[c][i]) else _text(table[c][i]) for c in columns])
    return buf.getvalue()


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _text(value: object) -> str:
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


def write_breast_cancer(path: Path) -> Path:
    """scikit-learn's breast cancer table as a CSV with a ``diagnosis`` column (written atomically)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    table: Table = {name: bunch.data[:, j].astype(np.float64) for j, name in enumerate(bunch.feature_names)}
    table[TARGET] = np.array([bunch.target_names[t] for t in bunch.target], dtype=object)
    write_text_atomic(path, table_csv(table, [*map(str, bunch.feature_names), TARGET]))
    return path


def run_tabular_demo(
    workdir: Path, *, epochs: int | None = None, seed: int = 0, progress: bool = True, log: Log = print
) -> TabularDemoResult:
    t0 = time.perf_counter()
    workdir = Path(workdir)
    data = write_breast_cancer(workdir / "breast_cancer.csv")
    report = table_report(read_table(data, TARGET))
    log(f"data: {report['num_rows']} real biopsies, {report['num_features']} measurements, at {data}")
    settings: dict[str, Any] = {
        "data": data,
        "target": TARGET,
        "test_split": 0.2,
        "out": workdir / "runs",
        "seed": seed,
    }
    if epochs is not None:
        settings["epochs"] = epochs
    result = train_table(build_table_config(overrides=settings, source="demo settings"), progress=progress, log=log)
    ensure_profile(result.run_dir, progress=progress, log=log)
    evaluation = evaluate_tabular(result.run_dir)
    exported = export_tabular_run(result.run_dir, progress=progress, log=log)
    test = load_split_tables(result.run_dir)["test"]
    columns = list(test)
    stable, shifted = workdir / "new_rows.csv", workdir / "new_rows_shifted.csv"
    write_text_atomic(stable, table_csv(test, columns))
    moved = dict(test) | {SHIFTED_COLUMN: test[SHIFTED_COLUMN] * SHIFT}
    write_text_atomic(shifted, table_csv(moved, columns))
    drift = {
        name: table_drift_check(result.run_dir, path) for name, path in (("new rows", stable), ("shifted", shifted))
    }
    predictions = _predict_rows(exported.export_dir, test, 3)
    return TabularDemoResult(data, report, result, evaluation, exported, predictions, drift, time.perf_counter() - t0)


def _predict_rows(export_dir: Path, table: Table, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows through the exported graph on the serving runtime (raw values in)."""
    package = read_package(export_dir)
    runtime = TabularRuntime(package)
    rows = {name: values[:n] for name, values in table.items()}
    probabilities = runtime(pack(runtime.layout, rows)).probabilities
    labels = package.labels
    return [
        {"row": i, "true": str(rows[TARGET][i]), "label": labels[int(p.argmax())], "probability": float(p.max())}
        for i, p in enumerate(probabilities)
    ]
