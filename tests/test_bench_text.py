"""``duet bench text``: the stdlib docstring corpus trained by ``duet train`` and exported, beside TF-IDF + LR on
the same splits (a small real run: two seeds, both models, one epoch; the CLI in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import one_line_error, run_cli

pytestmark = pytest.mark.e2e

MODELS = ("fasttext", "text_transformer")


def test_stdlib_two_seeds_both_models_exported_beside_tfidf_lr(tmp_path: Path) -> None:
    out, work = tmp_path / "bench.json", tmp_path / "work"
    proc = run_cli(
        "bench", "text", "--corpora", "stdlib", "--seeds", "2", "--epochs", "1", "--threads", "1",
        "--work", str(work), "--out", str(out), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"written: {out}" in proc.stdout
    result = json.loads(out.read_text())
    assert result["environment"]["torch threads"] == "1"
    assert result["settings"] == {"test_split": 0.2, "epochs": 1}

    runs = result["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [(m, s) for s in (0, 1) for m in (*MODELS, "tfidf_lr")]
    documents = len(list((work / "stdlib").rglob("*.txt")))
    for r in runs:
        assert r["corpus"] == "stdlib" and r["train_docs"] + r["val_docs"] + r["test_docs"] == documents, r
        assert r["test_docs"] > 100 and r["infer_split"] == "test"
        assert r["train_seconds"] > 0 and r["train_docs_per_s"] > 0 and r["infer_docs_per_s"] > 0
    for r in (r for r in runs if r["model"] in MODELS):
        assert r["epochs_done"] == 1 and r["parity_max_abs_prob_diff"] <= 1e-4
        # the exported graph, fed raw strings, scores the test split as the run's own test did
        assert r["served_accuracy"] == pytest.approx(r["test_accuracy"], abs=1.5 / r["test_docs"])
    baseline = [r for r in runs if r["model"] == "tfidf_lr"]
    assert all(r["val_accuracy"] > 0.6 and r["test_accuracy"] > 0.6 for r in baseline), baseline  # 9 classes

    # The two seeds are two splits, and every model of a seed trained on the same one.
    splits = {p.parent.name: json.loads(p.read_text()) for p in (work / "runs").glob("*/splits.json")}
    assert len(splits) == 4
    for seed in (0, 1):
        assert splits[f"stdlib-fasttext-{seed}"] == splits[f"stdlib-text_transformer-{seed}"]
    assert splits["stdlib-fasttext-0"]["test"] != splits["stdlib-fasttext-1"]["test"]
    assert all((work / "runs" / name / "export" / "model.onnx").is_file() for name in splits)

    summary = {s["model"]: s for s in result["summary"]}
    assert list(summary) == [*MODELS, "tfidf_lr"]
    tests = [r["test_accuracy"] for r in runs if r["model"] == "fasttext"]
    assert summary["fasttext"]["test_accuracy"]["mean"] == pytest.approx(sum(tests) / 2)
    gap = 100 * (summary["fasttext"]["test_accuracy"]["mean"] - summary["tfidf_lr"]["test_accuracy"]["mean"])
    assert summary["fasttext"]["test_gap_points"] == pytest.approx(gap)
    assert summary["fasttext"]["test_within_goal"] == (gap >= -1)
    assert "val_gap_points" not in summary["tfidf_lr"]

    md = out.with_suffix(".md").read_text()
    train, val, test = (runs[0][f"{k}_docs"] for k in ("train", "val", "test"))
    assert f"| stdlib | {train}/{val}/{test} | fasttext |" in md and "| tfidf_lr |" in md
    assert "command: duet bench text --corpora stdlib" in md and "machine: " in md


def test_an_unknown_corpus_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("bench", "text", "--corpora", "imdb", "--out", str(tmp_path / "b.json"), "--quiet")
    one_line_error(proc, 2, "--corpora", "stdlib, libs", "imdb")
    assert not (tmp_path / "b.json").exists()
