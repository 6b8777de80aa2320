"""``--track tensorboard``: per-epoch scalars in RUN/tensorboard/ (``tensorboard --logdir runs``).

Every numeric key of the metrics.jsonl row is a scalar with step = epoch; at
the end the best and test numbers are added at the best epoch. Guarded like
the MLflow sink: a failure warns once and turns it off.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

from duet.errors import DuetError
from duet.system.tensorflow_import import import_tensorflow
from duet.tracking.mlflow_sink import epoch_metrics, numeric
from duet.tracking.store import Warner
from duet.training.state import TrainResult

FOLDER = "tensorboard"


class TensorBoardSink:
    """A ``duet.training.state.Tracker`` writing TensorBoard event files."""

    def __init__(self) -> None:
        self.warn = Warner("TensorBoard tracking", extra="tensorboard")
        self.writer: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        self.warn.guard(lambda: self._open(Path(run_dir)))

    def _open(self, run_dir: Path) -> None:
        if importlib.util.find_spec("tensorflow") is not None:
            # tensorboard imports TensorFlow when it is installed: do it the safe way
            # (after torch and triton, start-up noise silenced); without it, its stub.
            with contextlib.suppress(DuetError):
                import_tensorflow()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))

    def epoch(self, row: dict[str, Any]) -> None:
        self.warn.guard(lambda: self._scalars(epoch_metrics(row), row["epoch"]))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def end(self, result: TrainResult) -> None:
        summary = numeric({"best_val_accuracy": result.best_val_accuracy, **result.test})
        self.warn.guard(lambda: self._scalars(summary, result.best_epoch))
        if self.writer is not None:
            self.warn.guard(self.writer.close)

    def stopped(self, status: str) -> None:
        """Training ended without a result: flush and close what was written."""
        if self.writer is not None:
            self.warn.guard(self.writer.close)
