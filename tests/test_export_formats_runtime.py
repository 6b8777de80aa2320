"""Every exported format measured, asked and served on its own runtime (#15).

A copy of the shared small run exported with every format (``small_tf_run``). Then:

- `duet evaluate` on model.int8.tflite and on the SavedModel version folder
  measures within 1 point of the ONNX evaluation and names its runtime;
- `duet predict` with a .tflite path answers the ONNX model's top-1;
- `duet serve --runtime tflite` serves model.int8.tflite on /v1/predict and KServe V2;
- duet serve's TF Serving REST (ONNX Runtime) answers what TensorFlow answers
  from the SavedModel on the same pixels: ``tf.saved_model.load`` and
  ``saved_model_cli run``; its ``serving_bytes`` signature on a PNG gives
  /v1/predict's top-1 for the same bytes;
- the one-line errors: a file that is not a model, a format the folder lacks,
  the tf extra missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch  # noqa: F401  (before TensorFlow: see duet.system.tensorflow_import)

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401
pytest.importorskip("tensorflow", reason="TensorFlow is not importable (pip install 'duet[tf]')", exc_type=ImportError)
pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed (pip install 'duet[tf]')", exc_type=ImportError)

from duet.artifacts.model_package import read_package
from duet.serve.images import pixels_from_bytes
from duet.system.tensorflow_import import import_tensorflow
from helpers import one_line_error, run_cli
from serve_support import Server, running_server, val_files

pytestmark = pytest.mark.e2e  # runs the CLI in subprocesses and starts servers

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def run(small_tf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared run exported with every format (evaluation writes its reports into the run)."""
    copy = tmp_path_factory.mktemp("formats") / "digits"
    shutil.copytree(small_tf_run, copy, ignore=shutil.ignore_patterns("eval"))
    return copy


@pytest.fixture(scope="module")
def export(run: Path) -> Path:
    return run / "export"


@pytest.fixture(scope="module")
def savedmodel(export: Path) -> Path:
    return read_package(export).format_path("savedmodel")


@pytest.fixture(scope="module")
def onnx_server(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(export, tmp_path_factory.mktemp("logs"), "--runtime", "onnxruntime") as s:
        yield s


def _evaluate(target: Path, *args: str) -> dict:
    proc = run_cli("evaluate", str(target), *args, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _val_pixels(run: Path, count: int) -> tuple[list[Path], np.ndarray]:
    """The first ``count`` validation files and their uint8 centre crops, as the server prepares them."""
    spec = read_package(run / "export").spec
    files = [f for f, _ in val_files(run)[:count]]
    return files, np.stack([pixels_from_bytes(f.read_bytes(), spec, MAX_PIXELS) for f in files])


def test_evaluate_on_tflite_int8_and_the_savedmodel_is_within_a_point_of_onnx(run: Path, savedmodel: Path) -> None:
    onnx = _evaluate(run / "export")
    int8 = _evaluate(run / "export" / "model.int8.tflite")
    saved = _evaluate(savedmodel)
    assert onnx["runtime"].startswith("onnx on onnxruntime")
    assert int8["runtime"].startswith("tflite-int8 on tflite") and "model.int8.tflite" in int8["runtime"]
    assert saved["runtime"].startswith("savedmodel on savedmodel") and str(savedmodel) in saved["runtime"]
    n = onnx["metrics"]["num_images"]
    assert n == int8["metrics"]["num_images"] == saved["metrics"]["num_images"] > 0
    assert abs(int8["metrics"]["accuracy"] - onnx["metrics"]["accuracy"]) <= 0.01 + 1e-9
    assert abs(saved["metrics"]["accuracy"] - onnx["metrics"]["accuracy"]) <= 0.01 + 1e-9
    # Each report lands in RUN/eval/<format>/ and names its runtime; the PyTorch report's place is untouched.
    report = run / "eval" / "tflite-int8" / "report.md"
    assert Path(int8["files"]["md"]) == report and "tflite-int8 on tflite" in report.read_text()
    assert not (run / "eval" / "report.json").exists()


def test_predict_with_a_tflite_file_gives_the_onnx_top1(run: Path, export: Path) -> None:
    files = [str(f) for f, _ in val_files(run)[:6]]
    by_onnx = run_cli("predict", str(run), *files, "--format", "onnx", "--json", "-k", "1")
    by_tflite = run_cli("predict", str(export / "model.tflite"), *files, "--json", "-k", "1")
    for proc in (by_onnx, by_tflite):
        assert proc.returncode == 0, proc.stderr
    onnx, tflite = ([json.loads(line) for line in p.stdout.splitlines()] for p in (by_onnx, by_tflite))
    assert [r["top"][0]["label"] for r in tflite] == [r["top"][0]["label"] for r in onnx]
    assert tflite[0]["runtime"] == f"tflite on tflite ({export / 'model.tflite'})"
    assert onnx[0]["runtime"].startswith("onnx on onnxruntime")


def test_serve_runtime_tflite_serves_the_int8_file(export: Path, run: Path, tmp_path: Path) -> None:
    files, pixels = _val_pixels(run, 2)
    with running_server(export, tmp_path, "--runtime", "tflite") as server:
        meta = httpx.get(f"{server.url}/v2/models/digits").json()
        assert meta["platform"] == "tensorflow_lite"
        r = httpx.post(
            f"{server.url}/v1/predict", files=[("file", (files[0].name, files[0].read_bytes(), "image/png"))]
        )
        assert r.status_code == 200, r.text
        body = {
            "inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
            ]
        }
        infer = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
        assert infer.status_code == 200, infer.text
        probs = next(o for o in infer.json()["outputs"] if o["name"] == "probabilities")
        assert probs["shape"] == [2, 3] and abs(sum(probs["data"][:3]) - 1) < 0.02
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'runtime="tflite"' in metrics
        assert "digits: tflite on cpu, int8 at http" in server.log_text()


def test_serve_check_names_the_savedmodel_and_the_chosen_tflite_file(export: Path) -> None:
    saved = run_cli("serve", str(export), "--runtime", "savedmodel", "--check")
    fp16 = run_cli("serve", str(export), "--runtime", "tflite", "--model-variant", "fp16", "--check")
    for proc in (saved, fp16):
        assert proc.returncode == 0, proc.stderr
    assert json.loads(saved.stdout)["runtime"] == "savedmodel"
    assert (json.loads(fp16.stdout)["runtime"], json.loads(fp16.stdout)["variant"]) == ("tflite", "fp16")
    one_line_error(run_cli("serve", str(export), "--model-variant", "fp16", "--check"), 2, "--runtime tflite")


def test_tf_serving_rest_equals_the_savedmodel_in_tensorflow(
    onnx_server: Server, run: Path, savedmodel: Path, tmp_path: Path
) -> None:
    tf = import_tensorflow()
    _, pixels = _val_pixels(run, 4)
    r = httpx.post(f"{onnx_server.url}/v1/models/digits:predict", json={"instances": pixels.tolist()})
    assert r.status_code == 200, r.text
    served = np.array([p["probabilities"] for p in r.json()["predictions"]], np.float32)
    loaded = tf.saved_model.load(str(savedmodel)).signatures["serving_default"]
    by_tf = loaded(pixels=tf.constant(pixels))["probabilities"].numpy()
    assert (served.argmax(1) == by_tf.argmax(1)).all()
    assert np.abs(served - by_tf).max() <= 1e-4

    np.save(tmp_path / "pixels.npy", pixels)
    cli = subprocess.run(
        [
            str(Path(sys.executable).with_name("saved_model_cli")),
            "run",
            "--dir", str(savedmodel),
            "--tag_set", "serve",
            "--signature_def", "serving_default",
            "--inputs", f"pixels={tmp_path / 'pixels.npy'}",
            "--outdir", str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    by_cli = np.load(tmp_path / "out" / "probabilities.npy")
    assert (served.argmax(1) == by_cli.argmax(1)).all()
    assert np.abs(served - by_cli).max() <= 1e-4


def test_the_bytes_signature_agrees_with_duet_serve_on_a_png(onnx_server: Server, run: Path, savedmodel: Path) -> None:
    tf = import_tensorflow()
    files = [f for f, _ in val_files(run)[:4]]
    signature = tf.saved_model.load(str(savedmodel)).signatures["serving_bytes"]
    by_tf = signature(image_bytes=tf.constant([f.read_bytes() for f in files]))["probabilities"].numpy()
    for f, p in zip(files, by_tf):
        r = httpx.post(
            f"{onnx_server.url}/v1/predict",
            files=[("file", (f.name, f.read_bytes(), "image/png"))],
            params={"top_k": 1},
        )
        assert r.status_code == 200, r.text
        labels = read_package(run / "export").labels
        assert r.json()["predictions"][0]["label"] == labels[int(p.argmax())]


def test_one_line_errors_for_what_cannot_run(run: Path, export: Path, small_export: Path, tmp_path: Path) -> None:
    image = val_files(run)[0][0]
    one_line_error(
        run_cli("evaluate", str(small_export), "--format", "tflite-int8"),
        4,
        "has no tflite-int8 format (it has: onnx)",
        "duet export RUN --format onnx,tflite-int8",
    )
    one_line_error(run_cli("evaluate", str(image)), 4, "is not a model duet can run", str(image))
    one_line_error(
        run_cli("predict", str(run), str(image), "--format", "onnx-int8"),
        4,
        "has no int8 variant",
        "duet export RUN --quantize int8",
    )
    one_line_error(run_cli("evaluate", str(run), "--format", "tflite-int4"), 2, "`--format` must be one of")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_LITERT)
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    one_line_error(
        run_cli("predict", str(export / "model.int8.tflite"), str(image), env=env), 2, "pip install 'duet[tf]'"
    )


# Python imports `sitecustomize` at start-up from PYTHONPATH: with this one, LiteRT is "not installed".
NO_LITERT = """
import sys


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ai_edge_litert":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""
