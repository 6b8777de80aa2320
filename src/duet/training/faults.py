"""What the training loop does when something goes wrong, in one place.

- A non-finite loss (or gradient) skips the step (``duet.training.step``);
  ``rollback_after`` in a row reload the last checkpoint with the learning rate
  times ``rollback_lr_factor``; more than ``max_bad_steps`` in the whole run stop
  it with ``TrainingDiverged`` (exit 6), naming the last good checkpoint.
- CUDA out-of-memory doubles the number of micro-batches and retries the step
  (gradients accumulate, so the effective batch is unchanged), until a
  micro-batch would be a single image.
- SIGINT/SIGTERM set a flag that the loop checks after every step: it writes a
  checkpoint and raises ``Interrupted`` (exit 130) with the command that resumes.
- A sample that fails to load is counted and reported, and stops the run past
  ``max_load_failures`` (``DataError``: the data changed after the scan).

Faults are injected by tests, never by a user's config: ``train(config,
faults=FaultPlan(nan=[7], oom=[2]))`` makes those global steps see NaN inputs
or raise out-of-memory, once each (also when a rollback replays the step).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from duet.data.contract import Sample
from duet.errors import DataError, Interrupted, TrainingDiverged
from duet.system.process import pending_interrupt
from duet.training import checkpoint
from duet.training.config import TrainConfig
from duet.training.state import Log, LoopState
from duet.training.step import StepResult


@dataclass(frozen=True, init=False)
class FaultPlan:
    """Global steps (0-based optimizer steps of the run) at which to inject a fault.
    For tests: ``nan`` poisons the step's inputs, ``oom`` raises ``torch.OutOfMemoryError``."""

    nan: frozenset[int] = frozenset()
    oom: frozenset[int] = frozenset()

    def __init__(self, nan: Iterable[int] = (), oom: Iterable[int] = ()) -> None:
        object.__setattr__(self, "nan", frozenset(nan))
        object.__setattr__(self, "oom", frozenset(oom))


@dataclass
class Injector:
    """Fires each fault of a plan once within one process."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    fired: set[tuple[str, int]] = field(default_factory=set)

    def apply(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Raise the out-of-memory planned for ``step``, else return ``x`` (NaN if planned)."""
        for kind, steps in (("oom", self.plan.oom), ("nan", self.plan.nan)):
            key = (kind, step)
            if step in steps and key not in self.fired:
                self.fired.add(key)
                if kind == "oom":
                    raise torch.OutOfMemoryError("injected out-of-memory (FaultPlan)")
                x = x * float("nan")
        return x


def step_with_oom_retry(
    step: Callable[[torch.Tensor, int], StepResult], x: torch.Tensor, state: LoopState, inject: Injector, log: Log
) -> StepResult:
    """``step(x, micro_batches)``; on out-of-memory double ``state.micro_batches``
    and try again, until a micro-batch would be a single image."""
    while True:
        try:
            x = inject.apply(state.global_step, x)
            return step(x, state.micro_batches)
        except torch.OutOfMemoryError:
            if state.micro_batches >= x.shape[0]:
                raise
            state.micro_batches *= 2
            msg = (
                f"out of memory at step {state.global_step}: now {state.micro_batches} micro-batches of "
                f"~{-(-x.shape[0] // state.micro_batches)} images (gradients accumulate; same effective batch)"
            )
            state.events.append(msg)
            log(msg)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def count_bad_step(state: LoopState, config: TrainConfig, last: Path) -> bool:
    """Count a skipped (non-finite) step; True when it is time to roll back to ``last``.
    Raises ``TrainingDiverged`` past ``max_bad_steps``."""
    state.bad_steps += 1
    state.bad_in_row += 1
    state.epoch_bad_steps += 1
    if state.bad_steps > config.max_bad_steps:
        raise TrainingDiverged(
            f"{state.bad_steps} steps had a non-finite loss (limit {config.max_bad_steps}); "
            f"stopped at epoch {state.epoch}. Lower --lr, enable grad_clip, or check the data"
            + (f"; the last good checkpoint is {last}" if last.is_file() else " (no checkpoint had been written yet)")
        )
    return state.bad_in_row >= config.rollback_after and last.is_file()


def rollback(
    last: Path, restore: Callable[[dict[str, Any]], None], state: LoopState, config: TrainConfig, log: Log
) -> None:
    """Reload the last checkpoint (``restore``) and lower the learning rate, keeping the fault counters."""
    bad, scale, events, micro = state.bad_steps, state.lr_scale, list(state.events), state.micro_batches
    restore(checkpoint.load_last(last))
    state.bad_steps, state.bad_in_row = bad, 0
    state.lr_scale = scale * config.rollback_lr_factor
    state.micro_batches = max(micro, state.micro_batches)
    msg = (
        f"{config.rollback_after} non-finite losses in a row: rolled back to epoch {state.epoch}, "
        f"batch {state.step_in_epoch}, learning rate x{state.lr_scale:g}"
    )
    state.events = events + [msg]
    log(msg)


def count_load_failures(
    state: LoopState, index: list[int], errors: list[str], samples: list[Sample], config: TrainConfig
) -> None:
    """Record the batch's samples that failed to load; ``DataError`` past the epoch's limit."""
    epoch = state.epoch
    for i, err in zip(index, errors):
        if err:
            state.load_failures.append({"path": str(samples[i].path), "reason": err, "epoch": str(epoch)})
            state.epoch_failures += 1
    if state.epoch_failures > max(1, config.max_load_failures * len(samples)):
        last = state.load_failures[-1]
        raise DataError(
            f"{state.epoch_failures} training images failed to load in epoch {epoch} "
            f"(e.g. {last['path']}: {last['reason']}); the data folder changed after the scan; "
            "fix it and resume"
        )


@contextmanager
def stop_signals() -> Iterator[dict[str, str]]:
    """SIGINT/SIGTERM set a flag (``{"signal": name}``) the loop checks after every step."""
    flag: dict[str, str] = {}
    pending = pending_interrupt()  # a SIGINT an import swallowed before the loop began
    if pending is not None:
        flag["signal"] = pending
    handlers = {}

    def handler(signum: int, _frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. called from a server): no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def interrupted(stop: dict[str, str], state: LoopState, run_dir: Path) -> Interrupted:
    """The error a stop request ends the run with (its checkpoint is already written)."""
    return Interrupted(
        f"stopped by {stop.get('signal', 'a signal')} at epoch {state.epoch}, batch {state.step_in_epoch}; "
        f"checkpoint saved. Resume with: duet train --resume {run_dir}"
    )
