"""``duet bench tabular``: how the tabular models do beside HistGradientBoosting on real tables.

The tables are scikit-learn's bundled ones (no download): ``breast_cancer``
(569 rows, 30 numeric columns, 2 classes), ``wine`` (178 rows, 13 columns,
3 classes) and ``digits`` (1,797 rows, the 8 x 8 images as 64 numeric columns,
10 classes). Each is written to a CSV (``write_dataset``) and trained the way a
user does, through ``train_table`` (the CLI's ``duet train data.csv --target
label``), once per model and seed: the seed picks the split and the
initialisation, so every seed is another split. HistGradientBoosting is fitted on
the same split, read back from the run folder (``duet.training.tabular_baseline``,
the code that fills run.json's ``baseline``), so all rows of one seed compare the
same rows.

Validation sets are small (wine: 36 rows, where one row is 2.8 points), so a
single split says little: ``summarise`` reports the mean and standard deviation
over seeds, and the gap of each model's mean to HistGB's mean. The best epoch is
chosen on validation, which flatters the network's validation accuracy a little
(HistGB gets no such choice); ``--test-split`` adds a held-out split measured once
that neither chose on. ``bench_tabular`` does everything; ``markdown`` makes the
table.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.errors import ConfigError

DATASETS: tuple[str, ...] = ("breast_cancer", "wine", "digits")
MODELS: tuple[str, ...] = ("tab_mlp", "ft_transformer")
BASELINE = "hist_gb"
TARGET = "label"
GOAL_POINTS = 1.0  # the goal: the default model's mean val accuracy within 1 point of HistGB's


def write_dataset(name: str, folder: Path) -> Path:
    """scikit-learn's bundled table ``name`` as ``folder/name.csv`` (features, then ``label``: the class name)."""
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "digits": datasets.load_digits}
    if name not in loaders:
        raise ConfigError(f"`--datasets` must name some of {', '.join(DATASETS)}. Received: {name!r}")
    bunch = loaders[name]()
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    classes = [str(c) for c in bunch.target_names]
    path = folder / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*names, TARGET])
        for row, y in zip(bunch.data, bunch.target):
            writer.writerow([repr(float(v)) for v in row] + [classes[int(y)]])
    return path


def train_one(data: Path, model: str, seed: int, out: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """One ``duet train data.csv --target label`` run (baseline off: measured once per split by ``baseline_one``).

    Returns the row (accuracies, seconds, rows/s, epochs) and the run folder."""
    from duet.training.state import silent
    from duet.training.tabular_config import build_table_config
    from duet.training.tabular_fit import train_table

    overrides = {**settings, "data": data, "target": TARGET, "model": model, "seed": seed}
    overrides |= {"out": out, "name": f"{data.stem}-{model}-{seed}", "baseline": False, "device": "cpu"}
    config = build_table_config(None, overrides, source="duet bench tabular")
    result = train_table(config, progress=False, log=silent)
    row = {
        "val_accuracy": result.best_val_accuracy,
        "test_accuracy": result.test.get("test_accuracy"),
        "train_seconds": result.seconds,
        "rows_per_s": result.train_images_per_s,
        "epochs_done": result.last.get("epoch", config.epochs),
        "best_epoch": result.best_epoch,
        "train_rows": result.num_train,
        "val_rows": result.num_val,
        "test_rows": result.num_test,
    }
    return row, result.run_dir


def baseline_one(run_dir: Path, seed: int) -> dict[str, Any]:
    """HistGB on the split of ``run_dir``, exactly as ``duet train`` fits run.json's baseline."""
    from duet.data.tabular.spec import TabularSpec
    from duet.training.tabular_baseline import fit_baseline
    from duet.training.tabular_fit import class_indices
    from duet.training.tabular_run import load_split_tables, read_run_info

    info = read_run_info(run_dir)
    tables = load_split_tables(run_dir)
    labels = [str(x) for x in info["labels"]]
    targets = {split: class_indices(table, TARGET, labels) for split, table in tables.items()}
    t0 = time.perf_counter()
    record = fit_baseline(TabularSpec.from_dict(info["tabular_spec"]), tables, targets, seed=seed)
    seconds = time.perf_counter() - t0
    return {
        "val_accuracy": record.get("val_accuracy"),
        "test_accuracy": record.get("test_accuracy"),
        "train_seconds": seconds,
        "rows_per_s": len(targets["train"]) / max(seconds, 1e-9),
        "epochs_done": None,
        "best_epoch": None,
        "train_rows": len(targets["train"]),
        "val_rows": len(targets["val"]),
        "test_rows": len(targets["test"]),
    }


def mean_std(values: Sequence[float | None]) -> dict[str, float] | None:
    """Mean and sample standard deviation (0 for one value); None when no value was measured."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """One summary per (data set, model incl. HistGB): mean ± std over seeds, and the gap to HistGB in points."""
    summaries = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows = {m: [r for r in runs if r["dataset"] == dataset and r["model"] == m] for m in (*models, BASELINE)}
        base = mean_std([r["val_accuracy"] for r in rows[BASELINE]])
        for model, mine in rows.items():
            entry: dict[str, Any] = {"dataset": dataset, "model": model, "seeds": len(mine)}
            for key in ("val_accuracy", "test_accuracy", "train_seconds", "rows_per_s", "epochs_done"):
                entry[key] = mean_std([r[key] for r in mine])
            entry["rows"] = {k: mine[0][f"{k}_rows"] for k in ("train", "val", "test")}
            if model != BASELINE and base is not None and entry["val_accuracy"] is not None:
                gap = 100 * (entry["val_accuracy"]["mean"] - base["mean"])
                entry["val_gap_points"] = gap
                entry["within_goal"] = gap >= -GOAL_POINTS
            summaries.append(entry)
    return summaries


def bench_tabular(
    datasets: Sequence[str] = DATASETS,
    models: Sequence[str] = MODELS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    settings: dict[str, Any] | None = None,
    work: Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Train every model on every data set and seed, with HistGB on each split; the JSON result.

    ``settings``: ``TableConfig`` fields for every run (val_split, test_split, epochs, ...; default: the
    defaults of ``duet train``). ``work``: where the tables and runs go (default: a temporary folder, deleted).
    ``threads``: torch's intra-op threads for every run (default: as ``duet train`` leaves them); one thread
    is the steadier measure on a busy machine, where two threads of tiny matrices wait on each other."""
    import torch

    from duet.training.tabular_models import TABULAR_MODELS

    unknown = [m for m in models if m not in TABULAR_MODELS]
    if unknown or not models:
        raise ConfigError(f"`--models` must name some of {', '.join(TABULAR_MODELS)}. Received: {','.join(models)}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"`--threads` must be at least 1. Received: {threads}")
        torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="duet-bench-tabular-") as tmp:
        folder = Path(work) if work is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for dataset in datasets:
            data = write_dataset(dataset, folder)
            for seed in seeds:
                run_dir = None
                for model in models:
                    row, run_dir = train_one(data, model, seed, folder / "runs", dict(settings or {}))
                    runs.append({"dataset": dataset, "model": model, "seed": seed, **row})
                    log(_line(runs[-1]))
                assert run_dir is not None  # models is not empty; every model of a seed shares the split
                runs.append({"dataset": dataset, "model": BASELINE, "seed": seed, **baseline_one(run_dir, seed)})
                log(_line(runs[-1]))
    return {
        "datasets": list(datasets),
        "models": list(models),
        "seeds": list(seeds),
        "settings": dict(settings or {}),
        "goal": f"the default model's mean val accuracy within {GOAL_POINTS:g} point of HistGB's on the same splits",
        "summary": summarise(runs, models),
        "runs": runs,
        "environment": environment(load_start),
    }


def _line(run: dict[str, Any]) -> str:
    test = f" test {100 * run['test_accuracy']:.2f}%" if run["test_accuracy"] is not None else ""
    return (
        f"{run['dataset']} seed {run['seed']} {run['model']}: val {100 * run['val_accuracy']:.2f}%{test} "
        f"in {run['train_seconds']:.1f} s"
    )


def environment(load_start: float) -> dict[str, str]:
    """The machine, the libraries, the date, the torch threads and the load average at start and end."""
    import sklearn
    import torch

    from duet.bench.data import environment as base

    env = base(torch.device("cpu"))
    env["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["scikit-learn"] = sklearn.__version__
    env["torch threads"] = str(torch.get_num_threads())
    env["load average"] = f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)"
    return env


COLUMNS = (
    "data set",
    "rows train/val/test",
    "model",
    "val acc %",
    "vs HistGB",
    "test acc %",
    "train s",
    "rows/s",
    "epochs",
)


def plus_minus(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if stats is None else f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The table's cells, one list per (data set, model) (the CLI and ``markdown`` share them)."""
    cells = []
    for s in result["summary"]:
        gap = s.get("val_gap_points")
        verdict = "" if gap is None else f"{gap:+.2f} ({'met' if s['within_goal'] else 'NOT met'})"
        rows_per_s = s["rows_per_s"]
        cells.append(
            [
                s["dataset"],
                "/".join(str(s["rows"][k]) for k in ("train", "val", "test")),
                s["model"],
                plus_minus(s["val_accuracy"], 100),
                verdict,
                plus_minus(s["test_accuracy"], 100),
                plus_minus(s["train_seconds"], digits=1),
                "—" if rows_per_s is None else f"{rows_per_s['mean']:,.0f}",
                plus_minus(s["epochs_done"], digits=0),
            ]
        )
    return cells


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table, with what it measured under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    seeds = result["seeds"]
    lines.append("")
    lines.append(
        f"Mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each seed is another "
        "split and initialisation; HistGB is fitted on each model's split). vs HistGB: the model's mean val accuracy "
        "minus HistGB's, in points (the goal: no more than 1 point below). rows/s: training rows processed per second (every epoch counts its rows; "
        "HistGB: training rows / fit seconds). train s: the epochs with their validation and checkpoints."
    )
    if result["settings"]:
        lines.append(f"Settings beside the defaults: {result['settings']}.")
    return "\n".join(lines)


def as_seeds(count: int) -> list[int]:
    """Seeds 0 .. count-1 (ConfigError for fewer than one)."""
    if count < 1:
        raise ConfigError(f"`--seeds` must be at least 1. Received: {count}")
    return list(np.arange(count).tolist())
