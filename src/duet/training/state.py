"""What a training run carries from step to step, and what it hands back.

``LoopState`` is the loop's own counters: saved in checkpoints/last.pt as a
plain dict (``asdict``) and read back by ``--resume``, so every field must stay
a plain value. ``TrainResult`` is what ``train``/``resume`` return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Log = Callable[[str], None]


def silent(_: str) -> None:
    """The log of ranks other than 0: only rank 0 speaks."""


@dataclass
class LoopState:
    """The loop's own counters; saved in last.pt as a plain dict."""

    epoch: int = 1  # the epoch in progress (or about to start)
    step_in_epoch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0  # optimizer steps attempted, for the schedule and fault injection
    loss_sum: float = 0.0  # of the epoch in progress
    seen: int = 0  # images of the epoch in progress
    epoch_failures: int = 0
    epoch_bad_steps: int = 0
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None  # tabular runs break accuracy ties on validation loss
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs without val improvement (early stopping)
    bad_steps: int = 0  # non-finite losses, whole run
    bad_in_row: int = 0
    lr_scale: float = 1.0  # lowered by each rollback
    micro_batches: int = 1  # raised by each out-of-memory
    events: list[str] = field(default_factory=list)
    load_failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int
    best_val_accuracy: float | None
    last: dict[str, Any]
    seconds: float
    train_images_per_s: float
    num_train: int
    num_val: int
    load_failures: list[dict[str, str]] = field(default_factory=list)
    stopped_early: bool = False
    events: list[str] = field(default_factory=list)
    num_test: int = 0
    # The held-out test split, evaluated once after training with the best
    # epoch's weights: {"test_accuracy", "test_loss", "test_images"}; {} without one.
    test: dict[str, Any] = field(default_factory=dict)
    # The forward-pass precision and why: {"name", "requested", "reason"} (duet.training.precision).
    precision: dict[str, str] = field(default_factory=dict)


class Tracker(Protocol):
    """Where a run reports as it trains (an experiment tracker: ``duet.tracking``).

    Called by rank 0 only: ``start`` before the first epoch (``resumed`` for
    ``--resume``), ``epoch`` with each metrics.jsonl row once it is written, and
    ``end`` with the result, or ``stopped`` when training ends without one
    (``"KILLED"``: SIGINT/SIGTERM, checkpoint written, resumable; ``"FAILED"``:
    an error). Training never imports a tracker's library; a sink that fails
    must not raise (it warns and stops tracking)."""

    def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def end(self, result: TrainResult) -> None: ...

    def stopped(self, status: str) -> None: ...
