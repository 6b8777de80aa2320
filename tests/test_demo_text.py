"""`duet demo --text`: the whole text pipeline on stdlib docstrings (shipped with Python), through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import one_line_error, run_cli

from duet.data.text.corpora import STDLIB_MODULES
from duet.data.text.read import read_corpus


@pytest.mark.e2e
def test_the_text_demo_trains_exports_predicts_raw_strings_and_catches_unseen_modules(tmp_path: Path) -> None:
    proc = run_cli("demo", "--text", "--dir", str(tmp_path / "demo"), "--epochs", "12", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)

    # The corpus is written in the Keras layout and reads back whole: one class per module, nothing skipped.
    corpus = read_corpus(Path(summary["data"]))
    assert corpus.classes == tuple(sorted(STDLIB_MODULES)) == tuple(summary["classes"])
    assert len(corpus.texts) == summary["documents"] > 500 and not corpus.skipped and not corpus.replaced

    # 9 classes: chance is about 11-19 %; both sides learn the modules' vocabularies.
    assert summary["test_accuracy"] > 0.6 and summary["baseline_test_accuracy"] > 0.6
    parity = summary["parity"]
    assert parity["passed"] and parity["ids_differ"] == 0 and parity["max_abs_prob_diff"] <= 1e-4
    assert (Path(summary["export"]) / "model.onnx").is_file()

    # Three raw strings of three classes through the exported graph.
    predictions = summary["predictions"]
    assert len({p["true"] for p in predictions}) == 3
    assert all(p["label"] in STDLIB_MODULES and 0 < p["probability"] <= 1 for p in predictions)

    assert summary["drift"]["held-out texts"]["status"] == "no_drift"
    assert summary["drift"]["unseen modules"]["status"] == "drift"


def test_tabular_and_text_together_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("demo", "--text", "--tabular", "--dir", str(tmp_path / "demo"))
    one_line_error(proc, 2, "--tabular and --text")
    assert not (tmp_path / "demo").exists()
