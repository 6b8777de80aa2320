"""`duet train data.csv --target label`: the tabular side of `duet train`.

`duet train` hands over here when DATA is a table file (.csv, .tsv, .parquet),
when --target is given, or when --resume names a tabular run. The flags both
modalities share keep their meaning; image-only flags are refused by name rather
than silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from duet.cli.common import out
from duet.cli.train_memory import (
    MEMORY_FLAGS,
    SHARED_CONFIG_KEYS,
    baseline_text,
    config_overrides,
    head_rows,
    print_json_or_table,
    read_info,
    summary_head,
    tail_rows,
)

if TYPE_CHECKING:
    from duet.training.state import Log, TrainResult
    from duet.training.tabular_config import TableConfig

# `duet train` flags a tabular run takes (the rest are image-only)
TABLE_FLAGS = MEMORY_FLAGS


def wants_table(flags: dict[str, Any]) -> bool:
    """Whether `duet train` was given a table (or a tabular run to resume, or a tabular config)."""
    from duet.data.tabular.read import is_table_file

    if flags.get("target") is not None or flags.get("val_data") is not None:
        return True
    if flags.get("data_dir") is not None and is_table_file(Path(flags["data_dir"])):
        return True
    if flags.get("resume") is not None:
        from duet.training.tabular_run import is_tabular_run

        return is_tabular_run(Path(flags["resume"]))
    if flags.get("config") is not None:
        from duet.training.config import load_yaml

        data = load_yaml(Path(flags["config"]))
        return data.get("modality") == "tabular" or "target" in data
    return False


def table_config(flags: dict[str, Any]) -> TableConfig:
    """The run's TableConfig from --config and the flags given; image-only flags are an error."""
    from duet.training.tabular_config import build_table_config

    overrides = config_overrides(
        flags,
        TABLE_FLAGS,
        SHARED_CONFIG_KEYS,
        "a table",
        "missing DATA: pass a table file, e.g. duet train data.csv --target label",
    )
    overrides["modality"] = "tabular"
    return build_table_config(flags["config"], overrides)


def train_table_command(flags: dict[str, Any], log: Log) -> None:
    """Train (or resume) a tabular run, write its drift profile and print the summary."""
    from duet.tracking import sink_for, sink_for_run

    quiet = bool(flags["quiet"])
    if flags["resume"] is not None:
        from duet.training.tabular_fit import resume_table

        run = Path(flags["resume"])
        result = resume_table(run, epochs=flags["epochs"], progress=not quiet, log=log, tracker=sink_for_run(run))
    else:
        from duet.data.tabular.checks import read_trainable_table

        cfg = table_config(flags)
        data = read_trainable_table(cfg.data, cfg.target, cfg.columns, log)  # a bad table fails before torch imports
        from duet.training.tabular_fit import train_table

        result = train_table(cfg, progress=not quiet, log=log, tracker=sink_for(cfg.track, cfg.out), data=data)
    from duet.monitor.profile import ensure_profile

    ensure_profile(result.run_dir, progress=not quiet, log=log)  # RUN/profile/tabular.json: the drift reference
    report_table_train(result, bool(flags["as_json"]))


def report_table_train(result: TrainResult, as_json: bool) -> None:
    """The one-screen summary of a tabular run, or its JSON."""
    info = read_info(result)
    baseline = info.get("baseline") or {}
    summary = summary_head(result, info) | {
        "rows": info["rows"],
        "baseline": baseline or None,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "train_rows_per_s": round(result.train_images_per_s, 1),
        "seconds": round(result.seconds, 1),
        "last_epoch": result.last,
    }
    t = print_json_or_table(summary, as_json, "duet train (table)")
    if t is None:
        return
    head_rows(t, result, info, info["rows"], "rows")
    if baseline:
        t.add_row("HistGradientBoosting", baseline_text(baseline) + " (scikit-learn, default settings, same split)")
    t.add_row("speed", f"{result.train_images_per_s:.0f} train rows/s, {result.seconds:.1f}s total")
    tail_rows(t, result, "duet export")
    out.print(t)
