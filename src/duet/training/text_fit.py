"""A text run, top to bottom: ``train_text`` starts one, ``resume_text`` continues one.

The same story as ``duet.training.tabular_fit``: everything that can fail
cheaply happens before the run folder exists (reading the corpus, the split,
fitting the vectorisation spec on the training texts only, building the
model); a run that fails before its first checkpoint leaves no folder; the
epochs run in ``duet.training.memory_trainer.MemoryTrainer`` on the ids
(``SplitTensors((ids,), y)``); then the test split is measured once with the
best epoch's weights, and TF-IDF + LogisticRegression is trained on the same
split for the report (``duet.training.text_baseline``).

The split is the images' rule (``duet.data.tabular.split.split_rows``) keyed by
a sha256 of each document's text, so identical texts always land on the same
side and the split depends on the seed and the texts only. What the folder
holds is described in ``duet.training.text_run``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from duet.artifacts.run_dir import RunPaths, create_run_dir
from duet.data.tabular.split import split_rows
from duet.data.text.checks import text_report
from duet.data.text.spec import TextSpec, encode, fit_text_spec
from duet.errors import DataError
from duet.system.device import resolve_device
from duet.training import distributed
from duet.training.loop import discard_unless_checkpointed
from duet.training.memory_run import baseline_line, end_run, resume_point, run_epochs, write_new_run
from duet.training.memory_trainer import MemoryTrainer, SplitTensors
from duet.training.precision import FP32
from duet.training.prepare import seed_everything
from duet.training.records import library_versions
from duet.training.state import Log, Tracker, TrainResult
from duet.training.text_baseline import fit_text_baseline
from duet.training.text_config import TextConfig, text_config_from_dict
from duet.training.text_models import build_text_model
from duet.training.text_run import (
    SPLITS_FILE,
    SplitTexts,
    corpus_fingerprint,
    load_split_corpus,
    predict_proba,
    read_run_info,
    take,
    whole,
)

if TYPE_CHECKING:
    from duet.data.text.read import TextCorpus


@dataclass
class TextPlan:
    """Everything a text run needs before its folder exists (and a resume reads back)."""

    labels: list[str]  # the training corpus's classes, sorted
    source: dict[str, Any]  # run.json's "source"
    rows: dict[str, np.ndarray]  # split -> document indices into the training corpus
    splits: dict[str, SplitTexts]
    spec: TextSpec

    def counts(self) -> dict[str, int]:
        return {split: len(docs) for split, docs in self.splits.items()}


def read_trainable_corpus(config: TextConfig, log: Log) -> TextCorpus:
    """The training corpus (``duet.data.text.checks``: skips and replacements logged); DataError when it cannot train."""
    from duet.data.text.checks import read_trainable_corpus as read_checked

    return read_checked(config.data, text_column=config.text_column, target=config.target, log=log)


def text_keys(texts: list[str]) -> list[str]:
    """One sha256 per document's text: the split key (identical texts, one side)."""
    return [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]


def plan_text(config: TextConfig, corpus: TextCorpus, log: Log) -> TextPlan:
    """Split the corpus (or take --val-data) and fit the spec on the training texts; DataError with what to fix."""
    source: dict[str, Any] = {
        "data": str(corpus.source.resolve()),
        "layout": corpus.layout,
        "text_column": config.text_column,
        "target": config.target,
        "fingerprint": corpus_fingerprint(corpus),
        "documents": len(corpus.texts),
        "skipped": len(corpus.skipped),
        "replaced": len(corpus.replaced),
    }
    if config.val_data is not None:
        val = reread_val(config, corpus, log)
        source |= {"val_data": str(val.source.resolve()), "val_fingerprint": corpus_fingerprint(val)}
        empty = np.zeros(0, np.int64)
        rows = {"train": np.arange(len(corpus.texts)), "val": empty, "test": empty}
        splits = {"train": whole(corpus), "val": whole(val), "test": take(corpus, empty)}
    else:
        rows = split_rows(
            np.asarray(corpus.labels, dtype=object),
            text_keys(corpus.texts),
            val_fraction=config.val_split,
            test_fraction=config.test_split,
            seed=config.seed,
        )
        splits = {name: take(corpus, index) for name, index in rows.items()}
        if config.val_split > 0 and len(rows["val"]) == 0:
            counts = Counter(corpus.labels)
            raise DataError(
                f"{corpus.source}: too few documents to hold any out for validation (a class needs at least 2 "
                f"distinct texts; classes: {', '.join(f'{k}={v}' for k, v in sorted(counts.items())[:6])}); "
                "add documents, or pass --val-data"
            )
    return TextPlan(list(corpus.classes), source, rows, splits, fit_spec(config, splits["train"].texts))


def reread_val(config: TextConfig, corpus: TextCorpus, log: Log) -> TextCorpus:
    """The --val-data corpus (one class is fine here: it only has to be among the training classes)."""
    from duet.data.text.read import read_corpus

    assert config.val_data is not None
    val = read_corpus(config.val_data, text_column=config.text_column, target=config.target)
    if val.skipped:
        log(f"{len(val.skipped)} documents of {val.source} skipped (first, {val.skipped[0][0]}: {val.skipped[0][1]})")
    unknown = sorted(set(val.classes) - set(corpus.classes))
    if unknown:
        raise DataError(f"{val.source} has classes the training corpus lacks: {', '.join(unknown[:5])}")
    return val


def fit_spec(config: TextConfig, texts: list[str]) -> TextSpec:
    """The vectorisation spec from the training texts, by the backend the config names."""
    settings: dict[str, Any] = {
        "standardize": config.standardize,
        "ngrams": config.ngrams,
        "max_tokens": config.max_tokens,
        "sequence_length": config.sequence_length,
    }
    if config.data_backend == "tf":
        from duet.data.text.tf_spec import fit_text_spec_keras

        return fit_text_spec_keras(texts, **settings)
    return fit_text_spec(texts, **settings)


def encode_split(spec: TextSpec, texts: list[str]) -> np.ndarray:
    """Ids by the producer that fitted the spec (both give the same ids: tests/test_text_spec.py)."""
    if spec.backend == "keras" and texts:
        from duet.data.text.tf_spec import encode_keras

        return encode_keras(spec, texts)
    return encode(spec, texts)


def split_tensors(plan: TextPlan, device: torch.device) -> dict[str, SplitTensors]:
    """Every split as the model's ids and class indices, on ``device``."""
    index = {label: i for i, label in enumerate(plan.labels)}
    out = {}
    for name, docs in plan.splits.items():
        ids = torch.from_numpy(encode_split(plan.spec, docs.texts))
        y = torch.tensor([index[label] for label in docs.labels], dtype=torch.int64)
        out[name] = SplitTensors((ids.to(device),), y.to(device))
    return out


def text_run_info(
    config: TextConfig, plan: TextPlan, best: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """run.json of a text run (see ``duet.training.text_run``); ``extra``: baseline and throughput."""
    return {
        "modality": "text",
        "model": config.model,
        "labels": plan.labels,
        "num_classes": len(plan.labels),
        "text_spec": plan.spec.to_dict(),
        "source": plan.source,
        "docs": plan.counts(),
        "precision": FP32.to_dict(),
        "best": best,
        "baseline": None,
        "throughput": None,
        "versions": library_versions(),
        **(extra or {}),
    }


def train_text(
    config: TextConfig,
    *,
    progress: bool = True,
    log: Log = print,
    tracker: Tracker | None = None,
    corpus: TextCorpus | None = None,
) -> TrainResult:
    """Train a new text run from ``config``; returns when it is done (see the module docstring).

    ``corpus``: the training corpus already read by ``read_trainable_corpus`` (else it is read here)."""
    device = resolve_device(config.device)
    corpus = corpus if corpus is not None else read_trainable_corpus(config, log)
    plan = plan_text(config, corpus, log)
    seed_everything(config.seed)
    model = build_text_model(config.model, plan.spec, len(plan.labels))
    paths = create_run_dir(config.out, config.name, config.model)
    with discard_unless_checkpointed(paths, distributed.Dist(), log):
        report = text_report(corpus) | {"split_docs": plan.counts()}
        write_new_run(paths, config, plan.rows, report, text_run_info(config, plan, {}), log)
        n = plan.counts()
        log(
            f"{n['train']} train / {n['val']} val / {n['test']} test documents; vocabulary of "
            f"{len(plan.spec.vocabulary)} tokens, {plan.spec.sequence_length} ids per document "
            f"(spec fitted on the training texts by {plan.spec.backend})"
        )
        return _fit(config, plan, paths, model.to(device), device, None, progress, log, tracker)


def _fit(
    config: TextConfig,
    plan: TextPlan,
    paths: RunPaths,
    model: torch.nn.Module,
    device: torch.device,
    saved: dict[str, Any] | None,
    progress: bool,
    log: Log,
    tracker: Tracker | None,
) -> TrainResult:
    """The epochs (from ``saved`` when resuming), the test split once, the baseline, run.json."""
    tensors = split_tensors(plan, device)
    trainer, result, best = run_epochs(config, paths, model, tensors, len(plan.labels), saved, progress, log, tracker)
    extra: dict[str, Any] = {"throughput": throughput(trainer, model, plan)}
    if config.baseline:
        texts = {name: docs.texts for name, docs in plan.splits.items()}
        targets = {name: t.y.cpu().numpy() for name, t in tensors.items()}
        extra["baseline"] = fit_text_baseline(texts, targets, seed=config.seed)
        log(_baseline_line(extra["baseline"], best))
    return end_run(paths, text_run_info(config, plan, best, extra), tracker, result)


def throughput(trainer: MemoryTrainer, model: torch.nn.Module, plan: TextPlan) -> dict[str, Any]:
    """Training docs/s (ids in memory) and prediction docs/s from raw text (encode + forward, best weights)."""
    texts = plan.splits["val"].texts or plan.splits["train"].texts[:2048]
    t0 = time.perf_counter()
    predict_proba(model, plan.spec, texts)
    seconds = time.perf_counter() - t0
    return {
        "train_docs_per_s": round(trainer.rows_trained / max(trainer.train_seconds, 1e-9), 1),
        "predict_docs_per_s": round(len(texts) / max(seconds, 1e-9), 1),
        "predict_on": f"{len(texts)} documents, raw text, {next(model.parameters()).device}",
    }


def _baseline_line(baseline: dict[str, Any], best: dict[str, Any]) -> str:
    if "skipped" in baseline:
        return f"TF-IDF + LogisticRegression not trained: {baseline['skipped']}"
    return baseline_line("TF-IDF + LogisticRegression", baseline, best)


def resume_text(
    run_dir: Path, *, epochs: int | None = None, progress: bool = True, log: Log = print, tracker: Tracker | None = None
) -> TrainResult:
    """Continue an interrupted text run from checkpoints/last.pt (mid-epoch included).

    ``epochs``: a new total, more than the epochs done (extends a finished run too)."""
    paths = RunPaths(Path(run_dir))
    info = read_run_info(paths.root)
    config, saved = resume_point(paths, epochs, text_config_from_dict)
    source = dict(info["source"])
    rows = {k: np.asarray(v, np.int64) for k, v in json.loads((paths.root / SPLITS_FILE).read_text("utf-8")).items()}
    splits = load_split_corpus(paths.root)
    plan = TextPlan([str(x) for x in info["labels"]], source, rows, splits, TextSpec.from_dict(info["text_spec"]))
    device = resolve_device(config.device)
    model = build_text_model(config.model, plan.spec, len(plan.labels)).to(device)
    return _fit(config, plan, paths, model, device, saved, progress, log, tracker)
