"""``duet bench export``: one table, a row per format the export holds, measured in one run
(real exports of the session's small run, real runtimes, the CLI in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
def test_every_exported_format_gets_a_row_and_the_others_none(small_tf_run: Path, tmp_path: Path) -> None:
    result = bench(small_tf_run, tmp_path / "bench.json")  # the run folder: its export/ has --format all

    formats = ["pytorch", "onnx", "savedmodel", "tflite", "tflite-fp16", "tflite-int8"]
    assert [r["format"] for r in result["rows"]] == formats  # no ONNX int8: exported without --quantize
    assert result["skipped"] == []
    for row in result["rows"]:
        assert_measured(row)
    rows = {r["format"]: r for r in result["rows"]}
    assert rows["pytorch"]["agrees_with_pytorch"] is None  # the reference itself
    for fmt in ("onnx", "savedmodel", "tflite"):  # fp32 formats passed exact gates on this very split
        assert rows[fmt]["agrees_with_pytorch"] == 1.0 and rows[fmt]["accuracy"] == rows["pytorch"]["accuracy"]
    assert rows["tflite-int8"]["size_mb"] < 0.3 * rows["tflite"]["size_mb"]
    assert rows["savedmodel"]["file"].startswith("savedmodel/")  # the version folder, its size in total
    assert result["split"] == "val" and result["images"] > 0 and result["threads"] == 1
    assert result["environment"]["threads"].startswith("1 intra-op thread")
    # the table on stdout and in the .md beside the JSON
    md = (tmp_path / "bench.md").read_text()
    for text in (result["stdout"], md):
        for label in ("PyTorch", "SavedModel", "TFLite fp16", "TFLite int8"):
            assert label in text
        assert "ONNX int8" not in text


@pytest.mark.e2e
def test_an_onnx_export_with_int8_has_those_rows_only(small_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    # 12 points: the 1-epoch run has 18 validation images, one flip is 5.6 points (as in test_quantize.py)
    proc = run_cli("export", str(small_run), "--out", str(export), "--quantize", "int8", "--int8-tolerance", "12", "-q")
    assert proc.returncode == 0, proc.stderr

    result = bench(export, tmp_path / "bench.json")  # the export folder: its run is found from model.json

    assert [r["format"] for r in result["rows"]] == ["pytorch", "onnx", "onnx-int8"]
    for row in result["rows"]:
        assert_measured(row)
    assert [r["file"] for r in result["rows"]] == ["model.safetensors", "model.onnx", "model.int8.onnx"]
    assert result["export_dir"] == str(export) and result["skipped"] == []
    assert "TFLite" not in result["stdout"] and "SavedModel" not in result["stdout"]


@pytest.mark.e2e
def test_a_run_without_export_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    proc = run_cli("bench", "export", str(tmp_path / "run"), "--out", str(tmp_path / "b.json"))
    one_line_error(proc, 4, "has not been exported yet", "duet export")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.e2e
def test_threads_below_one_are_refused_before_anything_runs(small_export: Path, tmp_path: Path) -> None:
    proc = run_cli("bench", "export", str(small_export), "--threads", "0", "--out", str(tmp_path / "b.json"))
    one_line_error(proc, 2, "`--threads` must be >= 1", "Received: --threads=0")
    assert not (tmp_path / "b.json").exists()
