"""`duet train data.csv --target label`: the tabular side of `duet train`.

`duet train` hands over here when DATA is a table file (.csv, .tsv, .parquet),
when --target is given, or when --resume names a tabular run. The flags both
modalities share keep their meaning; image-only flags are refused by name rather
than silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from duet.cli.common import out, pct, print_json
from duet.errors import ConfigError

if TYPE_CHECKING:
    from duet.training.state import Log, TrainResult
    from duet.training.tabular_config import TableConfig

# `duet train` flags a tabular run takes (the rest are image-only)
TABLE_FLAGS = {
    "data_dir", "config", "model", "epochs", "batch_size", "lr", "val_split", "test_split", "seed", "device",
    "patience", "data_backend", "track", "out_dir", "name", "resume", "as_json", "quiet", "target", "val_data",
}  # fmt: skip
_CONFIG_KEYS = ["model", "epochs", "batch_size", "lr", "val_split", "test_split", "seed", "device", "patience"]
_CONFIG_KEYS += ["data_backend", "track", "name", "target", "val_data"]


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

    image_only = sorted("--" + k.replace("_", "-") for k, v in flags.items() if v is not None and k not in TABLE_FLAGS)
    image_only = [f for f in image_only if f not in ("--hflip", "--ema")] + [
        f"--{k}/--no-{k}" for k in ("hflip", "ema") if flags.get(k) is not None
    ]
    if image_only:
        raise ConfigError(f"{' '.join(image_only)}: image settings, not used for a table; remove them")
    if flags["data_dir"] is None and flags["config"] is None:
        raise ConfigError("missing DATA: pass a table file, e.g. duet train data.csv --target label")
    overrides = {key: flags.get(key) for key in _CONFIG_KEYS}
    overrides["data"] = flags["data_dir"]
    overrides["out"] = flags["out_dir"]
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
    import json

    info = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    baseline = info.get("baseline") or {}
    summary = {
        "run": str(result.run_dir),
        "model": info["model"],
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "test_accuracy": result.test.get("test_accuracy"),
        "rows": info["rows"],
        "baseline": baseline or None,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "train_rows_per_s": round(result.train_images_per_s, 1),
        "seconds": round(result.seconds, 1),
        "last_epoch": result.last,
    }
    if as_json:
        print_json(summary)
        return
    rows = info["rows"]
    t = Table(title="duet train (table)", show_header=False, box=None)
    t.add_row("run", str(result.run_dir))
    t.add_row("rows", f"{rows['train']} train / {rows['val']} val / {rows['test']} test")
    t.add_row(
        "best val accuracy",
        f"{pct(result.best_val_accuracy)} ({info['model']}, epoch {result.best_epoch}/{result.epochs}; "
        "validation chose the epoch, so this is optimistic)",
    )
    if result.test:
        t.add_row("test accuracy", f"[bold]{pct(result.test['test_accuracy'])}[/] on {rows['test']} held-out rows")
    if baseline:
        text = f"val {pct(baseline.get('val_accuracy'))}"
        if "test_accuracy" in baseline:
            text += f", test {pct(baseline['test_accuracy'])}"
        t.add_row("HistGradientBoosting", text + " (scikit-learn, default settings, same split)")
    t.add_row("speed", f"{result.train_images_per_s:.0f} train rows/s, {result.seconds:.1f}s total")
    if result.stopped_early:
        t.add_row("early stop", f"no improvement for the patience window; best epoch {result.best_epoch}")
    t.add_row("next", f"duet export {result.run_dir}")
    out.print(t)
