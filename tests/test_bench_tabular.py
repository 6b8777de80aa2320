"""``duet bench tabular``: scikit-learn's bundled tables trained by ``duet train`` beside HistGB on the
same splits (a small real run: one table, two seeds, both models, a few epochs; the CLI in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import one_line_error, run_cli

pytestmark = pytest.mark.e2e


def test_wine_two_seeds_both_models_beside_hist_gb(tmp_path: Path) -> None:
    out, work = tmp_path / "bench.json", tmp_path / "work"
    proc = run_cli(
        "bench", "tabular", "--datasets", "wine", "--seeds", "2", "--epochs", "4", "--threads", "1",
        "--work", str(work), "--out", str(out), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"written: {out}" in proc.stdout
    result = json.loads(out.read_text())
    assert result["environment"]["torch threads"] == "1"

    runs = result["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [
        (m, s) for s in (0, 1) for m in ("tab_mlp", "ft_transformer", "hist_gb")
    ]
    for r in runs:  # wine has 178 rows: 20 % of each class validates, nothing is held out for test
        assert (r["dataset"], r["train_rows"], r["val_rows"], r["test_rows"]) == ("wine", 142, 36, 0), r
        assert r["test_accuracy"] is None
        assert r["train_seconds"] > 0 and r["rows_per_s"] > 0
    hist_gb = [r for r in runs if r["model"] == "hist_gb"]
    assert all(r["val_accuracy"] >= 0.8 for r in hist_gb), hist_gb  # wine is easy for trees
    mlp = [r for r in runs if r["model"] == "tab_mlp"]
    assert all(r["val_accuracy"] > 0.6 and r["epochs_done"] == 4 for r in mlp), mlp  # 3 classes: chance is 0.4

    # The two seeds are two splits, and every model of a seed trained on the same one.
    splits = {p.parent.name: json.loads(p.read_text()) for p in (work / "runs").glob("*/splits.json")}
    assert len(splits) == 4
    for seed in (0, 1):
        assert splits[f"wine-tab_mlp-{seed}"] == splits[f"wine-ft_transformer-{seed}"]
    assert splits["wine-tab_mlp-0"]["val"] != splits["wine-tab_mlp-1"]["val"]

    summary = {s["model"]: s for s in result["summary"]}
    assert list(summary) == ["tab_mlp", "ft_transformer", "hist_gb"]
    vals = [r["val_accuracy"] for r in mlp]
    assert summary["tab_mlp"]["val_accuracy"]["mean"] == pytest.approx(sum(vals) / 2)
    gap = 100 * (summary["tab_mlp"]["val_accuracy"]["mean"] - summary["hist_gb"]["val_accuracy"]["mean"])
    assert summary["tab_mlp"]["val_gap_points"] == pytest.approx(gap)
    assert summary["tab_mlp"]["within_goal"] == (gap >= -1)
    assert "val_gap_points" not in summary["hist_gb"]

    md = out.with_suffix(".md").read_text()
    assert "| wine | 142/36/0 | tab_mlp |" in md and "| wine | 142/36/0 | hist_gb |" in md
    assert "command: duet bench tabular --datasets wine" in md and "machine: " in md


def test_an_unknown_table_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("bench", "tabular", "--datasets", "iris2", "--out", str(tmp_path / "b.json"), "--quiet")
    one_line_error(proc, 2, "--datasets", "breast_cancer, wine, digits", "iris2")
    assert not (tmp_path / "b.json").exists()
