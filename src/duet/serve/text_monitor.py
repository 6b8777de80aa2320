"""Drift of a served text model: :class:`~duet.serve.text_drift_watch.TextDriftWatch` behind the
server's routes and gauges.

The tabular server's monitor (:class:`duet.serve.tabular_monitor.TableMonitor`)
with a window of documents: every predicted batch is observed on the event loop
(references and copies, microseconds), a background task computes the verdict
every ``--drift-interval`` seconds in a worker thread, and publishes it on the
same gauges, one ``detector`` label per test (``oov_rate``, ``length``,
``predicted_class``, ``confidence``, ``embedding``; Holm-adjusted p-values):
``duet_drift_detected``, ``duet_drift_insufficient``, ``duet_drift_window_images``
(documents in the window), ``duet_drift_score{detector}``,
``duet_drift_p_value{detector}``, ``duet_drift_evaluations_total``.
``GET /v1/monitor`` answers the latest verdict. Without ``profile/text.json``
in the model folder (or with ``--no-drift``) there is no monitor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from duet.artifacts.model_package import ModelPackage
from duet.serve.tabular_monitor import TableMonitor


class TextMonitor(TableMonitor):
    @classmethod
    def for_package(
        cls, package: ModelPackage, registry: CollectorRegistry, *, window: int, interval: float
    ) -> TextMonitor | None:
        """The monitor of a model folder with a text reference profile, else None."""
        from duet.serve.text_drift_watch import TextDriftWatch  # scipy: only when a profile is there

        watch = TextDriftWatch.from_package(package, window=window)
        return None if watch is None else cls(watch, registry, interval=interval)  # type: ignore[arg-type]

    def observe(self, texts: Sequence[str], probabilities: Any, features: np.ndarray | None = None) -> None:  # type: ignore[override]
        self.watch.observe(texts, probabilities, features)  # type: ignore[call-arg, arg-type]
