"""``duet bench export``: one table, a row per format the export holds, measured in one run
(real exports of the session's small run, real runtimes, the CLI in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch  # noqa: F401  # before TensorFlow (duet.system.tensorflow_import)

from helpers import one_line_error, run_cli

TINY_BENCH = ["--latency-runs", "5", "--throughput-batches", "2", "--batch-size", "8", "--threads", "1", "--quiet"]


def bench(model: Path, out: Path) -> dict:
    proc = run_cli("bench", "export", str(model), "--out", str(out), *TINY_BENCH)
    assert proc.returncode == 0, proc.stderr
    assert f"written: {out}" in proc.stdout
    result = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    return result


def assert_measured(row: dict) -> None:
    assert 0.0 <= row["accuracy"] <= 1.0, row
    for key in ("size_mb", "p50_ms", "p90_ms", "images_per_s", "load_s"):
        assert row[key] > 0, (key, row)
    assert row["p90_ms"] >= row["p50_ms"], row


@pytest.mark.e2e
def test_every_exported_format_gets_a_row_and_the_others_none(small_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="tflite-int8 export needs the tf extra (tensorflow-cpu)")
    pytest.importorskip("ai_edge_litert", reason="the TFLite row runs on LiteRT (ai-edge-litert, the tf extra)")
    export = tmp_path / "export"
    formats = ["--format", "onnx,tflite-int8", "--quantize", "int8"]
    # 12 points: the 1-epoch run has 18 validation images, one flip is 5.6 points (as in test_quantize.py)
    proc = run_cli("export", str(small_run), "--out", str(export), *formats, "--int8-tolerance", "12", "-q")
    assert proc.returncode == 0, proc.stderr

    result = bench(export, tmp_path / "bench.json")

    assert [r["format"] for r in result["rows"]] == ["pytorch", "onnx", "onnx-int8", "tflite-int8"]
    assert result["skipped"] == []
    for row in result["rows"]:
        assert_measured(row)
    rows = {r["format"]: r for r in result["rows"]}
    assert rows["pytorch"]["agrees_with_pytorch"] is None  # the reference itself
    assert rows["onnx"]["agrees_with_pytorch"] == 1.0  # fp32 passed its parity gate on this very split
    assert rows["tflite-int8"]["size_mb"] < 0.3 * rows["onnx"]["size_mb"]
    assert result["split"] == "val" and result["images"] > 0 and result["threads"] == 1
    assert result["environment"]["threads"].startswith("1 intra-op thread")
    # the table on stdout and in the .md beside the JSON: the exported formats, nothing else
    md = (tmp_path / "bench.md").read_text()
    for text in (result["stdout"], md):
        for label in ("PyTorch", "ONNX int8", "TFLite int8"):
            assert label in text
        assert "SavedModel" not in text and "TFLite fp16" not in text


@pytest.mark.e2e
def test_an_onnx_only_export_is_measured_from_its_run_folder(
    small_run: Path, small_export: Path, tmp_path: Path
) -> None:
    result = bench(small_run, tmp_path / "bench.json")
    assert [r["format"] for r in result["rows"]] == ["pytorch", "onnx"]
    for row in result["rows"]:
        assert_measured(row)
    assert result["export_dir"] == str(small_export)
    assert result["rows"][0]["file"] == "model.safetensors" and result["rows"][1]["file"] == "model.onnx"


@pytest.mark.e2e
def test_a_run_without_export_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    proc = run_cli("bench", "export", str(tmp_path / "run"), "--out", str(tmp_path / "b.json"))
    one_line_error(proc, 4, "has not been exported yet", "duet export")
    assert not (tmp_path / "b.json").exists()
