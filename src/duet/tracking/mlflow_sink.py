"""``--track mlflow``: a training run as an MLflow run.

At the start: the resolved config as params (flattened: ``augment.hflip``),
the data fingerprint (the one model.json carries) and the run folder as tags,
and RUN/tracking.json; after each epoch: every numeric key of the
metrics.jsonl row, step = epoch; at the end: the best and test numbers, and
config.yaml, run.json, data_report.json and eval/curves.png as artifacts.
``--resume`` continues the MLflow run named in tracking.json (params are not
logged again: a new ``--epochs`` would clash with the logged one).

Every call is guarded: the first failure warns once on stderr and turns the
sink off; training never stops for tracking.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duet.artifacts.model_package import data_fingerprint
from duet.artifacts.run_dir import RunPaths
from duet.data.scan import read_manifest
from duet.tracking.store import (
    Store,
    Warner,
    experiment_name,
    read_tracking,
    record,
    store_for,
    tracked_store,
    write_tracking,
)
from duet.training.state import TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_FILES = ("config.yaml", "run.json", "data_report.json")  # logged at the end, with eval/curves.png
PARAM_MAX = 6000  # MLflow's limit on a param value


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient on ``uri``, without the store's start-up chatter (migrations on a new SQLite file).

    ``uri`` also becomes the process's tracking URI: MLflow resolves ``models:/<id>``
    (registering a logged model) and the fluent ``log_model`` through that one."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, store: Store) -> str:
    """The experiment (MLFLOW_EXPERIMENT_NAME, default "duet"), created when missing."""
    name = experiment_name()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=store.artifact_location))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"augment": {"hflip": True}}`` -> ``{"augment.hflip": "True"}``; values as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:PARAM_MAX]
    return flat


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a row (bools and text left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row's numbers but the epoch (the step they are logged at)."""
    return numeric({k: v for k, v in row.items() if k != "epoch"})


def run_fingerprint(run_dir: Path, data_dir: str) -> str:
    """The data fingerprint of the run's manifest, as ``duet export`` writes it in model.json."""
    usable = read_manifest(RunPaths(run_dir).manifest, Path(data_dir)).usable()
    return data_fingerprint((r.path, r.label, r.sha256, r.split) for r in usable)


class MlflowSink:
    """A ``duet.training.state.Tracker`` writing to MLflow (see the module doc)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.warn = Warner("MLflow tracking")
        self.client: MlflowClient | None = None
        self.run_id = ""
        self.run_dir = Path()

    def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        self.warn.guard(lambda: self._start(Path(run_dir), config, resumed))

    def _start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        self.run_dir = run_dir
        doc = read_tracking(run_dir) if resumed else None
        if doc is not None:
            self.client, self.run_id = open_client(tracked_store(doc).uri), str(doc["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "duet.resumed", "true")
            # New weights: the model logged by an earlier export no longer matches them.
            write_tracking(run_dir, {k: v for k, v in doc.items() if k not in ("schema", "model_uri", "model_id")})
            return
        store = store_for(self.out)
        client = open_client(store.uri)
        exp = experiment_id(client, store)
        run = client.create_run(exp, run_name=run_dir.name, tags={"duet.run": str(run_dir.resolve())})
        self.client, self.run_id = client, run.info.run_id
        write_tracking(run_dir, record(store, self.run_id, exp))
        from mlflow.entities import Param, RunTag

        params = [Param(k, v) for k, v in sorted(flatten(config).items())]
        fingerprint = run_fingerprint(run_dir, str(config.get("data_dir", "")))
        tags = [RunTag("duet.data_fingerprint", fingerprint), RunTag("duet.model", str(config.get("model", "")))]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100], tags=tags if i == 0 else [])

    def epoch(self, row: dict[str, Any]) -> None:
        self.warn.guard(lambda: self._log_metrics(epoch_metrics(row), row["epoch"]))

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def end(self, result: TrainResult) -> None:
        self.warn.guard(lambda: self._end(result))

    def _end(self, result: TrainResult) -> None:
        if self.client is None:
            return
        summary = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch}
        summary.update({"train_images_per_s": result.train_images_per_s, "train_seconds": result.seconds})
        self._log_metrics(numeric({**summary, **result.test}), result.best_epoch)
        for name in RUN_FILES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        curves = self.run_dir / "eval" / "curves.png"
        if curves.is_file():
            self.client.log_artifact(self.run_id, str(curves), "eval")
        self.client.set_terminated(self.run_id, "FINISHED")

    def stopped(self, status: str) -> None:
        """Training ended without a result: the run shows KILLED (resumable) or FAILED, not RUNNING."""
        self.warn.guard(lambda: self._terminate(status))

    def _terminate(self, status: str) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status)
