"""``duet.train`` for tables: a table file, or a pandas DataFrame, with ``target=``.

``duet.train("data.csv", target="label")`` is ``duet train data.csv --target
label``: the same config (``TableConfig``; any of its settings as keywords), the
same run folder, the same errors. A DataFrame (anything with ``to_csv``) is
first written as ``<out>/<name>.data.csv`` next to the run, as image arrays are
written as a folder (``duet.api.keras_data``), so the run reads, resumes and
reports from a file like any other; ``val=`` may be a second file or frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from duet.data.tabular.read import is_table_file
from duet.errors import ConfigError, RunError
from duet.system.atomic import write_text_atomic
from duet.training.state import Log, TrainResult


def is_table_data(data: Any, settings: dict[str, Any]) -> bool:
    """Whether ``duet.train(data, **settings)`` is asked to train on a table."""
    if "target" in settings or _is_frame(data):
        return True
    return isinstance(data, (str, os.PathLike)) and is_table_file(Path(data))


def _is_frame(data: Any) -> bool:
    return hasattr(data, "to_csv") and hasattr(data, "columns")


def train_table_api(
    data: Any, val: Any, settings: dict[str, Any], *, name_for: Any, progress: bool, log: Log
) -> TrainResult:
    """Train a tabular run from ``data`` (file or frame), ``val`` (None, file or frame) and
    ``settings`` (``TableConfig`` fields); writes the drift profile, like ``duet train``.

    ``name_for(out, model)``: a fresh run name, used when a frame must be written first."""
    from duet.data.tabular.checks import read_trainable_table
    from duet.training.tabular_config import build_table_config

    if settings.get("target") is None:
        raise ConfigError("a table needs its target column: duet.train('data.csv', target='label')")
    for key in ("data", "val_data"):
        if key in settings:
            raise ConfigError(f"pass the table as train's first argument (and val=), not as {key}=")
    config = build_table_config(None, {**settings, "data": "-"}, source="duet.train()")
    name = config.name
    if _is_frame(data) or _is_frame(val):
        name = name or name_for(config.out, config.model)
        if (Path(config.out) / name).exists():
            raise RunError(f"run '{Path(config.out) / name}' already exists and runs are never overwritten")
    files = {"data": _as_file(data, config.out, name, ""), "val_data": _as_file(val, config.out, name, ".val")}
    config = config.model_copy(update={**files, "name": name})
    table = read_trainable_table(config.data, config.target, config.columns, log)
    from duet.monitor.profile import ensure_profile
    from duet.tracking import sink_for
    from duet.training.tabular_fit import train_table  # torch: only once the table is known good

    result = train_table(config, progress=progress, log=log, tracker=sink_for(config.track, config.out), data=table)
    ensure_profile(result.run_dir, progress=progress, log=log)
    return result


def _as_file(data: Any, out: Path, name: str | None, suffix: str) -> Path | None:
    """A file path as given, or a frame written to ``<out>/<name><suffix>.data.csv`` (atomically)."""
    if data is None:
        return None
    if not _is_frame(data):
        return Path(data)
    path = Path(out) / f"{name}{suffix}.data.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, data.to_csv(index=False))
    return path
