"""The parts of an in-memory run's life that do not depend on the modality: what
``--resume`` checks before continuing, and the finish after the epochs (best
weights back, the test split once, the ``TrainResult``).

``duet.training.tabular_fit`` and ``text_fit`` use them around ``MemoryTrainer``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from duet.artifacts.run_dir import RunPaths, read_config, write_config, write_info
from duet.errors import RunError, RunFinished
from duet.system.atomic import write_json_atomic
from duet.training import checkpoint
from duet.training.memory_trainer import FitSettings, MemoryTrainer, SplitTensors, evaluate_split
from duet.training.precision import FP32
from duet.training.run_info import SPLITS_FILE
from duet.training.state import Log, LoopState, Tracker, TrainResult

C = TypeVar("C")


def best_so_far(state: LoopState, epochs_done: int, stopped_early: bool) -> dict[str, Any]:
    """run.json's "best": the epoch validation chose and what happened on the way."""
    return {
        "epoch": state.best_epoch,
        "val_accuracy": state.best_val_accuracy,
        "val_loss": state.best_val_loss,
        "epochs_done": epochs_done,
        "stopped_early": stopped_early,
        "events": state.events,
    }


def resume_point(
    paths: RunPaths, epochs: int | None, from_dict: Callable[[dict[str, Any], str], C]
) -> tuple[C, dict[str, Any]]:
    """The run's config and checkpoints/last.pt, ready to continue; RunFinished when there is nothing left.

    ``epochs``: a new total, more than the epochs done (extends a finished run too; config.yaml is updated).
    ``from_dict``: the modality's config parser (``text_config_from_dict``, ...)."""
    config: Any = from_dict(read_config(paths), str(paths.config))
    saved = checkpoint.load_last(paths.last)
    done = int(saved["loop"]["epoch"]) - 1
    finished = bool(saved.get("finished"))
    if epochs is not None:
        if epochs <= done:
            raise RunError(f"--epochs {epochs} is not more than the {done} epochs '{paths.root}' has done")
        config = config.model_copy(update={"epochs": epochs})
        write_config(paths, config.to_yaml_dict())
        saved["finished"] = finished = False
    if finished:
        raise RunFinished(
            f"run '{paths.root}' already finished ({done} of {config.epochs} epochs); nothing to resume. "
            f"To train it longer: duet train --resume {paths.root} --epochs N (N > {done})",
            str(paths.root),
        )
    return config, saved


def finish(trainer: MemoryTrainer, started: float) -> tuple[TrainResult, dict[str, Any]]:
    """After ``trainer.fit()``: the best weights loaded back, the test split measured once.

    Returns the result and run.json's ``best`` (with the test numbers when there is a test split)."""
    state, splits = trainer.state, trainer.splits
    best = best_so_far(state, state.epoch - 1, trainer.stopped_early)
    trainer.model.load_state_dict(checkpoint.load_weights(trainer.paths.best))
    test: dict[str, Any] = {}
    if len(splits["test"]):
        test = evaluate_split(trainer.model, splits["test"], "test")
        best |= {"selected_on": "val", **test}
    result = TrainResult(
        run_dir=trainer.paths.root,
        epochs=trainer.config.epochs,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_val_accuracy,
        last=trainer.last_row,
        seconds=time.perf_counter() - started,
        train_images_per_s=trainer.rows_trained / max(trainer.train_seconds, 1e-9),
        num_train=len(splits["train"]),
        num_val=len(splits["val"]),
        stopped_early=trainer.stopped_early,
        events=state.events,
        num_test=len(splits["test"]),
        test=test,
        precision=FP32.to_dict(),
    )
    return result, best


def write_new_run(
    paths: RunPaths, config: Any, rows: dict[str, np.ndarray], report: dict[str, Any], info: dict[str, Any], log: Log
) -> None:
    """A new run folder's files before the first epoch: config.yaml, splits.json, the data report, run.json."""
    write_config(paths, config.to_yaml_dict())
    write_json_atomic(paths.root / SPLITS_FILE, {k: v.tolist() for k, v in rows.items()})
    write_json_atomic(paths.data_report, report)
    write_info(paths, info)
    log(f"run folder: {paths.root}")


def run_epochs(
    config: FitSettings,
    paths: RunPaths,
    model: torch.nn.Module,
    tensors: dict[str, SplitTensors],
    num_classes: int,
    saved: dict[str, Any] | None,
    progress: bool,
    log: Log,
    tracker: Tracker | None,
) -> tuple[MemoryTrainer, TrainResult, dict[str, Any]]:
    """The epochs (from ``saved`` when resuming), then :func:`finish`: the trainer, the result, run.json's best."""
    trainer = MemoryTrainer(config, paths, model, tensors, num_classes, progress=progress, log=log, tracker=tracker)
    if saved is not None:
        trainer.restore(saved)
        log(f"resuming {paths.root} at epoch {trainer.state.epoch}, batch {trainer.state.step_in_epoch}")
    t0 = time.perf_counter()
    trainer.fit()
    result, best = finish(trainer, t0)
    return trainer, result, best


def baseline_line(name: str, baseline: dict[str, Any], best: dict[str, Any]) -> str:
    """The log line comparing the baseline ``name`` with this model on val (and test)."""
    parts = [f"{name} on the same split: val {100 * baseline.get('val_accuracy', float('nan')):.2f}%"]
    if best.get("val_accuracy") is not None:
        parts.append(f"(this model: {100 * best['val_accuracy']:.2f}%)")
    if "test_accuracy" in baseline:
        parts.append(f"test {100 * baseline['test_accuracy']:.2f}% (this model: {100 * best['test_accuracy']:.2f}%)")
    return " ".join(parts)


def end_run(paths: RunPaths, info: dict[str, Any], tracker: Tracker | None, result: TrainResult) -> TrainResult:
    """run.json with the final numbers, the tracker closed; returns ``result``."""
    write_info(paths, info)
    if tracker is not None:
        tracker.end(result)
    return result
