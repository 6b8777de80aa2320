"""Drift of a tabular model's traffic: a rolling window of recent rows against ``profile/tabular.json``.

The server records every predicted batch (``observe``: the request's table, as
``duet.data.tabular.schema`` holds it, and the model's probabilities); a
verdict on the window is computed on demand (``report``), per column and on the
model's outputs, by :func:`duet.monitor.tabular_drift.compare_table`::

    watch = TableDriftWatch.from_package(package)     # None: the folder has no tabular profile
    watch.observe(table, probabilities)                # per batch, any thread, ~microseconds
    watch.report()                                     # {"status", "drift", "columns": [...], ...}

``observe`` copies the batch's feature columns under a lock and drops the
oldest rows beyond ``window``; ``report`` snapshots the window under the lock
and runs the tests outside it (measured on a busy 2-core machine: 25 µs to
observe 8 rows; 50 ms to report on 500 rows of 7 columns, 60 ms for 30 numeric
columns: call it off the event loop). numpy + scipy only, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from duet.artifacts.model_package import ModelPackage
from duet.errors import ConfigError
from duet.monitor.tabular_drift import compare_table
from duet.monitor.tabular_profile import PROFILE_FILE, NumericReference, TabularDriftSettings, TabularProfile
from duet.serve.rolling_window import RollingWindow, listed_profile

DEFAULT_WINDOW = 500


@dataclass(frozen=True)
class _Batch:
    table: dict[str, np.ndarray]
    probabilities: np.ndarray

    def __len__(self) -> int:
        return len(self.probabilities)

    def tail(self, rows: int) -> _Batch:
        return _Batch({k: v[-rows:] for k, v in self.table.items()}, self.probabilities[-rows:])


class TableDriftWatch:
    """A bounded, thread-safe window of a tabular model's recent rows and the drift verdict on it.

    Args:
        profile: the model's reference (``profile/tabular.json``).
        window: how many recent rows are compared.
        settings: the verdict's thresholds [default: the profile's].
    """

    def __init__(
        self, profile: TabularProfile, *, window: int = DEFAULT_WINDOW, settings: TabularDriftSettings | None = None
    ) -> None:
        if window < 2:
            raise ConfigError(f"`window` must be at least 2 rows. Received: window={window!r}")
        self.profile = profile
        self.window = window
        self.settings = settings or profile.settings
        self._window: RollingWindow[_Batch] = RollingWindow(window)

    @classmethod
    def from_package(cls, package: ModelPackage, *, window: int = DEFAULT_WINDOW) -> TableDriftWatch | None:
        """The watch of a model folder whose ``profile/tabular.json`` is listed (and so checked)
        in model.json; None when it has none."""
        path = listed_profile(package, PROFILE_FILE)
        return None if path is None else cls(TabularProfile.load(path), window=window)

    @property
    def seen(self) -> int:
        """Rows observed since the watch started (or was reset)."""
        return self._window.seen

    @property
    def rows(self) -> int:
        """Rows in the window now (at most ``window``)."""
        return self._window.rows

    def observe(self, table: Mapping[str, np.ndarray], probabilities: np.ndarray) -> None:
        """Record one predicted batch: its feature columns and the model's probabilities (N, classes).

        A feature column the table lacks is recorded as missing in every row.
        Raises ValueError when the columns and probabilities differ in length."""
        probs = np.asarray(probabilities, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.profile.labels):
            raise ValueError(f"probabilities must be (N, {len(self.profile.labels)}); got {probs.shape}")
        n = len(probs)
        kept: dict[str, np.ndarray] = {}
        for ref in self.profile.columns:
            column = table.get(ref.name)
            if column is None:
                numeric = isinstance(ref, NumericReference) or ref.kind == "boolean"
                column = np.full(n, np.nan) if numeric else np.full(n, None, dtype=object)
            if len(column) != n:
                raise ValueError(f"column {ref.name!r} has {len(column)} rows, the probabilities {n}")
            kept[ref.name] = np.array(column[-self.window :], copy=True)
        batch = _Batch(kept, probs[-self.window :].copy())
        self._window.add(batch, n)

    def snapshot(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Copies of the window's rows: ``(table, probabilities)``, oldest first."""
        batches = self._window.batches()
        if not batches:
            names = [c.name for c in self.profile.columns]
            return {name: np.zeros(0) for name in names}, np.zeros((0, len(self.profile.labels)), np.float32)
        table = {name: np.concatenate([b.table[name] for b in batches]) for name in batches[0].table}
        return table, np.concatenate([b.probabilities for b in batches])

    def report(self) -> dict[str, Any]:
        """The verdict on the window now (``TabularDriftResult.to_dict()`` + ``window``, ``seen``)."""
        table, probabilities = self.snapshot()
        result = compare_table(self.profile, table, probabilities, self.settings)
        return {**result.to_dict(), "window": self.window, "seen": self._window.seen}

    def reset(self) -> None:
        """Empty the window (e.g. after a new model is swapped in)."""
        self._window.clear()
