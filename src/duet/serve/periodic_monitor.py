"""What every served model's drift monitor shares: the verdict gauges, the lock,
the background loop, start/close and unregister.

A subclass computes a verdict (``_compute``, in a worker thread, off the event
loop) and publishes what is its own (``_publish``); :meth:`PeriodicMonitor.evaluate`
sets the common gauges from the verdict's ``status`` and ``n_current``:
``duet_drift_detected``, ``duet_drift_insufficient``, ``duet_drift_window_images``,
``duet_drift_score{detector}``, ``duet_drift_p_value{detector}`` and the counter
``duet_drift_evaluations_total`` (alert rules: deploy/prometheus/drift_rules.yml).
The image watch (:mod:`duet.serve.drift_watch`) and the tabular and text monitors
(:mod:`duet.serve.tabular_monitor`) publish on these same names, so dashboards read all alike.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("duet.serve")


@dataclass(frozen=True)
class GaugeWords:
    """The words of the gauges' help texts: what a window holds and what tests it."""

    rows: str  # "images", "rows"
    decider: str  # "detector", "test": "... too few rows for any test to decide"
    test: str  # "drift detector", "column's drift test"
    p_value: str  # "p-value", "Holm-adjusted p-value"


class PeriodicMonitor(ABC):
    """A drift verdict computed every ``interval`` seconds in the background and published as gauges."""

    task_name = "duet-drift"
    failure = "drift evaluation failed"

    def __init__(self, registry: CollectorRegistry, *, interval: float, words: GaugeWords) -> None:
        self.interval = interval
        self._latest: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._collectors: list[Any] = []
        self.detected = self._add(
            Gauge("duet_drift_detected", "1 when the latest drift verdict says drift, else 0.", registry=registry)
        )
        self.insufficient = self._add(
            Gauge(
                "duet_drift_insufficient",
                f"1 while the window holds too few {words.rows} for any {words.decider} to decide, else 0.",
                registry=registry,
            )
        )
        self.score = self._add(
            Gauge(
                "duet_drift_score",
                f"Statistic of each {words.test} on the recent window.",
                ["detector"],
                registry=registry,
            )
        )
        self.p_value = self._add(
            Gauge(
                "duet_drift_p_value",
                f"{words.p_value} of each {words.test} on the recent window.",
                ["detector"],
                registry=registry,
            )
        )
        self.window_images = self._add(
            Gauge(
                "duet_drift_window_images",
                f"{words.rows.capitalize()} in the window of the latest verdict.",
                registry=registry,
            )
        )
        self.evaluations = self._add(Counter("duet_drift_evaluations", "Drift verdicts computed.", registry=registry))

    def _add(self, collector: Any) -> Any:
        """Keep ``collector`` for :meth:`unregister` (subclasses add their own gauges with it)."""
        self._collectors.append(collector)
        return collector

    @abstractmethod
    def _compute(self) -> Any:
        """The verdict on the window now (in a worker thread)."""

    @abstractmethod
    def _publish(self, verdict: Any) -> dict[str, Any]:
        """Set the subclass's own gauges from ``verdict``; its dict (with ``status`` and ``n_current``)."""

    async def evaluate(self) -> dict[str, Any]:
        """The verdict on the window now (in a worker thread), published."""
        async with self._lock:
            verdict = await asyncio.to_thread(self._compute)
            report = self._publish(verdict)
            self.detected.set(1 if report["status"] == "drift" else 0)
            self.insufficient.set(1 if report["status"] == "insufficient" else 0)
            self.window_images.set(report["n_current"])
            self.evaluations.inc()
            self._latest = report
            return report

    async def latest(self) -> dict[str, Any]:
        return self._latest if self._latest is not None else await self.evaluate()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.task_name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def unregister(self, registry: CollectorRegistry) -> None:
        """Remove this monitor's gauges from ``registry`` (before a swapped-in model's monitor registers its own)."""
        for collector in self._collectors:
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
                log.exception(self.failure)
