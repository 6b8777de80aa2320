"""Input drift in the server: a window of recent requests compared with the run's reference profile.

When the model folder holds a reference profile (``profile/``, copied from
``RUN/profile`` by ``duet export`` and checked against model.json like every
other file), every inference batch is recorded in a
:class:`duet.monitor.DriftMonitor`: predicted classes, top-1 confidences, the
image statistics computed in the decode pool, and the penultimate features the
ONNX graph returns as its third output (``features``; one forward pass serves
the prediction and the monitoring). Graphs exported before the features output
existed still serve; the embedding and outlier detectors then report
themselves skipped.

A request only appends its rows to a pending list (about a microsecond on the
event loop); they are folded into the window in one vectorised ``add`` (PCA
projection, outlier scores, accuracy scores) in a worker thread, before each
verdict, or at once when a window's worth is pending. On a 32 px model whose
whole request costs ~4 ms, doing that work per request cost 13-20 % of the
throughput (docs/monitoring.md, "Serving cost of monitoring"). A request that
asks for its own outlier scores (``/v1/predict?outliers=true``) gets them
computed for its rows alone (:meth:`DriftWatch.outlier_scores`).

A background task computes the verdict every ``interval`` seconds, off the
request path, and publishes it:

- ``GET /v1/monitor``: the latest verdict (``DriftResult.to_dict()``);
- gauges ``duet_drift_detected``, ``duet_drift_insufficient``,
  ``duet_drift_score{detector}``, ``duet_drift_p_value{detector}``,
  ``duet_drift_outlier_rate``, ``duet_drift_window_images``,
  ``duet_estimated_accuracy{bound="estimate"|"low"|"high"}`` (label-free, from
  calibrated confidences), ``duet_reference_accuracy`` and the counter
  ``duet_drift_evaluations_total`` (alert rules: deploy/prometheus/drift_rules.yml).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from duet.artifacts.model_package import PROFILE_DIR, ModelPackage
from duet.serve.periodic_monitor import GaugeWords, PeriodicMonitor

WORDS = GaugeWords(rows="images", decider="detector", test="drift detector", p_value="p-value")


def profile_dir(package: ModelPackage) -> Path | None:
    """The model folder's verified reference profile, or None."""
    folder = package.root / PROFILE_DIR
    listed = any(name.startswith(PROFILE_DIR + "/") for name in package.manifest["files"])
    return folder if listed and folder.is_dir() else None


class DriftWatch(PeriodicMonitor):
    def __init__(self, profile_path: Path, registry: CollectorRegistry, *, window: int, interval: float) -> None:
        from duet.monitor import DriftMonitor, ReferenceProfile

        self.monitor = DriftMonitor(ReferenceProfile.load(profile_path), window=window)
        super().__init__(registry, interval=interval, words=WORDS)
        self._pending: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        self._pending_rows = 0
        self._pending_lock = threading.Lock()
        self.accuracy = self._add(
            Gauge(
                "duet_estimated_accuracy",
                "Label-free accuracy estimate of the window (estimate) and its 95% interval (low, high).",
                ["bound"],
                registry=registry,
            )
        )
        self.reference_accuracy = self._add(
            Gauge(
                "duet_reference_accuracy",
                "Accuracy on the labelled reference sample the estimator was fitted on.",
                registry=registry,
            )
        )
        self.outlier_rate = self._add(
            Gauge(
                "duet_drift_outlier_rate",
                "Share of the window's images whose outlier score exceeds the reference threshold.",
                registry=registry,
            )
        )

    @property
    def outliers(self) -> Any:
        """The profile's OutlierModel, or None."""
        return self.monitor.profile.outliers

    def outlier_scores(self, features: np.ndarray | None, image_stats: np.ndarray | None) -> np.ndarray | None:
        """Per-image outlier scores of one request's rows (None when they cannot be computed)."""
        if self.outliers is None or features is None or image_stats is None:
            return None
        return self.outliers.score(features, image_stats)

    def observe(
        self, probabilities: np.ndarray, image_stats: np.ndarray | None, features: np.ndarray | None = None
    ) -> None:
        """Queue one request's rows for the window (thread-safe, about a microsecond)."""
        with self._pending_lock:
            self._pending.append((probabilities, image_stats, features))
            self._pending_rows += len(probabilities)
            full = self._pending_rows >= self.monitor.window
        if full:  # heavy traffic between two verdicts: fold in now rather than hold more than a window
            self.flush()

    def flush(self) -> None:
        """Fold the pending rows into the window, one ``add`` per kind of batch (in arrival order)."""
        with self._pending_lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        start = 0
        while start < len(pending):  # runs of requests that carry the same signals
            kind = (pending[start][1] is None, pending[start][2] is None)
            stop = start
            while stop < len(pending) and (pending[stop][1] is None, pending[stop][2] is None) == kind:
                stop += 1
            run = pending[start:stop]
            self.monitor.add(
                probabilities=np.concatenate([r[0] for r in run]),
                image_stats=None if kind[0] else np.concatenate([r[1] for r in run]),
                embeddings=None if kind[1] else np.concatenate([r[2] for r in run]),
            )
            start = stop

    def _compute(self) -> Any:
        """Fold in the pending rows and compute a verdict (in a worker thread)."""
        self.flush()
        return self.monitor.compute()

    def _publish(self, verdict: Any) -> dict[str, Any]:
        outliers = verdict.detector("outlier_rate")
        if outliers is not None and outliers.statistic is not None:
            self.outlier_rate.set(outliers.statistic)
        if verdict.accuracy is not None and verdict.accuracy["accuracy"] is not None:
            for bound, key in (("estimate", "accuracy"), ("low", "low"), ("high", "high")):
                self.accuracy.labels(bound).set(verdict.accuracy[key])
            self.reference_accuracy.set(verdict.accuracy["reference_accuracy"])
        for name, value in verdict.scores().items():
            self.score.labels(name).set(value)
        for name, value in verdict.p_values().items():
            self.p_value.labels(name).set(value)
        report: dict[str, Any] = verdict.to_dict()
        return report
