"""Drift of a served tabular model: :class:`~duet.serve.table_drift_watch.TableDriftWatch` behind the server's routes and gauges.

Every predicted batch goes to the watch's rolling window (``observe``: a copy
under a lock, microseconds, on the event loop). A background task computes the
verdict every ``--drift-interval`` seconds in a worker thread, off the request
path, and publishes it where the image server publishes its own, so dashboards
and the alert rules (deploy/prometheus/drift_rules.yml) read both alike:

- ``GET /v1/monitor``: the latest verdict (``TabularDriftResult.to_dict()``: per
  column and output its test, statistic, p-values, Holm-adjusted decision; plus
  ``window`` and ``seen``); the first call computes one when none exists yet;
- gauges ``duet_drift_detected``, ``duet_drift_insufficient``,
  ``duet_drift_window_images`` (rows in the window), ``duet_drift_score{detector}``
  and ``duet_drift_p_value{detector}`` (``detector`` is the column's or output's
  name, Holm-adjusted p), counter ``duet_drift_evaluations_total``.

Without ``profile/tabular.json`` in the model folder (or with ``--no-drift``)
there is no monitor: /v1/monitor answers 404 ``drift_off``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from duet.artifacts.model_package import ModelPackage
from duet.data.tabular.schema import Table

if TYPE_CHECKING:  # imported when a model has a profile: duet.monitor and scipy cost ~1 s at start-up
    from duet.serve.table_drift_watch import TableDriftWatch

log = logging.getLogger("duet.serve")


class TableMonitor:
    def __init__(self, watch: TableDriftWatch, registry: CollectorRegistry, *, interval: float) -> None:
        self.watch = watch
        self.interval = interval
        self._latest: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.detected = Gauge(
            "duet_drift_detected", "1 when the latest drift verdict says drift, else 0.", registry=registry
        )
        self.insufficient = Gauge(
            "duet_drift_insufficient",
            "1 while the window holds too few rows for any test to decide, else 0.",
            registry=registry,
        )
        self.score = Gauge(
            "duet_drift_score",
            "Statistic of each column's drift test on the recent window.",
            ["detector"],
            registry=registry,
        )
        self.p_value = Gauge(
            "duet_drift_p_value",
            "Holm-adjusted p-value of each column's drift test on the recent window.",
            ["detector"],
            registry=registry,
        )
        self.window_rows = Gauge(
            "duet_drift_window_images", "Rows in the window of the latest verdict.", registry=registry
        )
        self.evaluations = Counter("duet_drift_evaluations", "Drift verdicts computed.", registry=registry)

    @classmethod
    def for_package(
        cls, package: ModelPackage, registry: CollectorRegistry, *, window: int, interval: float
    ) -> TableMonitor | None:
        """The monitor of a model folder with a tabular reference profile, else None."""
        from duet.serve.table_drift_watch import TableDriftWatch

        watch = TableDriftWatch.from_package(package, window=window)
        return None if watch is None else cls(watch, registry, interval=interval)

    def observe(self, table: Table, probabilities: Any) -> None:
        self.watch.observe(table, probabilities)

    async def evaluate(self) -> dict[str, Any]:
        """The verdict on the window now (in a worker thread), published."""
        async with self._lock:
            report = await asyncio.to_thread(self.watch.report)
            self.detected.set(1 if report["status"] == "drift" else 0)
            self.insufficient.set(1 if report["status"] == "insufficient" else 0)
            for column in report["columns"]:
                if column.get("statistic") is not None:
                    self.score.labels(column["column"]).set(column["statistic"])
                if column.get("adjusted_p") is not None:
                    self.p_value.labels(column["column"]).set(column["adjusted_p"])
            self.window_rows.set(report["n_current"])
            self.evaluations.inc()
            self._latest = report
            return report

    async def latest(self) -> dict[str, Any]:
        return self._latest if self._latest is not None else await self.evaluate()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="duet-table-drift")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def unregister(self, registry: CollectorRegistry) -> None:
        """Remove the gauges (before a swapped-in model's monitor registers its own)."""
        for collector in (
            self.detected,
            self.insufficient,
            self.score,
            self.p_value,
            self.window_rows,
            self.evaluations,
        ):
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
                log.exception("tabular drift evaluation failed")
