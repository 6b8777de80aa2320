"""``duet bench text``: the text models beside TF-IDF + logistic regression on real corpora, per seed.

The corpora ship with the installed packages (``duet.data.text.corpora``, no
download): ``stdlib`` (the docstrings of 9 standard-library modules, the corpus
of ``duet demo --text``) and ``libs`` (docstrings of 7 installed libraries, 400
each). Each is written as a folder of class folders of .txt files and trained
the way a user does, through ``train_text`` (the CLI's ``duet train corpus/``),
once per model and seed: the seed picks the split and the initialisation, so
every seed is another split. Each run is then exported (``duet export``: the
tokenizer inside the ONNX graph, behind the parity gate) and the exported graph
predicts the held-out documents from raw strings on the serving runtime. TF-IDF +
LR (``duet.training.text_baseline``, the code that fills run.json's
``baseline``) is fitted on the same split, read back from the run folder.

Speeds, all on the same documents of a seed: training docs/s (every epoch counts
its documents; TF-IDF + LR: training documents / fit seconds) and inference
docs/s on the test split (else validation), raw strings in, in one call: the
exported graph on ONNX Runtime against the scikit-learn pipeline's ``predict``.
The best epoch is chosen on validation, which flatters the models' validation
accuracy (TF-IDF + LR gets no such choice), so the held-out test split is the
fair comparison; the gap is reported on both.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from duet.bench.tabular import as_seeds, environment, mean_std, plus_minus
from duet.data.text.corpora import CORPORA, named_corpus, write_text_folder
from duet.errors import ConfigError

MODELS: tuple[str, ...] = ("fasttext", "text_transformer")
BASELINE = "tfidf_lr"
GOAL_POINTS = 1.0  # the goal: the default model within 1 point of TF-IDF + LR
DEFAULT_SETTINGS: dict[str, Any] = {"test_split": 0.2}  # a held-out split, measured once, on every corpus


def train_one(
    data: Path, model: str, seed: int, out: Path, settings: dict[str, Any], threads: int
) -> tuple[dict[str, Any], Path]:
    """One ``duet train corpus/`` run (baseline off), its export, and the exported graph's inference speed."""
    from duet.training.state import silent
    from duet.training.text_config import build_text_config
    from duet.training.text_fit import train_text

    overrides = {**settings, "data": data, "model": model, "seed": seed}
    overrides |= {"out": out, "name": f"{data.name}-{model}-{seed}", "baseline": False, "device": "cpu"}
    config = build_text_config(None, overrides, source="duet bench text")
    result = train_text(config, progress=False, log=silent)
    row = {
        "val_accuracy": result.best_val_accuracy,
        "test_accuracy": result.test.get("test_accuracy"),
        "train_seconds": result.seconds,
        "train_docs_per_s": result.train_images_per_s,
        "epochs_done": result.last.get("epoch", config.epochs),
        "best_epoch": result.best_epoch,
        "train_docs": result.num_train,
        "val_docs": result.num_val,
        "test_docs": result.num_test,
    }
    return row | served_speed(result.run_dir, threads), result.run_dir


def held_out(run_dir: Path) -> tuple[str, list[str], list[str]]:
    """``(split, texts, labels)``: the run's test split, else its validation split."""
    from duet.training.text_run import load_split_texts

    splits = load_split_texts(run_dir)
    split = "test" if splits["test"][0] else "val"
    return split, *splits[split]


def served_speed(run_dir: Path, threads: int) -> dict[str, Any]:
    """Export the run (parity gate), then the graph's docs/s on the held-out texts, raw strings in, one call."""
    from duet.artifacts.model_package import read_package
    from duet.exporting.text_export import export_text_run
    from duet.serve.text_service import TextRuntime, as_documents
    from duet.training.state import silent

    exported = export_text_run(run_dir, progress=False, log=silent)
    runtime = TextRuntime(read_package(exported.export_dir), threads=threads)
    split, texts, labels = held_out(run_dir)
    documents = as_documents(texts)
    runtime(documents[:8])  # warm-up: the session's first call allocates
    t0 = time.perf_counter()
    probabilities = runtime(documents).probabilities
    seconds = time.perf_counter() - t0
    names = read_package(exported.export_dir).labels
    served = sum(names[int(p.argmax())] == y for p, y in zip(probabilities, labels)) / len(labels)
    return {
        "export_seconds": exported.seconds,
        "parity_max_abs_prob_diff": exported.parity.max_abs_prob_diff,
        "infer_docs_per_s": len(texts) / max(seconds, 1e-9),
        "infer_split": split,
        "served_accuracy": served,
    }


def baseline_one(run_dir: Path, seed: int) -> dict[str, Any]:
    """TF-IDF + LR on the split of ``run_dir``, exactly as ``duet train`` fits run.json's baseline."""
    import numpy as np

    from duet.training.text_baseline import fit_text_baseline
    from duet.training.text_run import load_split_texts, read_run_info

    labels = [str(x) for x in read_run_info(run_dir)["labels"]]
    index = {label: i for i, label in enumerate(labels)}
    splits = load_split_texts(run_dir)
    texts = {name: docs for name, (docs, _) in splits.items()}
    targets = {name: np.asarray([index[y] for y in ys], np.int64) for name, (_, ys) in splits.items()}
    record = fit_text_baseline(texts, targets, seed=seed)
    split, _, _ = held_out(run_dir)
    return {
        "val_accuracy": record.get("val_accuracy"),
        "test_accuracy": record.get("test_accuracy"),
        "train_seconds": record["fit_seconds"],
        "train_docs_per_s": record["train_docs_per_s"],
        "infer_docs_per_s": record.get("predict_docs_per_s"),  # scored last: the test split, else validation
        "infer_split": split,
        "epochs_done": None,
        "best_epoch": None,
        "train_docs": len(texts["train"]),
        "val_docs": len(texts["val"]),
        "test_docs": len(texts["test"]),
    }


def summarise(runs: list[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """One summary per (corpus, model incl. TF-IDF + LR): mean ± std over seeds, the gaps to TF-IDF + LR in points."""
    summaries: list[dict[str, Any]] = []
    for corpus in dict.fromkeys(r["corpus"] for r in runs):
        rows = {m: [r for r in runs if r["corpus"] == corpus and r["model"] == m] for m in (*models, BASELINE)}
        entries = {}
        for model, mine in rows.items():
            entry: dict[str, Any] = {"corpus": corpus, "model": model, "seeds": len(mine)}
            for key in ("val_accuracy", "test_accuracy", "train_seconds", "train_docs_per_s", "infer_docs_per_s"):
                entry[key] = mean_std([r.get(key) for r in mine])
            entry["docs"] = {k: mine[0][f"{k}_docs"] for k in ("train", "val", "test")} if mine else {}
            entries[model] = entry
        for model in models:
            for split in ("val", "test"):
                mine, base = entries[model][f"{split}_accuracy"], entries[BASELINE][f"{split}_accuracy"]
                if mine is not None and base is not None:
                    gap = 100 * (mine["mean"] - base["mean"])
                    entries[model][f"{split}_gap_points"] = gap
                    entries[model][f"{split}_within_goal"] = gap >= -GOAL_POINTS
        summaries += entries.values()
    return summaries


def bench_text(
    corpora: Sequence[str] = CORPORA,
    models: Sequence[str] = MODELS,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    settings: dict[str, Any] | None = None,
    work: Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Train, export and time every model on every corpus and seed, with TF-IDF + LR on each split; the JSON result.

    ``settings``: ``TextConfig`` fields for every run (default: ``duet train``'s, with ``test_split`` 0.2).
    ``work``: where the corpora and runs go (default: a temporary folder, deleted). ``threads``: torch's and
    ONNX Runtime's intra-op threads (default: as ``duet train`` and ``duet serve`` leave them)."""
    import torch

    from duet.training.text_config import TEXT_MODELS

    unknown = [m for m in models if m not in TEXT_MODELS]
    if unknown or not models:
        raise ConfigError(f"`--models` must name some of {', '.join(TEXT_MODELS)}. Received: {','.join(models)}")
    bad = [c for c in corpora if c not in CORPORA]
    if bad or not corpora:
        raise ConfigError(f"`--corpora` must name some of {', '.join(CORPORA)}. Received: {','.join(corpora)}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"`--threads` must be at least 1. Received: {threads}")
        torch.set_num_threads(threads)
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    load_start = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="duet-bench-text-") as tmp:
        folder = Path(work) if work is not None else Path(tmp)
        for corpus in corpora:
            data = write_text_folder(named_corpus(corpus), folder / corpus)
            for seed in seeds:
                run_dir = None
                for model in models:
                    row, run_dir = train_one(data, model, seed, folder / "runs", settings, threads or 0)
                    runs.append({"corpus": corpus, "model": model, "seed": seed, **row})
                    log(_line(runs[-1]))
                assert run_dir is not None  # models is not empty; every model of a seed shares the split
                runs.append({"corpus": corpus, "model": BASELINE, "seed": seed, **baseline_one(run_dir, seed)})
                log(_line(runs[-1]))
    return {
        "corpora": list(corpora),
        "models": list(models),
        "seeds": list(seeds),
        "settings": settings,
        "goal": f"the default model's accuracy within {GOAL_POINTS:g} point of TF-IDF + LR's on the same splits",
        "summary": summarise(runs, models),
        "runs": runs,
        "environment": environment(load_start),
    }


def _line(run: dict[str, Any]) -> str:
    test = f" test {100 * run['test_accuracy']:.2f}%" if run["test_accuracy"] is not None else ""
    return (
        f"{run['corpus']} seed {run['seed']} {run['model']}: val {100 * run['val_accuracy']:.2f}%{test} "
        f"in {run['train_seconds']:.1f} s, inference {run['infer_docs_per_s']:,.0f} docs/s"
    )


COLUMNS = (
    "corpus",
    "docs train/val/test",
    "model",
    "val acc %",
    "vs TF-IDF+LR (val)",
    "test acc %",
    "vs TF-IDF+LR (test)",
    "train s",
    "train docs/s",
    "inference docs/s",
)


def _gap(summary: dict[str, Any], split: str) -> str:
    gap = summary.get(f"{split}_gap_points")
    return "" if gap is None else f"{gap:+.2f} ({'met' if summary[f'{split}_within_goal'] else 'NOT met'})"


def _rate(stats: dict[str, float] | None) -> str:
    return "—" if stats is None else f"{stats['mean']:,.0f}"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The table's cells, one list per (corpus, model)."""
    return [
        [
            s["corpus"],
            "/".join(str(s["docs"].get(k, "")) for k in ("train", "val", "test")),
            s["model"],
            plus_minus(s["val_accuracy"], 100),
            _gap(s, "val"),
            plus_minus(s["test_accuracy"], 100),
            _gap(s, "test"),
            plus_minus(s["train_seconds"], digits=1),
            _rate(s["train_docs_per_s"]),
            _rate(s["infer_docs_per_s"]),
        ]
        for s in result["summary"]
    ]


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, with what it measured under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    seeds = result["seeds"]
    lines += [
        "",
        f"Mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each seed is another "
        "split and initialisation; TF-IDF + LR is fitted on each seed's split). vs TF-IDF+LR: the model's mean "
        "accuracy minus TF-IDF + LR's, in points (the goal: no more than 1 point below). train docs/s: training "
        "documents processed per second (every epoch counts; TF-IDF + LR: training documents / fit seconds). "
        "inference docs/s: the held-out documents (test split) from raw strings in one call: the exported ONNX "
        "graph (tokenizer inside) on ONNX Runtime, against the scikit-learn pipeline's predict.",
        f"Settings beside duet train's defaults: {result['settings']}.",
    ]
    return "\n".join(lines)


__all__ = ["BASELINE", "MODELS", "as_seeds", "bench_text", "markdown", "table_rows"]
