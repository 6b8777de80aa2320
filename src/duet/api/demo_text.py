"""`duet demo --text`: the whole text pipeline on real text that ships with Python.

The corpus is the docstrings of 9 standard-library modules' functions and
classes, the module as the class ("which module documents this?":
``duet.data.text.corpora``, read with ``ast``, nothing downloaded), written as a
folder of class folders of .txt files, as a user's corpus would be. The demo
then runs the stage functions the CLI commands call:
scan -> train (fastText, with TF-IDF + logistic regression on the same split) ->
evaluate -> export (the tokenizer inside the ONNX graph, behind the parity gate)
-> predict raw strings through the exported graph on the serving runtime ->
drift on the held-out test texts (no drift expected) and on the documentation of
5 stdlib modules the model never saw (drift expected).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duet.artifacts.model_package import read_package
from duet.data.text.checks import text_report
from duet.data.text.corpora import FOREIGN_MODULES, stdlib_corpus, write_text_folder
from duet.data.text.read import read_corpus
from duet.evaluation.eval_result import EvalResult
from duet.evaluation.text_evaluate import evaluate_text
from duet.exporting.staging import ExportResult
from duet.exporting.text_export import export_text_run
from duet.monitor.profile import ensure_profile
from duet.monitor.text_check import TextDrift, text_drift_check
from duet.serve.text_service import TextRuntime, as_documents
from duet.training.state import Log, TrainResult
from duet.training.text_config import build_text_config
from duet.training.text_fit import train_text
from duet.training.text_run import load_split_texts

PREDICTIONS = 3
EXCERPT = 60  # characters of a predicted document shown in the summary


@dataclass
class TextDemoResult:
    data: Path
    report: dict[str, Any]  # duet scan's corpus report
    train: TrainResult
    evaluation: EvalResult
    export: ExportResult
    predictions: list[dict[str, Any]]
    drift: dict[str, TextDrift]  # "held-out texts" and "unseen modules"
    seconds: float


def run_text_demo(
    workdir: Path, *, epochs: int | None = None, seed: int = 0, progress: bool = True, log: Log = print
) -> TextDemoResult:
    t0 = time.perf_counter()
    workdir = Path(workdir)
    data = write_text_folder(stdlib_corpus(), workdir / "stdlib_docstrings")
    report = text_report(read_corpus(data))
    log(f"data: {report['num_documents']} docstrings of {len(report['classes'])} stdlib modules, at {data}")
    settings: dict[str, Any] = {"data": data, "test_split": 0.2, "out": workdir / "runs", "seed": seed}
    if epochs is not None:
        settings["epochs"] = epochs
    result = train_text(build_text_config(overrides=settings, source="demo settings"), progress=progress, log=log)
    ensure_profile(result.run_dir, progress=progress, log=log)
    evaluation = evaluate_text(result.run_dir)
    exported = export_text_run(result.run_dir, progress=progress, log=log)
    test_texts, test_labels = load_split_texts(result.run_dir)["test"]
    held_out = write_text_folder({"new": test_texts}, workdir / "new_texts")
    unseen = write_text_folder(stdlib_corpus(FOREIGN_MODULES), workdir / "new_texts_unseen_modules")
    drift = {
        name: text_drift_check(result.run_dir, folder)
        for name, folder in (("held-out texts", held_out), ("unseen modules", unseen))
    }
    shown = _one_per_class(test_labels, PREDICTIONS)
    predictions = _predict_texts(exported.export_dir, [test_texts[i] for i in shown], [test_labels[i] for i in shown])
    return TextDemoResult(data, report, result, evaluation, exported, predictions, drift, time.perf_counter() - t0)


def _one_per_class(labels: list[str], n: int) -> list[int]:
    """The index of the first document of each of the first ``n`` classes met (fewer when fewer classes)."""
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    return list(first.values())[:n]


def _predict_texts(export_dir: Path, texts: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """Raw strings through the exported graph (tokenizer inside) on the serving runtime."""
    package = read_package(export_dir)
    probabilities = TextRuntime(package)(as_documents(texts)).probabilities
    return [
        {
            "text": " ".join(text.split())[:EXCERPT],
            "true": true,
            "label": package.labels[int(p.argmax())],
            "probability": float(p.max()),
        }
        for text, true, p in zip(texts, labels, probabilities)
    ]
