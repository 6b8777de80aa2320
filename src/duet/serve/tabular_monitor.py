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

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from duet.artifacts.model_package import ModelPackage
from duet.data.tabular.schema import Table
from duet.serve.periodic_monitor import GaugeWords, PeriodicMonitor

if TYPE_CHECKING:  # imported when a model has a profile: duet.monitor and scipy cost ~1 s at start-up
    from duet.serve.table_drift_watch import TableDriftWatch


WORDS = GaugeWords(rows="rows", decider="test", test="column's drift test", p_value="Holm-adjusted p-value")


class TableMonitor(PeriodicMonitor):
    task_name = "duet-table-drift"
    failure = "tabular drift evaluation failed"

    def __init__(self, watch: TableDriftWatch, registry: CollectorRegistry, *, interval: float) -> None:
        self.watch = watch
        super().__init__(registry, interval=interval, words=WORDS)

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

    def _compute(self) -> Any:
        return self.watch.report()

    def _publish(self, verdict: Any) -> dict[str, Any]:
        report: dict[str, Any] = verdict
        for column in report["columns"]:
            if column.get("statistic") is not None:
                self.score.labels(column["column"]).set(column["statistic"])
            if column.get("adjusted_p") is not None:
                self.p_value.labels(column["column"]).set(column["adjusted_p"])
        return report
