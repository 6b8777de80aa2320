"""The Python API as a notebook uses it, in-process: folder -> train -> evaluate ->
export -> load -> predict -> drift, and the promises of ``import duet``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import duet
from duet.errors import ConfigError, DataError, ModelError, RunError
from helpers import TINY, write_digit_folder

# ------------------------------------------------------------------ import duet, fast


def test_import_duet_imports_neither_torch_nor_tensorflow_and_changes_no_setting() -> None:
    code = (
        "import json, os, sys; before = dict(os.environ); import duet; "
        "print(json.dumps({'heavy': sorted(m for m in ('torch', 'tensorflow', 'timm', 'onnx') if m in sys.modules), "
        "'env_changed': dict(os.environ) != before, 'all': duet.__all__, 'dir': dir(duet)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["heavy"] == []
    assert got["env_changed"] is False
    for name in ("train", "evaluate", "export", "load", "drift", "scan", "Run", "Model", "tf_dataset"):
        assert name in got["all"] and name in got["dir"], name


def test_a_typo_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        duet.trian  # noqa: B018


def test_train_and_export_are_the_api_functions_whatever_else_is_imported() -> None:
    """The stage packages are duet.training and duet.exporting, so importing them
    never shadows the API's duet.train / duet.export."""
    import inspect

    import duet.exporting.exporter
    import duet.training.loop

    assert inspect.isfunction(duet.train) and inspect.isfunction(duet.export)
    assert duet.train.__module__ == "duet.api.run" and duet.export.__module__ == "duet.api.run"
    assert "val" in inspect.signature(duet.train).parameters


def test_an_unknown_setting_is_the_cli_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting `epochz` .*allowed: .*epochs") as e:
        duet.train(tmp_path, epochz=1, out=tmp_path / "runs")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_a_bad_setting_value_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epochs"):
        duet.train(tmp_path, epochs=0)


def test_data_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be a data folder, a tf\.data\.Dataset"):
        duet.train([1, 2, 3], out=tmp_path)


def test_load_of_a_folder_that_is_neither_run_nor_export(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="neither a run folder"):
        duet.load(tmp_path)


def test_run_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunError):
        duet.Run(tmp_path)


def test_a_taken_run_name_is_refused_before_any_data_is_written(tmp_path: Path) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(RunError, match="already exists"):
        duet.train(tmp_path / "data", val=tmp_path / "val", out=tmp_path / "runs", name="taken")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["taken"]


# ------------------------------------------------------------------ the notebook walk-through


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("api-data") / "digits", classes=(0, 1, 2), per_class=30, size=20)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("api-runs")
    return duet.train(data, **TINY, out=out, name="nb", progress=False, log=None)


@pytest.fixture(scope="module")
def exported(run: Any) -> Path:
    return duet.export(run, progress=False, log=None).export_dir


@pytest.mark.e2e
def test_train_from_a_folder_returns_the_run(run: Any, data: Path) -> None:
    assert isinstance(run, duet.Run)
    assert run.path.name == "nb" and (run.path / "checkpoints" / "best.safetensors").is_file()
    assert run.labels == ["0", "1", "2"]
    assert run.best["epoch"] == 1 and 0.0 <= run.best["val_accuracy"] <= 1.0
    assert run.config.epochs == 1 and run.config.data_dir == data
    assert [row["epoch"] for row in run.metrics] == [1]
    assert run.result is not None and run.result.num_train > 0
    assert (run.path / "profile" / "profile.json").is_file()  # written after training
    assert os.fspath(run) == str(run.path)
    again = duet.Run(run.path)
    assert again.labels == run.labels and again.result is None


@pytest.mark.e2e
def test_evaluate_a_run_and_a_named_split(run: Any) -> None:
    result = run.evaluate(progress=False)
    assert result.split == "test" and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert (run.path / "eval" / "report.json").is_file()
    val = duet.evaluate(run.path, split="val", progress=False, out_dir=run.path / "eval-val")
    assert val.split == "val" and (run.path / "eval-val" / "report.json").is_file()


@pytest.mark.e2e
def test_run_folder_and_export_predict_the_same(run: Any, exported: Path, data: Path) -> None:
    assert (exported / "model.json").is_file()
    by_torch = run.load(device="cpu")
    by_onnx = duet.load(exported)
    assert by_torch.source == "torch" and by_onnx.source == "onnxruntime"
    files = sorted((data / "1").glob("*.png"))[:6]
    p_torch, p_onnx = by_torch.probabilities(files), by_onnx.probabilities(files)
    assert p_torch.shape == (6, 3)
    np.testing.assert_allclose(p_torch, p_onnx, atol=1e-4)  # the export's parity gate, from the outside
    assert (p_torch.argmax(1) == p_onnx.argmax(1)).all()


@pytest.mark.e2e
def test_every_input_kind_predicts_as_the_file_does(run: Any, exported: Path, data: Path) -> None:
    files = sorted((data / "2").glob("*.png"))[:3]
    pixels = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    for model in (run.load(device="cpu"), duet.load(exported)):
        want = model.probabilities(files)
        np.testing.assert_allclose(model.probabilities(str(files[0])), want[:1], atol=1e-6)
        np.testing.assert_allclose(model.probabilities([Image.open(f) for f in files]), want, atol=1e-6)
        np.testing.assert_allclose(model.probabilities(pixels[0]), want[:1], atol=1e-6)
        np.testing.assert_allclose(model.probabilities(np.stack(pixels)), want, atol=1e-6)
        one = model.predict(files[0], k=2)
        assert len(one) == 2 and {"label", "probability"} <= set(one[0])
        assert one[0]["label"] == run.labels[int(want[0].argmax())]
        assert one[0]["probability"] == pytest.approx(float(want[0].max()), abs=1e-6)
        many = model.predict(files, k=5)
        assert len(many) == 3 and all(len(top) == 3 for top in many)  # k is capped at the 3 classes


@pytest.mark.e2e
def test_offline_prediction_equals_evaluation_inference(run: Any, data: Path) -> None:
    import torch

    from duet.artifacts.run_dir import load_run
    from duet.evaluation.inference import load_model, predict_file

    info = load_run(run.path)
    file = sorted((data / "0").glob("*.png"))[0]
    want = predict_file(load_model(info, torch.device("cpu")), info, file, torch.device("cpu"), max_pixels=10**8)
    np.testing.assert_allclose(run.load(device="cpu").probabilities(file)[0], want, atol=1e-6)


@pytest.mark.e2e
def test_predict_refuses_what_is_not_an_image(run: Any, tmp_path: Path) -> None:
    model = run.load(device="cpu")
    with pytest.raises(ConfigError, match="uint8"):
        model.predict(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(DataError, match="does not exist"):
        model.predict(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        model.predict(tmp_path / "bad.png")


@pytest.mark.e2e
def test_drift_of_a_run_and_of_its_export(run: Any, exported: Path, data: Path) -> None:
    result = duet.drift(run, data / "1", report=False, progress=False)
    assert result.status in ("drift", "no_drift", "insufficient") and result.n_current == 30
    via_export = duet.drift(exported, data / "1", report=False, progress=False)
    assert via_export.n_current == 30


@pytest.mark.e2e
def test_a_run_that_cannot_start_leaves_neither_run_nor_data_folder(data: Path, tmp_path: Path) -> None:
    val = write_digit_folder(tmp_path / "val", classes=(0, 1, 2), per_class=4, size=20)
    settings = {**TINY, "model": "no_such_model"}
    with pytest.raises(ModelError, match="no_such_model"):
        duet.train(data, val=val, **settings, out=tmp_path / "runs", name="x", progress=False, log=None)
    assert list((tmp_path / "runs").iterdir()) == []
    assert len(list((data / "0").iterdir())) == 30  # the linked originals are untouched


@pytest.mark.e2e
def test_drift_of_an_export_whose_run_is_gone_says_so(exported: Path, data: Path, tmp_path: Path) -> None:
    moved = tmp_path / "export"
    shutil.copytree(exported, moved)
    manifest = json.loads((moved / "model.json").read_text())
    manifest["source"]["run"] = str(tmp_path / "elsewhere")
    (moved / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not on this machine"):
        duet.drift(moved, data / "1", report=False, progress=False)


@pytest.mark.e2e
def test_scan_reads_a_folder_as_train_would(data: Path) -> None:
    manifest = duet.scan(data)
    assert manifest.labels == ["0", "1", "2"] and len(manifest.usable()) == 90


@pytest.mark.e2e
def test_resume_trains_a_finished_run_longer(data: Path, tmp_path: Path) -> None:
    first = duet.train(data, **TINY, out=tmp_path, name="r", progress=False, log=None)
    longer = first.resume(epochs=2, progress=False, log=None)
    assert longer.path == first.path
    assert [row["epoch"] for row in longer.metrics] == [1, 2]
    assert longer.config.epochs == 2


@pytest.mark.slow
def test_run_demo_writes_the_drift_profile_after_training(tmp_path: Path) -> None:
    from duet.api.demo import run_demo

    result = run_demo(tmp_path, epochs=1, device="cpu", progress=False, log=lambda _m: None)
    assert (result.train.run_dir / "profile" / "profile.json").is_file()
