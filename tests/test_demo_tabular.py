"""`duet demo --tabular`: the whole tabular pipeline on the bundled breast cancer table, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import run_cli


@pytest.mark.e2e
def test_the_tabular_demo_trains_exports_predicts_and_catches_the_moved_column(tmp_path: Path) -> None:
    proc = run_cli("demo", "--tabular", "--dir", str(tmp_path / "demo"), "--epochs", "15", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert Path(summary["data"]).is_file() and (Path(summary["export"]) / "model.onnx").is_file()
    # 569 biopsies: a model that learned nothing scores the majority share, 63 %.
    assert summary["test_accuracy"] > 0.85 and summary["baseline_test_accuracy"] > 0.85
    assert summary["parity_max_abs_prob_diff"] <= 1e-4
    assert len(summary["predictions"]) == 3
    assert all(p["label"] in ("malignant", "benign") for p in summary["predictions"])
    assert summary["drift"]["new rows"]["status"] == "no_drift"
    assert summary["drift"]["shifted"]["status"] == "drift"
    assert "mean radius" in summary["drift"]["shifted"]["sentence"]
