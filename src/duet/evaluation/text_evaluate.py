"""`duet evaluate RUN` for a text run: the image evaluation's metrics and report, on documents.

``evaluate_text(run_dir)`` predicts the run's test split (its validation split
when there is no test split; ``split`` picks one) with the run's best weights,
from the raw texts through the run's spec (``duet.training.text_run.predict_proba``),
and writes RUN/eval/report.json, report.md and confusion_matrix.png through
``duet.evaluation.metrics`` and ``duet.evaluation.report``, as the image and
tabular evaluations do. The documents are read again from the run's corpus (a
changed corpus is refused by its fingerprint), so a misclassified document is
named by its origin ("neg/0007.txt", "reviews.csv line 17") with the start of
its text.

The TF-IDF + LogisticRegression baseline training scored on the same split
(run.json's ``baseline``) goes beside the model's accuracy, with both sides'
documents per second: a "baseline" record in report.json and a "Baseline"
section in report.md. ``data`` (a labelled corpus of the run's layout)
evaluates other documents instead; the baseline was not scored on those.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.run_dir import RunPaths, slug
from duet.errors import ConfigError, DataError, RunError
from duet.evaluation.eval_result import EvalResult, describe_split
from duet.evaluation.memory_report import RUNTIME, append_to_report, report_context, write_run_report
from duet.evaluation.metrics import compute_metrics, misclassified_samples
from duet.evaluation.tabular_evaluate import baseline_record
from duet.training.text_run import (
    SPLITS_FILE,
    SplitTexts,
    load_split_corpus,
    load_text_model,
    predict_proba,
    read_run_info,
    whole,
)

EXCERPT = 120  # characters of a misclassified document shown beside its origin


def _run_split(run_dir: Path, split: str | None) -> tuple[SplitTexts, str]:
    """The documents of one of the run's splits (default: test if it has any, else val)."""
    sizes = {k: len(v) for k, v in json.loads((run_dir / SPLITS_FILE).read_text("utf-8")).items()}
    docs = load_split_corpus(run_dir)
    if split is None:
        split = "test" if sizes.get("test") else "val"
    if not len(docs[split]):
        raise RunError(f"run '{run_dir}' has no '{split}' documents to evaluate; pass --data with labelled documents")
    return docs[split], split


def _corpus_docs(path: Path, source: dict[str, Any], labels: list[str]) -> SplitTexts:
    """A labelled corpus read as the run's was (a table: the same text column and target)."""
    from duet.data.text.read import read_corpus

    corpus = read_corpus(path, text_column=source.get("text_column"), target=source.get("target"))
    unknown = sorted(set(corpus.classes) - set(labels))
    if unknown:
        raise DataError(f"{path} has classes the model does not know: {', '.join(unknown[:5])} (its labels: {labels})")
    return whole(corpus)


def _baseline_markdown(record: dict[str, Any], model_name: str, speed: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.2%}"

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    recorded = record.get("speed") or {}
    return (
        f"## Baseline\n\n{record['note']}.\n\n"
        f"| Model | Accuracy ({record['split']}) | train docs/s | predict docs/s |\n|---|--:|--:|--:|\n"
        f"| {model_name} (this run) | {pct(record['model_accuracy'])} | {rate(speed.get('train_docs_per_s'))} "
        f"| {rate(speed.get('predict_docs_per_s'))} |\n"
        f"| {record['model'] or 'TF-IDF + LogisticRegression'} | {pct(record['accuracy'])} "
        f"| {rate(recorded.get('train_docs_per_s'))} | {rate(recorded.get('predict_docs_per_s'))} |\n"
    )


def _add_baseline(files: dict[str, Path], record: dict[str, Any], model_name: str, speed: dict[str, Any]) -> None:
    """Put the baseline (and both sides' docs/s) beside the model's numbers in the report just written."""
    append_to_report(files, {"baseline": record, "throughput": speed}, _baseline_markdown(record, model_name, speed))


def evaluate_text(
    run_dir: Path,
    *,
    data: Path | None = None,
    split: str | None = None,
    out_dir: Path | None = None,
) -> EvalResult:
    """Evaluate a text run on its held-out split (or ``data``) and write its report (module docstring)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    model, spec, labels = load_text_model(run_dir)
    paths = RunPaths(run_dir)
    if data is None:
        docs, split_name = _run_split(run_dir, split)
        source, out = Path(info["source"]["data"]), out_dir or paths.eval
    else:
        if split is not None:
            raise ConfigError("--split picks one of the run's splits; it does not apply with --data")
        docs, split_name = _corpus_docs(Path(data), info["source"], labels), "all"
        source, out = Path(data), out_dir or paths.eval / slug(Path(data).resolve().stem)
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.asarray([index[label] for label in docs.labels], dtype=np.int64)
    t0 = time.perf_counter()
    probs = predict_proba(model, spec, docs.texts)
    speed = dict(info.get("throughput") or {}) | {
        "evaluate_docs_per_s": round(len(docs) / max(time.perf_counter() - t0, 1e-9), 1)
    }
    metrics = compute_metrics(y_true, probs, labels)
    metrics["unit"] = "documents"
    misclassified = misclassified_samples(docs.origins, y_true, probs, None, labels)
    excerpts = dict(zip(docs.origins, docs.texts))
    for item in misclassified:
        item["excerpt"] = " ".join(excerpts[item["path"]].split())[:EXCERPT]
    meaning = describe_split(split_name, None if data is None else source).replace("images", "documents")
    own = {
        "documents": len(y_true),
        "vocabulary": f"{len(spec.vocabulary)} tokens, {spec.sequence_length} ids per document ({spec.backend})",
    }
    context = report_context(run_dir, info, source, split_name, meaning, own)
    files = write_run_report(metrics, out, run_dir, split_name, context, misclassified)
    record = baseline_record(info, split_name, float(metrics["accuracy"]), own_split=data is None)
    record["note"] = record["note"].replace("rows", "documents")
    recorded = info.get("baseline") or {}
    record["speed"] = {k: recorded.get(k) for k in ("fit_seconds", "train_docs_per_s", "predict_docs_per_s")}
    _add_baseline(files, record, str(info["model"]), speed)
    return EvalResult(
        metrics, files, split_name, source, 0, meaning, "fp32", RUNTIME, unit="documents", baseline=record
    )
