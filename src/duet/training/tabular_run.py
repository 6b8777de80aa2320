"""A tabular run's data and model, read back from its folder (for export, evaluation, drift).

What a tabular run folder records (written by ``duet.training.tabular_fit``):

- run.json: ``modality: tabular``, ``labels``, ``model``, ``columns`` (the
  ``ColumnSchema``), ``tabular_spec`` (the fitted ``TabularSpec``), ``source``
  (the table file(s) with their sha256), ``best``, ``baseline``;
- splits.json: the row indices of each split into the rows ``read_table`` keeps
  of ``source.data`` (with ``source.val_data``, validation is that whole file);
- checkpoints/best.safetensors: the weights of the epoch validation chose.

The table is read again, with the run's column kinds, rather than copied into
the run folder: the user's file stays the one source, and a changed file is
caught by its sha256 instead of silently giving other rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import sha256_file
from duet.data.tabular.read import TableData, read_table
from duet.data.tabular.schema import ColumnSchema, Table, take
from duet.data.tabular.spec import TabularSpec, transform
from duet.errors import RunError
from duet.training.run_info import SPLITS_FILE, is_modality_run, load_best, read_modality_info
from duet.training.tabular_models import build_tabular


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of a tabular run; RunError when the folder is not one."""
    return read_modality_info(run_dir, "tabular")


def is_tabular_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a tabular run (run.json says so)."""
    return is_modality_run(run_dir, "tabular")


def column_kinds(schema: ColumnSchema) -> dict[str, str]:
    """Every non-target column's kind: reading a file with these gives the run's typed table."""
    return {c.name: c.kind for c in schema.columns if c.name != schema.target}


def reread(path: Path, sha256: str, schema: ColumnSchema) -> TableData:
    """The run's table file read again with its kinds; RunError when the file changed or is gone."""
    if not path.is_file():
        raise RunError(f"the run's table '{path}' is gone; it is needed to read the run's split rows")
    if sha256_file(path) != sha256:
        raise RunError(f"the run's table '{path}' changed since training (sha256 differs); its split rows are lost")
    return read_table(path, schema.target, column_kinds(schema))


def load_split_tables(run_dir: Path) -> dict[str, Table]:
    """``{"train", "val", "test"}`` -> the run's rows of each split (a split may have 0 rows)."""
    info = read_run_info(run_dir)
    schema = ColumnSchema.from_dict(info["columns"])
    source = info["source"]
    splits = json.loads((Path(run_dir) / SPLITS_FILE).read_text(encoding="utf-8"))
    data = reread(Path(source["data"]), source["sha256"], schema)
    tables = {name: take(data.table, np.asarray(splits[name], dtype=np.int64)) for name in ("train", "val", "test")}
    if source.get("val_data"):
        tables["val"] = reread(Path(source["val_data"]), source["val_sha256"], schema).table
    return tables


def load_tabular_model(run_dir: Path) -> tuple[torch.nn.Module, TabularSpec, ColumnSchema, list[str]]:
    """The run's best weights in eval mode on the CPU, with its spec, schema and labels."""
    info = read_run_info(run_dir)
    spec = TabularSpec.from_dict(info["tabular_spec"])
    schema = ColumnSchema.from_dict(info["columns"])
    labels = [str(x) for x in info["labels"]]
    model = build_tabular(str(info["model"]), spec, len(labels))
    return load_best(model, run_dir), spec, schema, labels


def features(spec: TabularSpec, table: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's two inputs for ``table`` (``spec.transform`` as tensors)."""
    numeric, categorical = transform(spec, table)
    return torch.from_numpy(numeric), torch.from_numpy(categorical)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, spec: TabularSpec, table: Mapping[str, np.ndarray]) -> np.ndarray:
    """Class probabilities float32 ``[N, classes]``: softmax of ``model`` on the table's features."""
    was_training = model.training
    model.eval()
    numeric, categorical = features(spec, table)
    device = next(model.parameters()).device
    probabilities = torch.softmax(model(numeric.to(device), categorical.to(device)).float(), dim=1)
    model.train(was_training)
    return probabilities.cpu().numpy()
