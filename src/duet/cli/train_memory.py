"""What `duet train`'s table and text sides (``train_table``, ``train_text``) share:
the refusal of image-only flags, the flags-to-config overrides, and the parts of
the one-screen summary that do not depend on the modality."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.table import Table

from duet.cli.common import pct, print_json
from duet.errors import ConfigError

if TYPE_CHECKING:
    from duet.training.state import TrainResult

# `duet train` flags a table's or text's run takes (the rest are image-only; text adds text_column)
MEMORY_FLAGS = {
    "data_dir", "config", "model", "epochs", "batch_size", "lr", "val_split", "test_split", "seed", "device",
    "patience", "data_backend", "track", "out_dir", "name", "resume", "as_json", "quiet", "target", "val_data",
}  # fmt: skip
# the config keys both modalities take straight from a flag of the same name
SHARED_CONFIG_KEYS = ["model", "epochs", "batch_size", "lr", "val_split", "test_split", "seed", "device", "patience"]
SHARED_CONFIG_KEYS += ["data_backend", "track", "name", "target", "val_data"]


def config_overrides(
    flags: dict[str, Any], allowed: set[str], keys: list[str], what: str, missing: str
) -> dict[str, Any]:
    """The config values the flags set (``keys``, and data, out); image-only flags (not in ``allowed``) are an error.

    ``what``: the modality in the refusal ("a table", "text"); ``missing``: the message without DATA."""
    image_only = sorted("--" + k.replace("_", "-") for k, v in flags.items() if v is not None and k not in allowed)
    image_only = [f for f in image_only if f not in ("--hflip", "--ema")] + [
        f"--{k}/--no-{k}" for k in ("hflip", "ema") if flags.get(k) is not None
    ]
    if image_only:
        raise ConfigError(f"{' '.join(image_only)}: image settings, not used for {what}; remove them")
    if flags["data_dir"] is None and flags["config"] is None:
        raise ConfigError(missing)
    overrides = {key: flags.get(key) for key in keys}
    overrides["data"] = flags["data_dir"]
    overrides["out"] = flags["out_dir"]
    return overrides


def read_info(result: TrainResult) -> dict[str, Any]:
    """The finished run's run.json."""
    info: dict[str, Any] = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    return info


def summary_head(result: TrainResult, info: dict[str, Any]) -> dict[str, Any]:
    """The first keys of `duet train --json` for a table or text run."""
    return {
        "run": str(result.run_dir),
        "model": info["model"],
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "test_accuracy": result.test.get("test_accuracy"),
    }


def print_json_or_table(summary: dict[str, Any], as_json: bool, title: str) -> Table | None:
    """Prints ``summary`` as JSON (and returns None), or returns the table the summary goes in."""
    if as_json:
        print_json(summary)
        return None
    return Table(title=title, show_header=False, box=None)


def head_rows(t: Table, result: TrainResult, info: dict[str, Any], counts: dict[str, int], label: str) -> None:
    """The run, its split sizes (``counts``, named ``label``: rows, documents) and the accuracies."""
    t.add_row("run", str(result.run_dir))
    t.add_row(label, f"{counts['train']} train / {counts['val']} val / {counts['test']} test")
    t.add_row(
        "best val accuracy",
        f"{pct(result.best_val_accuracy)} ({info['model']}, epoch {result.best_epoch}/{result.epochs}; "
        "validation chose the epoch, so this is optimistic)",
    )
    if result.test:
        t.add_row("test accuracy", f"[bold]{pct(result.test['test_accuracy'])}[/] on {counts['test']} held-out {label}")


def baseline_text(baseline: dict[str, Any]) -> str:
    """The baseline's accuracies: "val X" and, with a test split, ", test Y"."""
    text = f"val {pct(baseline.get('val_accuracy'))}"
    if "test_accuracy" in baseline:
        text += f", test {pct(baseline['test_accuracy'])}"
    return text


def tail_rows(t: Table, result: TrainResult, next_step: str) -> None:
    """The early stop (when it happened) and what to run next."""
    if result.stopped_early:
        t.add_row("early stop", f"no improvement for the patience window; best epoch {result.best_epoch}")
    t.add_row("next", f"{next_step} {result.run_dir}")
