"""The epochs of a run whose data fit in memory as tensors (tables; text): the image
trainer's parts, without a loader.

A table is two tensors (``spec.transform``), a text corpus one tensor of token
ids, so there is no loader here: an epoch is a seeded permutation of the training rows cut by the same
batch plan as images (``contract.plan_sizes``: no batch below half a batch, for
BatchNorm). Everything else is shared with image training: ``train_step`` (the
non-finite loss/gradient guards), the warm-up + cosine schedule, checkpoints
(last.pt, best.safetensors, written atomically), ``LoopState`` (so a resume
continues from the exact batch: the permutation depends on (seed, epoch) only,
and the RNG states are in last.pt), SIGINT/SIGTERM handling, metrics.jsonl and
the epoch line, early stopping, eval/curves.png and the tracker.

The best epoch is the one with the highest validation accuracy, ties broken by
the lower validation loss: validation sets of tables are often small (36 rows
for wine), where accuracy plateaus early and the first epoch to reach the
plateau is rarely the best model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from duet.artifacts.run_dir import RunPaths
from duet.data.contract import plan_sizes
from duet.errors import Interrupted, TrainingDiverged
from duet.system.progress import make_progress
from duet.training import checkpoint, faults, recipe
from duet.training.curves import write_curves
from duet.training.precision import FP32
from duet.training.records import append_metrics, epoch_line
from duet.training.schedule import warmup_cosine
from duet.training.state import Log, LoopState, Tracker
from duet.training.step import cross_entropy, train_step

EVAL_CHUNK = 8192  # rows per forward pass when validating


class FitSettings(Protocol):
    """The settings the in-memory trainer reads (``TableConfig`` and the text config have them)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    patience: int
    seed: int
    max_bad_steps: int

    def to_yaml_dict(self) -> dict[str, Any]: ...


@dataclass
class SplitTensors:
    """One split as the model's inputs (``model(*inputs)``) and the class indices."""

    inputs: tuple[torch.Tensor, ...]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows(self, index: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(t[index] for t in self.inputs), self.y[index]


class MemoryTrainer:
    """One run's model, optimiser, schedule and counters (``state``), and ``fit``."""

    def __init__(
        self,
        config: FitSettings,
        paths: RunPaths,
        model: torch.nn.Module,
        splits: dict[str, SplitTensors],
        num_classes: int,
        *,
        progress: bool,
        log: Log,
        tracker: Tracker | None = None,
    ) -> None:
        self.config, self.paths, self.splits = config, paths, splits
        self.progress, self.log, self.tracker = progress, log, tracker
        self.model = model
        self.state = LoopState()  # the schedule reads state.lr_scale: never replace this object
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sizes = plan_sizes(
            len(splits["train"]), batch_size=min(config.batch_size, len(splits["train"])), drop_last=False
        )
        total = len(self.sizes) * config.epochs
        warmup = int(round(config.warmup_epochs * len(self.sizes)))
        state = self.state
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: state.lr_scale * warmup_cosine(s, total=total, warmup=warmup)
        )
        counts = np.bincount(splits["train"].y.cpu().numpy(), minlength=num_classes).tolist()
        ratio = max(counts) / max(1, min(counts))
        weight = recipe.class_weights(counts).to(splits["train"].y.device) if ratio >= 3 else None
        if weight is not None:
            log(f"class imbalance {ratio:.1f}:1 -> class-weighted loss")
        self.loss_fn = cross_entropy(config.label_smoothing, weight)
        self.stopped_early, self.resumed = False, False
        self.rows_trained, self.train_seconds = 0, 0.0
        self.last_row: dict[str, Any] = {}

    # -- checkpoints ---------------------------------------------------------------

    def snapshot(self, finished: bool = False) -> dict[str, Any]:
        """checkpoints/last.pt: everything ``--resume`` needs."""
        return {
            "model": checkpoint.weights_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "loop": asdict(self.state),
            "finished": finished,
            "config": self.config.to_yaml_dict(),
            "precision": FP32.to_dict(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_state(saved["rng"])
        for k, v in saved["loop"].items():
            setattr(self.state, k, v)
        self.resumed = True

    # -- the loop ------------------------------------------------------------------

    def fit(self) -> None:
        """The epochs left (the caller measures the test split and writes run.json's final form)."""
        config, state = self.config, self.state
        if self.tracker is not None:
            self.tracker.start(self.paths.root, config.to_yaml_dict(), self.resumed)
        try:
            with make_progress(self.progress) as bar, faults.stop_signals() as stop:
                while state.epoch <= config.epochs and not self.stopped_early:
                    seconds, rows = self._train_epoch(bar, stop)
                    self._end_epoch(seconds, rows)
        except BaseException as e:
            if self.tracker is not None:
                self.tracker.stopped("KILLED" if isinstance(e, Interrupted | KeyboardInterrupt) else "FAILED")
            raise
        write_curves(self.paths.root)

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training rows: a function of (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.splits["train"]), generator=generator)

    def _train_epoch(self, bar: Any, stop: dict[str, str]) -> tuple[float, int]:
        """The rest of the current epoch's batches; a stop request checkpoints and raises."""
        state, train = self.state, self.splits["train"]
        self.model.train()
        order = self._order(state.epoch).to(train.y.device)
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        task = bar.add_task(
            f"epoch {state.epoch}/{self.config.epochs}", total=len(self.sizes), completed=state.step_in_epoch, info=""
        )
        t0, seen_before = time.perf_counter(), state.seen
        while state.step_in_epoch < len(self.sizes):
            i = state.step_in_epoch
            x, y = train.rows(order[int(starts[i]) : int(starts[i + 1])])
            result = train_step(self.model, self.optimizer, x, y, loss_fn=self.loss_fn, precision=FP32)
            if result.stepped:
                state.loss_sum += result.loss * len(y)
                state.seen += len(y)
            else:
                self._count_bad_step()
            self.scheduler.step()
            state.global_step += 1
            state.step_in_epoch += 1
            bar.update(task, advance=1, info=f"loss {state.loss_sum / max(state.seen, 1):.4f}")
            if stop:
                checkpoint.save_last(self.paths.last, self.snapshot())
                bar.remove_task(task)
                raise faults.interrupted(stop, state, self.paths.root)
        bar.remove_task(task)
        return time.perf_counter() - t0, state.seen - seen_before

    def _count_bad_step(self) -> None:
        state = self.state
        state.bad_steps += 1
        state.epoch_bad_steps += 1
        if state.bad_steps > self.config.max_bad_steps:
            raise TrainingDiverged(
                f"{state.bad_steps} steps had a non-finite loss (limit {self.config.max_bad_steps}); stopped at "
                f"epoch {state.epoch}. Lower --lr or check the data for huge values"
            )

    def _end_epoch(self, seconds: float, rows: int) -> None:
        """Validate, keep the best weights, checkpoint and record the epoch."""
        config, state = self.config, self.state
        self.rows_trained += rows
        self.train_seconds += seconds
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": state.loss_sum / max(state.seen, 1),
            "lr": max(g["lr"] for g in self.optimizer.param_groups),
            "train_images": state.seen,  # rows: the key images use, so curves and trackers read one schema
            "images_per_s": rows / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            "load_failures": 0,
            "bad_steps": state.epoch_bad_steps,
            "micro_batches": 1,
        }
        if len(self.splits.get("val", ())):
            row.update(evaluate_split(self.model, self.splits["val"], "val"))
        improved = self._track_best(row.get("val_accuracy"), row.get("val_loss"))
        append_metrics(self.paths.metrics, row)
        if self.tracker is not None:
            self.tracker.epoch(row)
        state.epoch += 1
        state.step_in_epoch, state.loss_sum, state.seen, state.epoch_bad_steps = 0, 0.0, 0, 0
        self.stopped_early = bool(config.patience) and state.stale_epochs >= config.patience
        checkpoint.save_last(self.paths.last, self.snapshot(finished=state.epoch > config.epochs or self.stopped_early))
        self.last_row = row
        self.log(epoch_line(row, config.epochs, improved).replace(" img/s", " rows/s"))
        if self.stopped_early:
            self.log(f"early stop: no val improvement for {config.patience} epochs (best epoch {state.best_epoch})")

    def _track_best(self, acc: float | None, loss: float | None) -> bool:
        """Higher val accuracy, or equal accuracy and lower val loss: save best.safetensors."""
        state = self.state
        improved = (
            state.best_val_accuracy is None
            or acc is None
            or acc > state.best_val_accuracy
            or (acc == state.best_val_accuracy and loss is not None and loss < (state.best_val_loss or float("inf")))
        )
        if improved:
            state.best_val_accuracy, state.best_val_loss, state.best_epoch = acc, loss, state.epoch
            state.stale_epochs = 0
            checkpoint.save_weights(self.paths.best, checkpoint.weights_state(self.model))
        else:
            state.stale_epochs += 1
        return improved


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, split: SplitTensors, name: str) -> dict[str, float]:
    """``{name}_loss``, ``{name}_accuracy``, ``{name}_images`` (rows) of ``model`` on one split."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(split), EVAL_CHUNK):
        index = torch.arange(start, min(start + EVAL_CHUNK, len(split)), device=split.y.device)
        x, y = split.rows(index)
        logits = model(*x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(split), 1)
    return {f"{name}_loss": loss / n, f"{name}_accuracy": correct / n, f"{name}_images": len(split)}
