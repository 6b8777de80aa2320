"""`duet train CORPUS` and `duet evaluate RUN` on text, end to end through the real CLI.

The corpus is real English that ships with Python: the docstrings of five stdlib
modules' functions and classes, each module a class ("which module documents
this?"), written as a folder of class folders of .txt files. The bad files a
real corpus holds are mixed in (an image named .txt, an empty file, a Latin-1
file, a 10 MB document): the run reports each and trains on the rest. The
module's run is trained once (``trained``) and read by most tests; every bad
corpus that cannot train gives one ``error:`` line, a non-zero exit and no traceback.
"""

from __future__ import annotations

import ast
import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import one_line_error, run_cli, snapshot

pytestmark = pytest.mark.e2e

MODULES = {"inspect": "inspect.py", "logging": "logging/__init__.py", "pathlib": "pathlib.py"}
MODULES |= {"tarfile": "tarfile.py", "typing": "typing.py"}
TRAIN_ARGS = ["--epochs", "40", "--patience", "0", "--test-split", "0.2", "--batch-size", "16"]
TRAIN_ARGS += ["--device", "cpu", "--seed", "0"]
TIMING_KEYS = {"images_per_s", "epoch_seconds"}  # the only metrics.jsonl fields that may differ between equal runs
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


def docstrings(relative: str) -> list[str]:
    """The docstrings of a stdlib module's functions and classes, raw (read with ``ast``: no import)."""
    root = Path(json.__file__).parent.parent
    path = root / relative if (root / relative).exists() else root / relative.replace("/__init__.py", ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False))]


def write_corpus(root: Path) -> Path:
    """The stdlib corpus as class folders, plus one file of each kind of trouble."""
    for label, relative in MODULES.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(docstrings(relative)):
            (root / label / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    (root / "inspect" / "image.txt").write_bytes(PNG + bytes(range(256)) * 4)
    (root / "logging" / "empty.txt").write_bytes(b"")
    (root / "pathlib" / "latin1.txt").write_bytes("Return the café's path, résumé style.".encode("latin-1"))
    (root / "typing" / "huge.txt").write_bytes(b"word " * 2_100_000)  # 10.5 MB
    return root


def run_json(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "run.json").read_text(encoding="utf-8")))


def metrics_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@dataclass
class Trained:
    corpus: Path
    run: Path
    proc: subprocess.CompletedProcess[str]
    before: dict[str, tuple[str, int]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The stdlib corpus trained once (fasttext, 40 short epochs, a test split; ~10 s)."""
    root = tmp_path_factory.mktemp("text")
    corpus = write_corpus(root / "corpus")
    before = snapshot(corpus)
    proc = run_cli("train", str(corpus), *TRAIN_ARGS, "--out", str(root / "runs"), "--name", "whole")
    assert proc.returncode == 0, proc.stderr
    return Trained(corpus, root / "runs" / "whole", proc, before)


# --------------------------------------------------------------------------- the run folder


def test_a_run_records_the_contract_and_leaves_the_corpus_alone(trained: Trained) -> None:
    info = run_json(trained.run)
    assert info["modality"] == "text" and info["model"] == "fasttext"
    assert info["labels"] == sorted(MODULES)
    assert info["text_spec"]["version"] == 1 and info["text_spec"]["backend"] == "native"
    assert len(info["text_spec"]["vocabulary"]) > 1000
    docs = info["docs"]
    assert docs["test"] > 0 and docs["val"] > 0 and docs["train"] > docs["val"]
    assert info["best"]["test_accuracy"] > 0.6 and info["best"]["val_accuracy"] > 0.6
    baseline = info["baseline"]
    assert baseline["model"].startswith("sklearn Tfidf") and 0.5 < baseline["test_accuracy"] <= 1.0
    assert baseline["train_docs_per_s"] > 0 and info["throughput"]["predict_docs_per_s"] > 0
    assert (trained.run / "checkpoints" / "best.safetensors").is_file()
    assert snapshot(trained.corpus) == trained.before  # read, never written


def test_bad_files_are_reported_and_the_rest_trains(trained: Trained) -> None:
    report = json.loads((trained.run / "data_report.json").read_text("utf-8"))
    text = json.dumps(report)
    for name in ("inspect/image.txt", "typing/huge.txt", "pathlib/latin1.txt"):
        assert name in text, name
    stderr = trained.proc.stderr
    assert "Traceback" not in stderr
    assert "image.txt" in stderr and "huge.txt" in stderr and "latin1.txt" in stderr
    # the kept documents: the Latin-1 file (with U+FFFD) and the empty one; not the binary or the huge one
    from duet.training.text_run import load_split_corpus

    splits = load_split_corpus(trained.run)
    origins = {o for s in splits.values() for o in s.origins}
    assert "pathlib/latin1.txt" in origins and "logging/empty.txt" in origins
    assert "inspect/image.txt" not in origins and "typing/huge.txt" not in origins
    assert sum(len(s) for s in splits.values()) == sum(run_json(trained.run)["docs"].values())


def test_the_split_keeps_identical_texts_on_one_side(trained: Trained) -> None:
    from duet.training.text_run import load_split_texts

    splits = load_split_texts(trained.run)
    sides = {name: set(texts) for name, (texts, _) in splits.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"])
    assert not (sides["val"] & sides["test"])


# --------------------------------------------------------------------------- interrupt and resume


def test_sigint_then_resume_ends_like_an_uninterrupted_run(trained: Trained, tmp_path: Path) -> None:
    """SIGINT once the first epoch is recorded, then --resume: the same metrics rows and best
    weights as the module's uninterrupted run with the same seed."""
    from safetensors.numpy import load_file

    run = tmp_path / "cut"
    args = ["train", str(trained.corpus), *TRAIN_ARGS, "--out", str(tmp_path), "--name", "cut", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "duet", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"duet train --resume {run}" in stderr
    assert len(metrics_rows(run)) < 40
    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_rows(run) == metrics_rows(trained.run)
    whole, cut = (load_file(r / "checkpoints" / "best.safetensors") for r in (trained.run, run))
    assert whole.keys() == cut.keys()
    for name in whole:
        np.testing.assert_array_equal(cut[name], whole[name], err_msg=name)
    assert run_json(run)["best"] == run_json(trained.run)["best"]


def test_resuming_a_finished_run_says_so(trained: Trained) -> None:
    state = (trained.run / "run.json").read_bytes()
    one_line_error(run_cli("train", "--resume", str(trained.run)), 5, "already finished", "--epochs N")
    assert (trained.run / "run.json").read_bytes() == state


# --------------------------------------------------------------------------- duet evaluate


def test_evaluate_equals_the_run_and_puts_the_baseline_beside_it(trained: Trained) -> None:
    proc = run_cli("evaluate", str(trained.run), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    info = run_json(trained.run)
    assert out["split"] == "test" and out["metrics"]["num_images"] == info["docs"]["test"]
    assert out["metrics"]["accuracy"] == pytest.approx(info["best"]["test_accuracy"], abs=1e-12)
    assert out["baseline"]["accuracy"] == info["baseline"]["test_accuracy"]
    report = json.loads((trained.run / "eval" / "report.json").read_text("utf-8"))
    assert report["metrics"]["unit"] == "documents"
    wrong = report["misclassified"]
    assert len(wrong) == round((1 - out["metrics"]["accuracy"]) * info["docs"]["test"])
    for item in wrong:  # named by origin, with the start of the text
        label, name = item["path"].split("/")
        assert label == item["true"] and (trained.corpus / label / name).is_file() and item["excerpt"]
    markdown = (trained.run / "eval" / "report.md").read_text("utf-8")
    assert "## Baseline" in markdown and "docs/s" in markdown
    assert (trained.run / "eval" / "confusion_matrix.png").stat().st_size > 1000
    val = json.loads(run_cli("evaluate", str(trained.run), "--split", "val", "--json", "-q").stdout)
    assert val["metrics"]["accuracy"] == pytest.approx(info["best"]["val_accuracy"], abs=1e-12)


# --------------------------------------------------------------------------- a table, the transformer


def test_a_table_with_a_text_column_trains_the_transformer(tmp_path: Path) -> None:
    table = tmp_path / "docs.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["doc", "module"])
        for label in ("pathlib", "tarfile"):
            writer.writerows([text, label] for text in docstrings(MODULES[label]))
        writer.writerow(["", "pathlib"])  # a missing text: the row is skipped and named
    config = tmp_path / "text.yaml"  # the vectorisation settings come from --config
    config.write_text("model: text_transformer\nngrams: 2\nsequence_length: 64\nmax_tokens: 1000\n", "utf-8")
    args = ["--text-column", "doc", "--target", "module", "--config", str(config), "--epochs", "4"]
    proc = run_cli("train", str(table), *args, "--device", "cpu", "--out", str(tmp_path), "--name", "tt", "--json")
    assert proc.returncode == 0, proc.stderr
    info = run_json(tmp_path / "tt")
    assert info["model"] == "text_transformer" and info["labels"] == ["pathlib", "tarfile"]
    assert info["source"]["layout"] == "table" and info["best"]["val_accuracy"] > 0.7
    spec = info["text_spec"]
    assert spec["ngrams"] == 2 and spec["sequence_length"] == 64 and len(spec["vocabulary"]) == 1000 - 2
    skipped = json.loads((tmp_path / "tt" / "data_report.json").read_text("utf-8"))
    last_line = len(table.read_text("utf-8").splitlines())  # the docstrings span several lines each
    assert skipped["skipped"] == [{"origin": f"docs.csv line {last_line}", "reason": "no text in the column 'doc'"}]
    assert "Traceback" not in proc.stderr
    out = json.loads(run_cli("evaluate", str(tmp_path / "tt"), "--json", "-q").stdout)
    assert out["metrics"]["accuracy"] == pytest.approx(info["best"]["val_accuracy"], abs=1e-12)
    assert all(
        m["path"].startswith("docs.csv line ")
        for m in json.loads((tmp_path / "tt/eval/report.json").read_text())["misclassified"]
    )


# --------------------------------------------------------------------------- what it refuses


def test_image_flags_are_refused_by_name(trained: Trained, tmp_path: Path) -> None:
    proc = run_cli("train", str(trained.corpus), "--image-size", "32", "--no-hflip", "--out", str(tmp_path))
    one_line_error(proc, 2, "--image-size", "--hflip", "not used for text")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["one_class", "all_binary", "only_punctuation"])
def test_corpora_that_cannot_train_give_one_line(case: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    if case == "one_class":
        (corpus / "only").mkdir(parents=True)
        for i, text in enumerate(docstrings("pathlib.py")[:10]):
            (corpus / "only" / f"{i}.txt").write_text(text, encoding="utf-8")
        needles: tuple[str, ...] = ("1 class", "two classes")
    elif case == "all_binary":
        for label in ("a", "b"):
            (corpus / label).mkdir(parents=True)
            (corpus / label / "x.txt").write_bytes(PNG * 8)
        needles = ("binary",)
    else:
        for label in ("a", "b"):
            (corpus / label).mkdir(parents=True)
            (corpus / label / "x.txt").write_text("!!! ... ???", encoding="utf-8")
        needles = ("holds a word",)
    proc = run_cli("train", str(corpus), "--out", str(tmp_path / "runs"))
    one_line_error(proc, 3, *needles)
    assert not (tmp_path / "runs").exists()
