"""Experiment tracking: a run's params, per-epoch metrics and files in MLflow or TensorBoard.

The CLI and the Python API build a sink with :func:`sink_for` and pass it to
``duet.training.loop.train``/``resume`` (training calls it through the
``duet.training.state.Tracker`` protocol and never imports mlflow);
``stages`` logs evaluation and export into the same MLflow run; ``mirror``
copies duet's champion to the MLflow Model Registry (alias ``champion``).
mlflow and tensorboard are imported only when a sink is used.
"""

from __future__ import annotations

from pathlib import Path

from duet.training.state import Tracker

TRACKS = ("none", "mlflow", "tensorboard")


def sink_for(track: str, out: Path) -> Tracker | None:
    """The sink for ``track`` (a TrainConfig ``track``), None for "none"; ``out`` holds the runs
    (the default MLflow store is ``<out>/mlflow.db``)."""
    if track == "mlflow":
        from duet.tracking.mlflow_sink import MlflowSink

        return MlflowSink(Path(out))
    if track == "tensorboard":
        from duet.tracking.tensorboard_sink import TensorBoardSink

        return TensorBoardSink()
    return None


def sink_for_run(run_dir: Path) -> Tracker | None:
    """The sink a resumed run keeps: its config.yaml's ``track`` (runs live in the run folder's parent)."""
    from duet.artifacts.run_dir import RunPaths, read_config

    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        return None
    return sink_for(str(read_config(paths).get("track", "none")), paths.root.resolve().parent)


def summary_line(run_dir: Path) -> str | None:
    """Where the run was tracked, for the summary of ``duet train``; None when it was not."""
    from duet.tracking.store import read_tracking
    from duet.tracking.tensorboard_sink import FOLDER

    doc = read_tracking(run_dir)
    if doc is not None:
        where = doc.get("tracking_uri")
        store = (
            f"the local store {where} (default; view: mlflow ui --backend-store-uri {where})"
            if where
            else "MLFLOW_TRACKING_URI"
        )
        return f"MLflow run {doc['run_id']} (experiment '{doc.get('experiment', '')}') in {store}"
    board = Path(run_dir) / FOLDER
    if board.is_dir():
        return f"TensorBoard scalars in {board} (view: tensorboard --logdir {board})"
    return None
