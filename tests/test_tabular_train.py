"""`duet train data.csv --target label` and `duet evaluate RUN` on tables, end to end through the real CLI.

One synthetic table (numeric, boolean and categorical columns, missing values,
repeated rows, a ragged line and a word in a numeric column) is trained once
per module (``synth``) and read by most tests; scikit-learn's wine table checks
``--val-data``. The bad-input corpus is generated in tmp_path: every file
gives one ``error:`` line, a non-zero exit and no traceback.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
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

from helpers import one_line_error, run_cli

pytestmark = pytest.mark.e2e

CITIES = ["Zürich", "Basel", "Genève", "Bern", "Luzern"]
RAGGED_LINE, WRONG_TYPE_LINE = 10, 20  # the synthetic table's two bad lines
# the arguments of the module's run; the SIGINT test repeats them
TRAIN_ARGS = ["--target", "label", "--epochs", "60", "--patience", "0", "--test-split", "0.2"]
TRAIN_ARGS += ["--batch-size", "32", "--device", "cpu", "--seed", "0"]
TIMING_KEYS = {"images_per_s", "epoch_seconds"}  # the only metrics.jsonl fields that may differ between equal runs


def synthetic_rows(n: int, seed: int) -> list[list[str]]:
    """``n`` rows of x1 (numeric, ~5 % missing), x2 (integer), member (yes/no, ~5 % missing),
    city (categorical, ~5 % missing) and a label that depends on all four, with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x1, x2, member = rng.normal(), int(rng.integers(0, 50)), bool(rng.random() < 0.4)
        city = CITIES[int(rng.integers(0, len(CITIES)))]
        score = x1 + 0.04 * x2 + 0.8 * member + (1.0 if city in ("Zürich", "Bern") else 0.0) + rng.normal(0, 0.5)
        label = "low" if score < 1.2 else "mid" if score < 2.6 else "high"
        missing = rng.random(3) < 0.05
        rows.append(
            [
                "" if missing[0] else f"{x1:.4f}",
                str(x2),
                "" if missing[1] else ("yes" if member else "no"),
                "" if missing[2] else city,
                label,
            ]
        )
    return rows


def write_csv(
    path: Path, rows: list[list[str]], header: tuple[str, ...] = ("x1", "x2", "member", "city", "label")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_synthetic(path: Path, n: int = 800, seed: int = 0) -> Path:
    """The synthetic table, with 20 repeated rows, a ragged line (RAGGED_LINE) and a word in
    the numeric column x1 (WRONG_TYPE_LINE); a row at index i is on line i + 2."""
    rows = synthetic_rows(n, seed)
    rows += [list(r) for r in rows[:20]]  # identical rows: the split must keep each on one side
    rows.insert(RAGGED_LINE - 2, ["1.5", "3", "yes"])
    rows.insert(WRONG_TYPE_LINE - 2, ["abc", "7", "no", "Bern", "low"])
    return write_csv(path, rows)


def file_state(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def run_json(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "run.json").read_text(encoding="utf-8")))


def metrics_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@dataclass
class Trained:
    csv: Path
    run: Path
    proc: subprocess.CompletedProcess[str]
    before: tuple[str, int]  # the CSV's sha256 and mtime before training


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The synthetic table trained once (60 epochs of tab_mlp with a test split, ~10 s)."""
    root = tmp_path_factory.mktemp("tabular")
    table = write_synthetic(root / "synthetic.csv")
    before = file_state(table)
    proc = run_cli("train", str(table), *TRAIN_ARGS, "--out", str(root / "runs"), "--name", "whole")
    assert proc.returncode == 0, proc.stderr
    return Trained(table, root / "runs" / "whole", proc, before)


# --------------------------------------------------------------------------- the run folder


def test_a_run_writes_its_folder_and_leaves_the_table_alone(synth: Trained) -> None:
    run = synth.run
    info = run_json(run)
    assert info["modality"] == "tabular" and info["model"] == "tab_mlp"
    assert info["labels"] == ["high", "low", "mid"]
    kinds = {c["name"]: c["kind"] for c in info["columns"]["columns"]}
    assert kinds == {
        "x1": "numeric",
        "x2": "numeric",
        "member": "boolean",
        "city": "categorical",
        "label": "categorical",
    }
    spec = info["tabular_spec"]
    assert [f["name"] for f in spec["numeric"]] == ["x1", "x2", "member"]
    assert [f["has_missing"] for f in spec["numeric"]] == [True, False, True]
    assert sorted(spec["categorical"][0]["tokens"]) == sorted(CITIES)
    assert spec["fitted_rows"] == info["rows"]["train"]  # fitted on the training rows only
    assert 0.0 <= info["baseline"]["val_accuracy"] <= 1.0 and 0.0 <= info["baseline"]["test_accuracy"] <= 1.0
    assert info["best"]["epoch"] >= 1 and 0.0 <= info["best"]["test_accuracy"] <= 1.0
    assert len(metrics_rows(run)) == 60
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "checkpoints" / "last.pt").is_file()
    # the bad lines are skipped, named by line, and training went on with the rest
    skipped = {s["line"]: s["reason"] for s in json.loads((run / "data_report.json").read_text("utf-8"))["skipped"]}
    assert set(skipped) == {RAGGED_LINE, WRONG_TYPE_LINE}, skipped
    assert "fields" in skipped[RAGGED_LINE] and "x1" in skipped[WRONG_TYPE_LINE] and "abc" in skipped[WRONG_TYPE_LINE]
    assert "2 lines of" in synth.proc.stderr and f"line {RAGGED_LINE}:" in synth.proc.stderr  # named, not just counted
    assert sum(info["rows"].values()) == 820  # 800 + 20 repeats, the two bad lines out
    assert file_state(synth.csv) == synth.before  # the input CSV: same bytes, not even touched


def test_the_split_repeats_no_training_row_in_validation_or_test(synth: Trained) -> None:
    from duet.training.tabular_run import load_split_tables

    splits = json.loads((synth.run / "splits.json").read_text("utf-8"))
    indices = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (indices[0] & indices[1]) and not (indices[0] & indices[2]) and not (indices[1] & indices[2])
    assert sum(map(len, indices)) == 820
    tables = load_split_tables(synth.run)
    columns = ["x1", "x2", "member", "city"]

    def keys(split: str) -> set[tuple[str, ...]]:
        t = tables[split]
        return {tuple(repr(t[c][i]) for c in columns) for i in range(len(t["label"]))}

    train = keys("train")
    assert len(train) < len(tables["train"]["label"])  # the repeated rows are in it, so the check can fail
    assert not train & keys("val") and not train & keys("test")


def test_val_data_fixes_the_split_on_a_real_table(tmp_path: Path) -> None:
    """scikit-learn's wine table, split by us into two files: all of the first trains, the second validates."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    header = (*[str(n) for n in wine.feature_names], "cultivar")
    rows = [[*(f"{v:g}" for v in x), f"c{y}"] for x, y in zip(wine.data, wine.target)]
    train = write_csv(tmp_path / "train.csv", [r for i, r in enumerate(rows) if i % 4], header)
    val = write_csv(tmp_path / "val.csv", rows[::4], header)
    proc = run_cli("train", str(train), "--target", "cultivar", "--val-data", str(val), "--epochs", "3", "--device", "cpu",
                   "--out", str(tmp_path / "runs"), "--name", "wine", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rows"] == {"train": 133, "val": 45, "test": 0}
    run = tmp_path / "runs" / "wine"
    assert json.loads((run / "splits.json").read_text("utf-8"))["train"] == list(range(133))
    info = run_json(run)
    assert info["source"]["val_data"] == str(val.resolve())
    assert info["labels"] == ["c0", "c1", "c2"] and info["tabular_spec"]["fitted_rows"] == 133
    assert summary["best_val_accuracy"] > 0.8 and info["baseline"]["val_accuracy"] > 0.8  # wine is easy


def test_the_keras_backend_fits_the_same_spec(synth: Trained, tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorflow") is None:  # not importorskip: TensorFlow stays out of this process
        pytest.skip("the tf extra is not installed")
    proc = run_cli("train", str(synth.csv), *TRAIN_ARGS, "--epochs", "1", "--data-backend", "tf",
                   "--out", str(tmp_path), "--name", "tf", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    numpy_spec, keras_spec = run_json(synth.run)["tabular_spec"], run_json(tmp_path / "tf")["tabular_spec"]
    assert numpy_spec.pop("backend") == "numpy" and keras_spec.pop("backend") != "numpy"
    assert keras_spec == numpy_spec  # same means and stds (exact float64), same vocabularies in the same order


def test_image_flags_are_refused_by_name(synth: Trained, tmp_path: Path) -> None:
    proc = run_cli(
        "train", str(synth.csv), "--target", "label", "--image-size", "32", "--no-hflip", "--out", str(tmp_path)
    )
    one_line_error(proc, 2, "--image-size", "--hflip", "not used for a table")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- interrupt and resume


def test_sigint_then_resume_ends_like_an_uninterrupted_run(synth: Trained, tmp_path: Path) -> None:
    """SIGINT once the first epoch is recorded, then --resume: the same best weights and the
    same metrics rows as the module's uninterrupted run with the same seed."""
    from safetensors.numpy import load_file

    run = tmp_path / "cut"
    args = ["train", str(synth.csv), *TRAIN_ARGS, "--out", str(tmp_path), "--name", "cut", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "duet", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"duet train --resume {run}" in stderr
    assert len(metrics_rows(run)) < 60
    resumed = run_cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_rows(run) == metrics_rows(synth.run)
    whole, cut = (
        load_file(synth.run / "checkpoints" / "best.safetensors"),
        load_file(run / "checkpoints" / "best.safetensors"),
    )
    assert whole.keys() == cut.keys()
    for name in whole:
        np.testing.assert_array_equal(cut[name], whole[name], err_msg=name)
    assert run_json(run)["best"] == run_json(synth.run)["best"]


def test_resuming_a_finished_run_says_so(synth: Trained) -> None:
    state = (synth.run / "run.json").read_bytes()
    proc = run_cli("train", "--resume", str(synth.run))
    one_line_error(proc, 5, "already finished", "--epochs N")
    assert (synth.run / "run.json").read_bytes() == state


# --------------------------------------------------------------------------- duet evaluate


def test_evaluate_reports_the_test_split_with_the_baseline(synth: Trained) -> None:
    proc = run_cli("evaluate", str(synth.run), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    info = run_json(synth.run)
    assert out["split"] == "test" and out["metrics"]["num_images"] == info["rows"]["test"]
    assert out["metrics"]["accuracy"] == pytest.approx(
        info["best"]["test_accuracy"], abs=1e-12
    )  # the same rows, weights
    assert out["baseline"]["accuracy"] == info["baseline"]["test_accuracy"]
    assert out["baseline"]["model_accuracy"] == out["metrics"]["accuracy"]
    report = json.loads((synth.run / "eval" / "report.json").read_text("utf-8"))
    assert report["baseline"] == out["baseline"] and report["metrics"] == out["metrics"]
    matrix = np.asarray(report["metrics"]["confusion_matrix"]["matrix"])
    assert matrix.sum() == info["rows"]["test"] and np.trace(matrix) == round(out["metrics"]["accuracy"] * matrix.sum())
    # a misclassified row is named by its line in the user's file
    lines = synth.csv.read_text("utf-8").splitlines()
    for wrong in report["misclassified"]:
        name, unit, number = wrong["path"].split(" ")
        assert name == synth.csv.name and unit == "line"
        assert lines[int(number) - 1].endswith("," + wrong["true"])
    assert len(report["misclassified"]) == matrix.sum() - np.trace(matrix)
    md = (synth.run / "eval" / "report.md").read_text("utf-8")
    assert "## Baseline" in md and f"{info['baseline']['test_accuracy']:.2%}" in md
    assert (synth.run / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_validation_and_on_another_file(synth: Trained, tmp_path: Path) -> None:
    """Through the Python API (the CLI calls the same function): --split val matches the
    accuracy training chose the epoch by; a new labelled file is evaluated row by row."""
    from duet.evaluation.evaluate import evaluate

    info = run_json(synth.run)
    val = evaluate(synth.run, split="val", out_dir=tmp_path / "val")
    assert val.split == "val" and val.unit == "rows"
    assert val.metrics["accuracy"] == pytest.approx(info["best"]["val_accuracy"], abs=1e-12)
    assert val.baseline is not None and val.baseline["accuracy"] == info["baseline"]["val_accuracy"]
    fresh = write_csv(tmp_path / "fresh.csv", synthetic_rows(300, seed=7))
    other = evaluate(synth.run, data_dir=fresh, out_dir=tmp_path / "fresh")
    assert other.split == "all" and other.metrics["num_images"] == 300 and other.metrics["accuracy"] > 0.5
    assert other.baseline is not None and other.baseline["accuracy"] is None  # never scored on these rows
    assert "not measured" in (tmp_path / "fresh" / "report.md").read_text("utf-8")


def test_evaluate_refuses_what_it_cannot_do(synth: Trained, tmp_path: Path) -> None:
    """Classes the model does not know, and --split with --data (the CLI turns each into one line)."""
    from duet.errors import ConfigError, DataError
    from duet.evaluation.evaluate import evaluate

    rows = [["1.0", "3", "yes", "Bern", "extreme"], ["0.5", "1", "no", "Basel", "low"]]
    unknown = write_csv(tmp_path / "unknown.csv", rows)
    with pytest.raises(DataError, match="classes the model does not know: extreme"):
        evaluate(synth.run, data_dir=unknown, out_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="--split"):
        evaluate(synth.run, data_dir=unknown, split="val", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the bad-input corpus


def _ragged(path: Path) -> list[str]:
    """Every record one field short (the synthetic table shows that training goes on past a few)."""
    path.write_text("a,b,label\n" + "".join(f"{i},{i}\n" for i in range(20)), encoding="utf-8")
    return []


def _wrong_types(path: Path) -> list[str]:
    """Column 'a' declared numeric (config.yaml) but holding words: each such row is skipped, here all."""
    path.write_text("a,b,label\n" + "".join(f"w{i},{i % 3},{'pq'[i % 2]}\n" for i in range(20)), encoding="utf-8")
    config = path.with_suffix(".yaml")
    config.write_text("columns:\n  a: numeric\n", encoding="utf-8")
    return ["--config", str(config)]


def _no_target(path: Path) -> list[str]:
    path.write_text("a,b,y\n" + "".join(f"{i * 0.5},{i % 3},{'pq'[i % 2]}\n" for i in range(30)), encoding="utf-8")
    return []


def _empty(path: Path) -> list[str]:
    path.write_bytes(b"")
    return []


def _one_class(path: Path) -> list[str]:
    path.write_text("a,b,label\n" + "".join(f"{i * 0.5},{i % 3},x\n" for i in range(30)), encoding="utf-8")
    return []


def _latin1(path: Path) -> list[str]:
    path.write_bytes("a,city,label\n1,Bern,x\n2,Genève,y\n".encode("latin-1"))
    return []


BAD_INPUTS = {
    "ragged": (_ragged, "line 2"),
    "wrong-types": (_wrong_types, "line 2: column 'a': 'w0' is not a (finite) number"),
    "no-target": (_no_target, "no column 'label'"),
    "empty": (_empty, "is empty"),
    "one-class": (_one_class, "only 1 class"),
    "not-utf8": (_latin1, "line 3: byte 0xe8 is not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tables_give_one_line(case: str, tmp_path: Path) -> None:
    write, needle = BAD_INPUTS[case]
    table = tmp_path / f"{case}.csv"
    extra = write(table)
    before = file_state(table)
    proc = run_cli("train", str(table), "--target", "label", "--epochs", "1", "--out", str(tmp_path / "runs"), *extra)
    one_line_error(proc, 3, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run
    assert file_state(table) == before


def test_ten_thousand_columns_train_in_bounded_time(tmp_path: Path) -> None:
    """16 rows x 10,000 numeric columns: a working run, well within the time limit."""
    rng = np.random.default_rng(0)
    values = rng.random((16, 10_000))
    rows = [[*(f"{v:.3f}" for v in row), "ab"[i % 2]] for i, row in enumerate(values)]
    table = write_csv(tmp_path / "wide.csv", rows, (*(f"c{j}" for j in range(10_000)), "label"))
    start = time.monotonic()
    proc = run_cli("train", str(table), "--target", "label", "--epochs", "1", "--device", "cpu",
                   "--out", str(tmp_path / "runs"), "--name", "wide", "--json", timeout=180)  # fmt: skip
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    info = run_json(tmp_path / "runs" / "wide")
    assert len(info["tabular_spec"]["numeric"]) == 10_000
    assert seconds < 150, seconds
