"""The parts of an in-memory run's life that do not depend on the modality: what
``--resume`` checks before continuing, and the finish after the epochs (best
weights back, the test split once, the ``TrainResult``).

``duet.training.text_fit`` uses them around ``MemoryTrainer``; they are written
so a table's run (``tabular_fit``, which has its own copy of these steps) can use
the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from duet.artifacts.run_dir import RunPaths, read_config, write_config
from duet.errors import RunError, RunFinished
from duet.training import checkpoint
from duet.training.memory_trainer import MemoryTrainer, evaluate_split
from duet.training.precision import FP32
from duet.training.state import TrainResult
from duet.training.tabular_fit import best_so_far  # run.json's "best" (tables wrote it first)

C = TypeVar("C")


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
