"""Experiment tracking (#17): a real MLflow store (SQLite in tmp_path) read back through
MlflowClient, TensorBoard event files read back with EventAccumulator, and a tracking
store that cannot be reached (training still finishes, one warning)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_cli, write_digit_folder

pytestmark = pytest.mark.e2e

FAST = ("--image-size", "16", "--workers", "0", "--device", "cpu", "--model", "resnet18")


@pytest.fixture(autouse=True)
def _own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test picks its store: none inherited from the shell."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def _client(out: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")


def _ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _alias(client: Any, name: str) -> Any:
    return client.get_model_version_by_alias(name, "champion")


def _api_train(tmp_path: Path, name: str, *, epochs: int, track: str) -> Any:
    """A tiny two-class run through the Python API (16 px digits, CPU, no workers)."""
    import duet

    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=16, size=16)
    return duet.train(
        data,
        epochs=epochs,
        image_size=16,
        workers=0,
        device="cpu",
        out=tmp_path / "runs",
        name=name,
        track=track,
        progress=False,
        log=None,
    )


def test_mlflow_tracks_a_run_from_training_to_the_champion_alias(tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "data", classes=(0, 1, 7), per_class=20, size=16)
    out = tmp_path / "runs"
    train = _ok(
        run_cli(
            "train",
            str(data),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--name",
            "r1",
            "--track",
            "mlflow",
            "--json",
            *FAST,
            cwd=tmp_path,
        )
    )
    run = out / "r1"
    doc = json.loads((run / "tracking.json").read_text())
    assert doc["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"  # the default store, said in the summary
    said = json.loads(train.stdout)["tracking"]
    assert doc["run_id"] in said and f"mlflow ui --backend-store-uri {doc['tracking_uri']}" in said
    client = _client(out)
    mlrun = client.get_run(doc["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.experiment_id == doc["experiment_id"]
    assert client.get_experiment(doc["experiment_id"]).name == "duet"
    params = mlrun.data.params
    assert params["epochs"] == "2" and params["image_size"] == "16" and params["track"] == "mlflow"
    assert params["augment.hflip"] == "True"  # the resolved config, flattened
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(doc["run_id"], key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r[key])) for r in rows]
    info = json.loads((run / "run.json").read_text())
    assert mlrun.data.metrics["best_val_accuracy"] == pytest.approx(info["best"]["val_accuracy"])
    top = {a.path for a in client.list_artifacts(doc["run_id"])}
    assert {"config.yaml", "run.json", "data_report.json", "eval"} <= top
    assert {a.path for a in client.list_artifacts(doc["run_id"], "eval")} == {"eval/curves.png"}

    # duet.evaluate (the API; `duet evaluate` calls the same stage): the report and test metrics into the same run
    import duet

    duet.evaluate(run, device="cpu", progress=False)
    report = json.loads((run / "eval" / "report.json").read_text())
    evals = {a.path for a in client.list_artifacts(doc["run_id"], "eval")}
    assert {"eval/report.json", "eval/report.md", "eval/confusion_matrix.png"} <= evals
    split = report["context"]["split"]
    metrics = client.get_run(doc["run_id"]).data.metrics
    assert metrics[f"eval_{split}_accuracy"] == pytest.approx(report["metrics"]["accuracy"])

    # duet.export: the ONNX model (signature, input example) and the card; the same answer as duet's own model
    duet.export(run, progress=False, log=None)
    doc = json.loads((run / "tracking.json").read_text())
    fingerprint = json.loads((run / "export" / "model.json").read_text())["data"]["fingerprint"]
    assert mlrun.data.tags["duet.data_fingerprint"] == fingerprint
    assert "MODEL_CARD.md" in {a.path for a in client.list_artifacts(doc["run_id"])}
    _same_prediction_as_duet(doc["model_uri"], out, run / "export", data / "7" / sorted(os.listdir(data / "7"))[0])

    # duet registry promote: MLflow version 1 gets the alias; the run resumed and exported again is v2
    reg = str(tmp_path / "models")
    _ok(run_cli("registry", "promote", str(run), "--registry", reg, cwd=tmp_path))
    assert _alias(client, "models").version == 1 and _alias(client, "models").tags["duet.version"] == "v1"
    duet.resume(run, epochs=3, progress=False, log=None)
    assert json.loads((run / "tracking.json").read_text())["run_id"] == doc["run_id"]  # the same MLflow run
    steps = [m.step for m in client.get_metric_history(doc["run_id"], "val_accuracy")]
    assert steps[-1] == 3 and sorted(set(steps)) == [1, 2, 3]
    duet.export(run, progress=False, log=None, force=True)
    _ok(run_cli("registry", "promote", str(run), "--registry", reg, cwd=tmp_path))
    second = _alias(client, "models")
    assert (second.version, second.tags["duet.version"]) == (2, "v2")
    assert second.source == json.loads((run / "tracking.json").read_text())["model_uri"] != doc["model_uri"]
    _ok(run_cli("registry", "rollback", "--registry", reg, cwd=tmp_path))
    assert _alias(client, "models").version == 1  # the alias follows duet's rollback
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing in the cwd


def _same_prediction_as_duet(model_uri: str, out: Path, export: Path, image: Path) -> None:
    """The logged model (pyfunc, read from the MLflow store) on a real image == duet's prediction of it."""
    import mlflow

    import duet
    from duet.data.preprocess import PreprocessSpec
    from duet.serve.images import pixels_from_bytes

    mlflow.set_tracking_uri(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    manifest = json.loads((export / "model.json").read_text())
    pixels = pixels_from_bytes(image.read_bytes(), PreprocessSpec.from_dict(manifest["preprocess"]), 10**8)[None]
    assert mlflow.models.get_model_info(model_uri).signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    probs = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(pixels)["probabilities"])[0]
    best = duet.load(export).predict(image, k=1)[0]  # what `duet predict EXPORT IMAGE` prints first
    assert manifest["labels"][int(np.argmax(probs))] == best["label"]
    assert float(probs.max()) == pytest.approx(best["probability"], abs=1e-5)


def test_python_api_and_tensorboard_scalars(tmp_path: Path) -> None:
    """duet.train(track="tensorboard"): per-epoch scalars (step = epoch) in RUN/tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _api_train(tmp_path, "tb", epochs=2, track="tensorboard")
    acc = EventAccumulator(str(run.path / "tensorboard"))
    acc.Reload()
    rows = run.metrics
    for key in ("train_loss", "val_accuracy"):
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [
            (r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows
        ]
    assert not (run.path / "tracking.json").exists()


def test_python_api_with_the_users_store_and_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """duet.train(track="mlflow") under MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME: the run goes
    there, and tracking.json does not write the user's URI down (it could hold credentials)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.chdir(tmp_path)  # a user's SQLite store keeps MLflow's default artifact root: ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pets")
    run = _api_train(tmp_path, "u", epochs=1, track="mlflow")
    doc = json.loads((run.path / "tracking.json").read_text())
    assert "tracking_uri" not in doc and uri not in (run.path / "tracking.json").read_text()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(doc["experiment_id"]).name == "pets"
    assert [m.step for m in client.get_metric_history(doc["run_id"], "val_accuracy")] == [1]
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert any((tmp_path / "mlruns").rglob("run.json"))  # MLflow's own default, in the cwd: docs/tracking.md


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_unreachable_store_warns_once_and_training_finishes(tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=16, size=16)
    env = {
        "MLFLOW_TRACKING_URI": f"http://user:secret@127.0.0.1:{_closed_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    out = tmp_path / "runs"
    proc = _ok(
        run_cli(
            "train",
            str(data),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--name",
            "r",
            "--track",
            "mlflow",
            "-q",
            *FAST,
            env=env,
        )
    )
    warnings = [ln for ln in proc.stderr.splitlines() if "MLflow tracking failed" in ln]
    assert len(warnings) == 1, proc.stderr
    assert "secret" not in proc.stderr and "Traceback" not in proc.stderr
    run = out / "r"
    assert (
        len((run / "metrics.jsonl").read_text().splitlines()) == 2
        and (run / "checkpoints" / "best.safetensors").is_file()
    )
    assert not (run / "tracking.json").exists() and not (out / "mlflow.db").exists()


def test_a_run_stopped_by_sigterm_shows_killed_then_finished_after_resume(tmp_path: Path) -> None:
    """Not RUNNING forever: SIGTERM (checkpoint written, resumable) marks the MLflow run
    KILLED; `duet train --resume` reopens the same run and finishes it."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=40, size=16)
    out = tmp_path / "runs"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 3, "checkpoint_every": 1, "batch_size": 4}))
    cmd = [sys.executable, "-m", "duet", "train", str(data), "--config", str(cfg), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--name", "cut", "--track", "mlflow", "--quiet", *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    run = out / "cut"
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    assert _client(out).get_run(run_id).info.status == "KILLED"
    _ok(run_cli("train", "--resume", str(run), "--quiet", cwd=tmp_path))
    assert _client(out).get_run(run_id).info.status == "FINISHED"
