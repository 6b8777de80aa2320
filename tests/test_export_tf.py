"""`duet export --format`: the TensorFlow formats, their layout, gates and records.

Each format is loaded back with its own runtime (TensorFlow for the SavedModel,
LiteRT for TFLite) and compared with PyTorch here too, independently of the
gates the exporter ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (before TensorFlow: see duet.system.tensorflow_import)

from duet.exporting import format_gate
from duet.exporting.tf_formats import parse_formats
from helpers import one_line_error, run_cli


def test_parse_formats_orders_them_and_always_keeps_onnx() -> None:
    assert parse_formats("tflite-int8, savedmodel") == ("onnx", "savedmodel", "tflite-int8")
    assert parse_formats("all")[0] == "onnx" and len(parse_formats("all")) == 5
    assert parse_formats(["onnx"]) == ("onnx",)
    with pytest.raises(Exception, match="--format"):
        parse_formats("onnx,coreml")


def test_the_gate_rules_pass_and_fail_where_the_issue_says() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    labels = np.array([0, 1, 0, 1])
    common = {"split": "val", "size_bytes": 30, "fp32_bytes": 100}
    exact = format_gate.judge("tflite", "exact", ref + 5e-5, ref, labels, **common)
    assert exact.passed and exact.disagreements == 0
    off = format_gate.judge("tflite", "exact", ref + 2e-4, ref, labels, **common)
    assert not off.passed and "max |Δprobability|" in off.problems()[0]
    flipped = ref.copy()
    flipped[2] = [0.4, 0.6]  # one of four top-1 flips: 75 % agreement, and one accuracy point in four lost
    assert not format_gate.judge("savedmodel (bytes)", "agreement", flipped, ref, labels, **common).passed
    int8 = format_gate.judge("tflite-int8", "int8", flipped, ref, labels, **common)
    assert int8.loss_points == pytest.approx(25.0) and not int8.passed
    assert format_gate.judge("tflite-int8", "int8", flipped, ref, labels, **common, int8_points=30).passed
    too_big = format_gate.judge("tflite-int8", "int8", ref, ref, labels, split="val", size_bytes=31, fp32_bytes=100)
    assert not too_big.passed and "of the fp32 size" in too_big.problems()[0]
    failed = format_gate.judge(
        "savedmodel (bytes)", "agreement", ref, ref, labels, **common, failed=np.array([1, 0, 0, 0], bool)
    )
    assert failed.disagreements == 1 and failed.failed_inputs == 1 and failed.accuracy == 0.75


@pytest.mark.e2e
def test_every_format_is_written_gated_and_recorded(small_tf_run: Path) -> None:
    from duet.artifacts.model_package import read_package

    export = small_tf_run / "export"
    manifest = json.loads((export / "model.json").read_text())
    name = manifest["name"]
    assert set(manifest["formats"]) == {"onnx", "savedmodel", "tflite", "tflite-fp16", "tflite-int8"}
    for fmt, entry in manifest["formats"].items():
        assert entry["gate"]["passed"] is True, fmt
        for f in entry["files"]:
            assert f in manifest["files"] and (export / f).is_file(), f
    sm = manifest["formats"]["savedmodel"]
    assert sm["path"] == f"savedmodel/{name}/1" and (export / sm["path"] / "saved_model.pb").is_file()
    assert sm["bytes_gate"]["passed"] and sm["bytes_gate"]["top1_agreement"] >= 0.995
    assert (export / sm["path"] / "variables").is_dir()
    config = (export / "savedmodel" / "models.config").read_text()
    assert f'name: "{name}"' in config and f'base_path: "/models/{name}"' in config
    int8 = manifest["formats"]["tflite-int8"]["gate"]
    assert int8["size_ratio"] <= 0.30 and int8["loss_points"] <= 1.0
    assert manifest["formats"]["tflite"]["gate"]["max_abs_prob_diff"] <= 1e-4
    assert "tensorflow" in manifest["versions"] and "ai_edge_litert" in manifest["versions"]
    card = (export / "MODEL_CARD.md").read_text()
    assert "## Other formats" in card and "model.int8.tflite" in card
    package = read_package(export)  # every file, SavedModel included, matches its sha256
    assert package.format_path("tflite-int8") == export / "model.int8.tflite"
    summary = json.loads((small_tf_run.parent / "export-stdout.json").read_text())
    assert set(summary["formats"]) == set(manifest["formats"])


@pytest.mark.e2e
def test_each_format_in_its_own_runtime_matches_onnx(small_tf_run: Path) -> None:
    import onnxruntime as ort

    from duet.system.tensorflow_import import import_tensorflow

    tf = import_tensorflow()  # first: LiteRT may load parts of TensorFlow
    from ai_edge_litert.interpreter import Interpreter

    export = small_tf_run / "export"
    manifest = json.loads((export / "model.json").read_text())
    side = manifest["preprocess"]["image_size"]
    pixels = np.random.default_rng(3).integers(0, 256, (5, 3, side, side), dtype=np.uint8)
    ref = ort.InferenceSession(str(export / "model.onnx")).run(["probabilities"], {"pixels": pixels})[0]

    loaded = tf.saved_model.load(str(export / manifest["formats"]["savedmodel"]["path"]))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    got = loaded.signatures["serving_default"](pixels=tf.constant(pixels))["probabilities"].numpy()
    assert np.abs(got - ref).max() <= 1e-4
    for fmt, tol in (("model.tflite", 1e-4), ("model.fp16.tflite", 1e-2)):
        runner = Interpreter(model_path=str(export / fmt)).get_signature_runner("serving_default")
        out = runner(pixels=pixels)["probabilities"]
        assert np.abs(out - ref).max() <= tol, fmt
    int8 = Interpreter(model_path=str(export / "model.int8.tflite"))
    assert int8.get_input_details()[0]["dtype"] == np.uint8  # full integer, uint8 pixels in
    out = int8.get_signature_runner("serving_default")(pixels=pixels)["probabilities"]
    assert out.dtype == np.float32 and np.allclose(out.sum(1), 1.0, atol=0.05)


@pytest.mark.e2e
def test_a_format_that_fails_its_gate_writes_nothing(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("export"))
    proc = run_cli("export", str(run), "--format", "tflite-int8", "--int8-tolerance", "-100", "--quiet")
    one_line_error(proc, 4, "tflite-int8", "gate", "nothing was written")
    assert not (run / "export").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".export")] == []  # no temporary folder left


@pytest.mark.e2e
def test_tflite_alone_leaves_no_savedmodel_and_bad_formats_are_one_line(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("export"))
    one_line_error(run_cli("export", str(run), "--format", "onnx,coreml"), 2, "--format", "coreml")
    proc = run_cli("export", str(run), "--format", "tflite", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (run / "export" / "model.tflite").is_file() and not (run / "export" / "savedmodel").exists()
    assert set(json.loads((run / "export" / "model.json").read_text())["formats"]) == {"onnx", "tflite"}
