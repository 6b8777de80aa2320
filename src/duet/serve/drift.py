"""Input drift in the server: a window of recent requests compared with the run's reference profile.

When the model folder holds a reference profile (``profile/``, copied from
``RUN/profile`` by ``duet export`` and checked against model.json like every
other file), every inference batch is recorded in a
:class:`duet.monitor.DriftMonitor`: predicted classes, top-1 confidences, the
image statistics computed in the decode pool, and the penultimate features the
ONNX graph returns as its third output (``features``; one forward pass serves
the prediction and the monitoring). From features and statistics each image
gets its outlier score, returned to the request handler (``/v1/predict?outliers=true``
shows it). Graphs exported before the features output existed still serve;
the embedding and outlier detectors then report themselves skipped.

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

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from duet.export.package import PROFILE_DIR, ModelPackage

log = logging.getLogger("duet.serve")


def profile_dir(package: ModelPackage) -> Path | None:
    """The model folder's verified reference profile, or None."""
    folder = package.root / PROFILE_DIR
    listed = any(name.startswith(PROFILE_DIR + "/") for name in package.manifest["files"])
    return folder if listed and folder.is_dir() else None


class DriftWatch:
    def __init__(self, profile_path: Path, registry: CollectorRegistry, *, window: int, interval: float) -> None:
        from duet.monitor import DriftMonitor, ReferenceProfile

        self.monitor = DriftMonitor(ReferenceProfile.load(profile_path), window=window)
        self.interval = interval
        self._latest: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.detected = Gauge("duet_drift_detected", "1 when the latest drift verdict says drift, else 0.",
                              registry=registry)
        self.insufficient = Gauge("duet_drift_insufficient",
                                  "1 while the window holds too few images for any detector to decide, else 0.",
                                  registry=registry)
        self.accuracy = Gauge("duet_estimated_accuracy",
                              "Label-free accuracy estimate of the window (estimate) and its 95% interval (low, high).",
                              ["bound"], registry=registry)
        self.reference_accuracy = Gauge("duet_reference_accuracy",
                                        "Accuracy on the labelled reference sample the estimator was fitted on.",
                                        registry=registry)
        self.outlier_rate = Gauge("duet_drift_outlier_rate",
                                  "Share of the window's images whose outlier score exceeds the reference threshold.",
                                  registry=registry)
        self.score = Gauge("duet_drift_score", "Statistic of each drift detector on the recent window.",
                           ["detector"], registry=registry)
        self.p_value = Gauge("duet_drift_p_value", "p-value of each drift detector on the recent window.",
                             ["detector"], registry=registry)
        self.window_images = Gauge("duet_drift_window_images", "Images in the window of the latest verdict.",
                                   registry=registry)
        self.evaluations = Counter("duet_drift_evaluations", "Drift verdicts computed.", registry=registry)

    @property
    def outliers(self) -> Any:
        """The profile's OutlierModel, or None."""
        return self.monitor.profile.outliers

    def observe(self, probabilities: np.ndarray, image_stats: np.ndarray | None,
                features: np.ndarray | None = None) -> np.ndarray | None:
        """Record one request's rows (tens of microseconds, thread-safe); returns
        the images' outlier scores when they can be computed."""
        return self.monitor.add(probabilities=probabilities, image_stats=image_stats, embeddings=features)

    async def evaluate(self) -> dict[str, Any]:
        """Compute a verdict now (in a worker thread) and publish it."""
        async with self._lock:
            result = await asyncio.to_thread(self.monitor.compute)
            self.detected.set(1 if result.status == "drift" else 0)
            self.insufficient.set(1 if result.status == "insufficient" else 0)
            outliers = result.detector("outlier_rate")
            if outliers is not None and outliers.statistic is not None:
                self.outlier_rate.set(outliers.statistic)
            if result.accuracy is not None and result.accuracy["accuracy"] is not None:
                for bound, key in (("estimate", "accuracy"), ("low", "low"), ("high", "high")):
                    self.accuracy.labels(bound).set(result.accuracy[key])
                self.reference_accuracy.set(result.accuracy["reference_accuracy"])
            for name, value in result.scores().items():
                self.score.labels(name).set(value)
            for name, value in result.p_values().items():
                self.p_value.labels(name).set(value)
            self.window_images.set(result.n_current)
            self.evaluations.inc()
            self._latest = result.to_dict()
            return self._latest

    async def latest(self) -> dict[str, Any]:
        return self._latest if self._latest is not None else await self.evaluate()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="duet-drift")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def unregister(self, registry: CollectorRegistry) -> None:
        """Remove this watch's gauges from ``registry`` (before a new model's watch registers its own)."""
        for collector in (self.detected, self.insufficient, self.outlier_rate, self.accuracy,
                          self.reference_accuracy, self.score, self.p_value,
                          self.window_images, self.evaluations):
            try:
                registry.unregister(collector)
            except KeyError:
                pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.evaluate()
            except Exception:  # a failed verdict must not stop serving; it is logged and retried
                log.exception("drift evaluation failed")
