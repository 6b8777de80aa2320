"""A tabular run, top to bottom: ``train_table`` starts one, ``resume_table`` continues one.

The same story as ``duet.training.loop`` for images: everything that can fail
cheaply happens before the run folder exists (reading and checking the table,
the split, fitting the preprocessing spec on the training rows only, building
the model); a run that fails before its first checkpoint leaves no folder; the
epochs run in ``duet.training.memory_trainer.MemoryTrainer``; then the test
split is measured once with the best epoch's weights, and scikit-learn's
HistGradientBoosting is trained on the same split for the report
(``duet.training.tabular_baseline``). What the folder holds is described in
``duet.training.tabular_run``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import sha256_file
from duet.artifacts.run_dir import RunPaths, create_run_dir
from duet.data.tabular.checks import read_trainable_table, table_report
from duet.data.tabular.read import TableData, read_table
from duet.data.tabular.schema import ColumnSchema, Table, num_rows, take
from duet.data.tabular.spec import TabularSpec, fit_spec
from duet.data.tabular.split import row_keys, split_rows
from duet.errors import DataError
from duet.system.device import resolve_device
from duet.training import distributed
from duet.training.loop import discard_unless_checkpointed
from duet.training.memory_run import baseline_line, end_run, resume_point, run_epochs, write_new_run
from duet.training.memory_trainer import SplitTensors
from duet.training.precision import FP32
from duet.training.prepare import seed_everything
from duet.training.records import library_versions
from duet.training.state import Log, Tracker, TrainResult
from duet.training.tabular_baseline import fit_baseline
from duet.training.tabular_config import TableConfig, table_config_from_dict
from duet.training.tabular_models import build_tabular
from duet.training.tabular_run import SPLITS_FILE, column_kinds, features, load_split_tables, read_run_info


@dataclass
class TablePlan:
    """Everything a tabular run needs before its folder exists (and a resume reads back)."""

    schema: ColumnSchema  # labels: the training table's classes, sorted
    source: dict[str, Any]  # run.json's "source": the table file(s) and their sha256
    rows: dict[str, np.ndarray]  # split -> row indices into the training file's rows (see tabular_run)
    tables: dict[str, Table]
    spec: TabularSpec

    @property
    def labels(self) -> list[str]:
        return list(self.schema.labels)

    def counts(self) -> dict[str, int]:
        return {split: num_rows(table) for split, table in self.tables.items()}


def plan_table(config: TableConfig, log: Log, data: TableData | None = None) -> tuple[TablePlan, TableData]:
    """Read (unless ``data`` is the file already read), check and split the table, and fit the spec
    on the training rows; DataError with what to fix.

    Returns the plan and the training file as read (for data_report.json)."""
    data = data if data is not None else read_trainable_table(config.data, config.target, config.columns, log)
    source: dict[str, Any] = {"data": str(data.source.resolve()), "sha256": sha256_file(data.source)}
    if config.val_data is not None:
        val = read_table(config.val_data, config.target, column_kinds(data.schema))
        unknown = sorted(set(val.schema.labels) - set(data.schema.labels))
        if unknown:
            raise DataError(f"{val.source} has classes the training table lacks: {', '.join(unknown[:5])}")
        source |= {"val_data": str(val.source.resolve()), "val_sha256": sha256_file(val.source)}
        empty = np.zeros(0, np.int64)
        rows = {"train": np.arange(num_rows(data.table)), "val": empty, "test": empty}
        tables = {"train": data.table, "val": val.table, "test": take(data.table, empty)}
    else:
        keys = row_keys(data.table, [c.name for c in data.schema.features()])
        rows = split_rows(
            data.table[config.target],
            keys,
            val_fraction=config.val_split,
            test_fraction=config.test_split,
            seed=config.seed,
        )
        tables = {split: take(data.table, index) for split, index in rows.items()}
        _require_validation_rows(config, data, rows)
    spec = fit_table_spec(config, tables["train"], data.schema)
    return TablePlan(data.schema, source, rows, tables, spec), data


def _require_validation_rows(config: TableConfig, data: TableData, rows: dict[str, np.ndarray]) -> None:
    """A validation split was asked for but no class could give one: too few distinct rows."""
    if config.val_split > 0 and len(rows["val"]) == 0:
        raise DataError(
            f"{data.source}: too few rows to hold any out for validation (a class needs at least 2 distinct rows; "
            f"classes: {', '.join(f'{k}={v}' for k, v in sorted(Counter(map(str, data.table[config.target])).items())[:6])}); "
            "add rows, or pass --val-data FILE"
        )


def fit_table_spec(config: TableConfig, train: Table, schema: ColumnSchema) -> TabularSpec:
    """The preprocessing spec from the training rows, by the backend the config names."""
    if config.data_backend == "tf":
        from duet.data.tabular.tf_spec import fit_spec_keras

        return fit_spec_keras(train, schema, min_count=config.min_count, max_tokens=config.max_tokens)
    return fit_spec(train, schema, min_count=config.min_count, max_tokens=config.max_tokens)


def class_indices(table: Table, target: str, labels: list[str]) -> np.ndarray:
    """Each row's class as an index into ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[str(v)] for v in table[target]], dtype=np.int64)


def split_tensors(
    spec: TabularSpec, tables: dict[str, Table], target: str, labels: list[str], device: torch.device
) -> dict[str, SplitTensors]:
    """Every split as the model's input tensors and class indices, on ``device``."""
    out = {}
    for split, table in tables.items():
        numeric, categorical = features(spec, table)
        y = torch.from_numpy(class_indices(table, target, labels))
        out[split] = SplitTensors((numeric.to(device), categorical.to(device)), y.to(device))
    return out


def table_run_info(
    config: TableConfig, plan: TablePlan, best: dict[str, Any], baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """run.json of a tabular run (see ``duet.training.tabular_run``)."""
    return {
        "modality": "tabular",
        "model": config.model,
        "labels": plan.labels,
        "num_classes": len(plan.labels),
        "target": config.target,
        "columns": plan.schema.to_dict(),
        "tabular_spec": plan.spec.to_dict(),
        "source": plan.source,
        "rows": plan.counts(),
        "precision": FP32.to_dict(),
        "best": best,
        "baseline": baseline,
        "versions": library_versions(),
    }


def train_table(
    config: TableConfig,
    *,
    progress: bool = True,
    log: Log = print,
    tracker: Tracker | None = None,
    data: TableData | None = None,
) -> TrainResult:
    """Train a new tabular run from ``config``; returns when it is done (see the module docstring).

    ``data``: the training file already read by ``duet.data.tabular.checks.read_trainable_table`` (else it is read here)."""
    device = resolve_device(config.device)
    plan, data = plan_table(config, log, data)
    seed_everything(config.seed)
    model = build_tabular(config.model, plan.spec, len(plan.labels))
    paths = create_run_dir(config.out, config.name, config.model)
    with discard_unless_checkpointed(paths, distributed.Dist(), log):
        report = table_report(data) | {"split_rows": plan.counts()}
        write_new_run(paths, config, plan.rows, report, table_run_info(config, plan, {}), log)
        n = plan.counts()
        log(
            f"{n['train']} train / {n['val']} val / {n['test']} test rows; "
            f"{len(plan.spec.numeric_names())} numeric + {len(plan.spec.categorical)} categorical features "
            f"(spec fitted on the training rows by {plan.spec.backend})"
        )
        return _fit(config, plan, paths, model.to(device), device, None, progress, log, tracker)


def _fit(
    config: TableConfig,
    plan: TablePlan,
    paths: RunPaths,
    model: torch.nn.Module,
    device: torch.device,
    saved: dict[str, Any] | None,
    progress: bool,
    log: Log,
    tracker: Tracker | None,
) -> TrainResult:
    """The epochs (from ``saved`` when resuming), the test split once, the baseline, run.json."""
    tensors = split_tensors(plan.spec, plan.tables, config.target, plan.labels, device)
    _, result, best = run_epochs(config, paths, model, tensors, len(plan.labels), saved, progress, log, tracker)
    baseline = None
    if config.baseline:
        targets = {split: t.y.cpu().numpy() for split, t in tensors.items()}
        baseline = fit_baseline(plan.spec, plan.tables, targets, seed=config.seed)
        log(baseline_line("HistGradientBoosting", baseline, best))
    return end_run(paths, table_run_info(config, plan, best, baseline), tracker, result)


def resume_table(
    run_dir: Path, *, epochs: int | None = None, progress: bool = True, log: Log = print, tracker: Tracker | None = None
) -> TrainResult:
    """Continue an interrupted tabular run from checkpoints/last.pt (mid-epoch included).

    ``epochs``: a new total, more than the epochs done (extends a finished run too)."""
    paths = RunPaths(Path(run_dir))
    config, saved = resume_point(paths, epochs, table_config_from_dict)
    info = read_run_info(paths.root)
    splits = json.loads((paths.root / SPLITS_FILE).read_text(encoding="utf-8"))
    plan = TablePlan(
        schema=ColumnSchema.from_dict(info["columns"]),
        source=dict(info["source"]),
        rows={k: np.asarray(v, dtype=np.int64) for k, v in splits.items()},
        tables=load_split_tables(paths.root),
        spec=TabularSpec.from_dict(info["tabular_spec"]),
    )
    device = resolve_device(config.device)
    model = build_tabular(config.model, plan.spec, len(plan.labels)).to(device)
    return _fit(config, plan, paths, model, device, saved, progress, log, tracker)
