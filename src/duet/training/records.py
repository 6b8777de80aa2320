"""The run's own records, beside its checkpoints: run.json (what was trained, the
best epoch, events and load failures; ``duet.artifacts.run_dir`` owns the folder
contract) and metrics.jsonl (one line per finished epoch, fsynced).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import duet
from duet.artifacts.run_dir import RunPaths, write_info
from duet.data.scan import Manifest
from duet.system.atomic import write_text_atomic
from duet.training.config import TrainConfig
from duet.training.precision import Precision
from duet.training.state import Log, LoopState


def library_versions() -> dict[str, str]:
    import timm
    import torch

    return {
        "duet": duet.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def run_info(
    config: TrainConfig,
    manifest: Manifest,
    best: dict[str, Any],
    precision: Precision,
    privacy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """run.json's content; ``best`` is {} until the first epoch ends (see ``best_record``);
    ``privacy``: the DP-SGD record (``duet.training.privacy.Private.record``) of a DP run."""
    info = {
        "model": config.model,
        "norm": "group" if config.dp is not None else "batch",
        "labels": manifest.labels,
        "num_classes": len(manifest.labels),
        "preprocess": config.preprocess().to_dict(),
        "precision": precision.to_dict(),
        "data_dir": str(manifest.data_dir),
        "best": best,
        "versions": library_versions(),
    }
    if privacy is not None:
        info["privacy"] = privacy
    return info


def best_record(state: LoopState, *, epochs_done: int, stopped_early: bool) -> dict[str, Any]:
    """run.json's "best": the epoch validation chose, and what happened on the way."""
    return {
        "epoch": state.best_epoch,
        "val_accuracy": state.best_val_accuracy,
        "epochs_done": epochs_done,
        "stopped_early": stopped_early,
        "events": state.events,
        "load_failures": state.load_failures[:100],
    }


def catch_up_run_info(
    paths: RunPaths, config: TrainConfig, manifest: Manifest, loop: LoopState, precision: Precision, log: Log
) -> None:
    """A run killed after its last checkpoint was saved but before run.json was
    rewritten finished training, yet its run.json counts an epoch fewer (and the
    registry refuses to promote it). Bring run.json up to the checkpoint."""
    done = loop.epoch - 1
    try:
        recorded = int((json.loads(paths.info.read_text(encoding="utf-8")).get("best") or {}).get("epochs_done") or 0)
    except (OSError, ValueError):
        recorded = 0
    if recorded < done:
        stopped_early = bool(config.patience) and loop.stale_epochs >= config.patience
        best = best_record(loop, epochs_done=done, stopped_early=stopped_early)
        write_info(paths, run_info(config, manifest, best, precision, _recorded_privacy(paths)))
        log(f"run.json recorded {recorded} of {done} finished epochs (interrupted while writing); brought up to date")


def keep_metrics_until(path: Path, epoch: int) -> None:
    """On resume, drop metric lines of epochs after the checkpoint (they will be redone)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    write_text_atomic(path, "".join(ln + "\n" for ln in lines))


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def epoch_line(row: dict[str, Any], epochs: int, is_best: bool) -> str:
    """The one line logged per epoch."""
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_accuracy" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {100 * row['val_accuracy']:.2f}%"]
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.0f} img/s", f"{row['epoch_seconds']:.1f}s"]
    if row["load_failures"]:
        parts.append(f"{row['load_failures']} load failures")
    if row["bad_steps"]:
        parts.append(f"{row['bad_steps']} non-finite steps skipped")
    if "epsilon" in row:
        parts.append(f"ε {row['epsilon']:.2f}")
    return "  ".join(parts) + ("  *best" if is_best else "")


def _recorded_privacy(paths: RunPaths) -> dict[str, Any] | None:
    """run.json's DP record as last written (kept when run.json is caught up)."""
    try:
        return json.loads(paths.info.read_text(encoding="utf-8")).get("privacy")
    except (OSError, ValueError):
        return None
