"""The run directory: the contract between training and every later stage.

```
runs/<name>/
  config.yaml        resolved TrainConfig
  run.json           labels, model name, preprocessing spec, precision (resolved), best epoch/metric, versions
  manifest.csv       every input file: label, sha256, status, reason, split
  data_report.json   counts per class and split, skipped files and why, duplicates
  metrics.jsonl      one line per epoch
  checkpoints/       last.pt (full state, for --resume), best.safetensors (weights only)
  profile/           the drift reference (duet.monitor.profile), written by the caller after training
  eval/              curves.png (loss, val accuracy, lr per epoch; after training and on evaluate),
                     report.json, report.md, confusion_matrix.png (duet evaluate)
  export/            the model folder (duet.artifacts.model_package), by default
  retrain/           comparison.json/.md when the run is a challenger (duet retrain)
```
A run is never overwritten: creating one with an existing name is an error.
A new run that fails before its first checkpoint removes its folder, so the name
stays free (``duet.training.loop``). The folder is written atomically, file by
file (``duet.system.atomic``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from duet.data.preprocess import PreprocessSpec
from duet.errors import RunError
from duet.system.atomic import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def eval(self) -> Path:
        return self.root / "eval"


@dataclass(frozen=True)
class RunInfo:
    """What a later stage needs to use a trained model (from run.json)."""

    paths: RunPaths
    model: str
    labels: list[str]
    preprocess: PreprocessSpec
    data_dir: Path
    best: dict[str, Any]
    # run.json "precision": {"name", "requested", "reason"} as training resolved it ({} for older runs)
    precision: dict[str, Any] = field(default_factory=dict)
    norm: str = "batch"  # "group": BatchNorm replaced by GroupNorm (a DP-SGD run; duet.training.models.build)
    privacy: dict[str, Any] | None = None  # run.json "privacy": the DP-SGD record, None without DP

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.") or "run"


def create_run_dir(out: Path, name: str | None, model: str) -> RunPaths:
    """Make a new, empty run folder. An explicit name that exists is an error;
    a generated name gets a numeric suffix instead."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if name is not None:
        root = out / name
        try:
            root.mkdir()
        except FileExistsError:
            raise RunError(
                f"run '{root}' already exists and runs are never overwritten; "
                f"pick another --name, or continue it with --resume {root}"
            ) from None
        return RunPaths(root)
    base = f"{datetime.now():%Y%m%d-%H%M%S}-{slug(model)}"
    for i in range(1, 1000):
        root = out / (base if i == 1 else f"{base}-{i}")
        try:
            root.mkdir()
            return RunPaths(root)
        except FileExistsError:
            continue
    raise RunError(f"could not create a new run folder under '{out}'")


def write_config(paths: RunPaths, config: dict[str, Any]) -> None:
    write_text_atomic(paths.config, yaml.safe_dump(config, sort_keys=False))


def read_config(paths: RunPaths) -> dict[str, Any]:
    if not paths.config.is_file():
        raise RunError(f"'{paths.root}' has no config.yaml; is it a duet run folder?")
    return yaml.safe_load(paths.config.read_text(encoding="utf-8"))


def write_info(paths: RunPaths, info: dict[str, Any]) -> None:
    write_json_atomic(paths.info, info)


def load_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Open a finished (or in-progress) run for evaluation or prediction."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunError(f"run folder '{root}' does not exist; pass a folder made by `duet train` (e.g. runs/<name>)")
    paths = RunPaths(root)
    if not paths.info.is_file():
        raise RunError(f"'{root}' is not a duet run (no run.json); pass a folder made by `duet train`")
    try:
        d = json.loads(paths.info.read_text(encoding="utf-8"))
        info = RunInfo(
            paths=paths,
            model=d["model"],
            labels=list(d["labels"]),
            preprocess=PreprocessSpec.from_dict(d["preprocess"]),
            data_dir=Path(d["data_dir"]),
            best=d.get("best") or {},
            precision=dict(d.get("precision") or {}),
            norm=str(d.get("norm") or "batch"),
            privacy=d.get("privacy"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"'{paths.info}' is damaged ({type(e).__name__}: {e}); re-run `duet train`") from e
    if not paths.best.is_file():
        raise RunError(
            f"run '{root}' has no trained weights yet ({paths.best.relative_to(root)} is missing); "
            f"finish it with `duet train --resume {root}`"
        )
    return info
