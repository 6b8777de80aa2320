"""Specifications for duet.evaluation.report: metrics over arrays and the report files; and
for the drift report page (duet.monitor.drift_report) as a person reads it."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from duet.evaluation.metrics import compute_metrics
from duet.evaluation.report import confusion_figure, format_summary, render_markdown, write_report
from helpers import run_cli, write_digit_folder

LABELS = ["cat", "dog", "fox"]
# true:      cat  cat  cat  dog  dog  fox
# predicted: cat  cat  dog  dog  dog  cat
Y_TRUE = np.array([0, 0, 0, 1, 1, 2], dtype=np.int64)
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.6, 0.1],  # cat taken for dog; cat is second
        [0.1, 0.7, 0.2],
        [0.2, 0.5, 0.3],
        [0.5, 0.1, 0.4],  # fox taken for cat; fox is second
    ],
    dtype=np.float32,
)


def by_label(metrics: dict, label: str) -> dict:
    return next(row for row in metrics["per_class"] if row["label"] == label)


def test_metrics_match_a_hand_computed_example() -> None:
    m = compute_metrics(Y_TRUE, PROBS, LABELS, top_k=2)
    assert m["num_images"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top_k_accuracy"] == {"k": 2, "value": 1.0}
    assert m["confusion_matrix"]["labels"] == LABELS
    assert (m["confusion_matrix"]["rows"], m["confusion_matrix"]["columns"]) == ("true", "predicted")
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    cat, dog, fox = (by_label(m, name) for name in LABELS)
    assert cat["precision"] == pytest.approx(2 / 3) and cat["recall"] == pytest.approx(2 / 3)
    assert dog["precision"] == pytest.approx(2 / 3) and dog["recall"] == 1.0
    assert fox == {"label": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])
    expected_loss = -np.mean(np.log(PROBS[np.arange(6), Y_TRUE].astype(np.float64)))
    assert m["log_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert m["most_confused"] == [
        {"true": "cat", "predicted": "dog", "count": 1},
        {"true": "fox", "predicted": "cat", "count": 1},
    ]


def test_top_k_is_capped_below_the_number_of_classes() -> None:
    """With k >= C every class is in the top k: 100 % whatever the model does."""
    m = compute_metrics(Y_TRUE, PROBS, LABELS)
    assert m["top_k_accuracy"] == {"k": 2, "value": 1.0}


def test_two_classes_report_no_top_k() -> None:
    y_true = np.array([0, 1, 1, 0])
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])  # every image wrong
    m = compute_metrics(y_true, probs, ["face", "other"])
    assert m["accuracy"] == 0.0 and m["top_k_accuracy"] is None
    assert "top-" not in format_summary(m)
    md = render_markdown(m, title="t", context={"split": "test"}, misclassified=[])
    assert "Top-" not in md and "100.00%" not in md


def test_binary_case_works() -> None:
    y_true = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    m = compute_metrics(y_true, probs, ["no", "yes"], top_k=1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["top_k_accuracy"] is None  # top-1 is the accuracy itself
    assert m["confusion_matrix"]["matrix"] == [[1, 1], [1, 2]]


def test_class_without_support_still_has_a_row() -> None:
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = compute_metrics(y_true, probs, LABELS)
    assert by_label(m, "fox") == {"label": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"]["matrix"][2] == [0, 0, 0]
    assert m["macro"]["f1"] == 1.0  # averaged over the classes that occur, not dragged down by fox
    assert m["most_confused"] == []
    assert math.isfinite(m["log_loss"])
    assert "worst      cat" in format_summary(m)


def test_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        compute_metrics(Y_TRUE, PROBS * 3.0, LABELS)
    with pytest.raises(ValueError, match="y_true values"):
        compute_metrics(np.array([0, 3]), PROBS[:2], LABELS)


def test_summary_names_accuracy_macro_f1_and_worst_class() -> None:
    summary = format_summary(compute_metrics(Y_TRUE, PROBS, LABELS))
    assert "66.67%" in summary
    assert "macro F1" in summary
    assert "worst      fox (recall 0.00%, support 1)" in summary


def test_write_report_creates_json_markdown_and_png(tmp_path: Path) -> None:
    metrics = compute_metrics(Y_TRUE, PROBS, LABELS)
    misclassified = [
        {"path": "cat/3.png", "true": "cat", "predicted": "dog", "confidence": 0.6},
        {"path": "fox/6.png", "true": "fox", "predicted": "cat", "confidence": 0.5},
    ]
    paths = write_report(
        metrics,
        tmp_path / "eval",
        title="Evaluation: demo",
        context={"run": "demo", "split": "val"},
        misclassified=misclassified,
    )
    assert set(paths) == {"json", "md", "png"}
    assert all(path.is_file() for path in paths.values())

    document = json.loads(paths["json"].read_text())
    assert document["title"] == "Evaluation: demo"
    assert document["context"] == {"run": "demo", "split": "val"}
    assert document["metrics"] == metrics
    assert document["misclassified"] == misclassified

    assert paths["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    md = paths["md"].read_text()
    assert md.startswith("# Evaluation: demo")
    for row in metrics["per_class"]:
        line = f"| {row['label']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
        assert line in md
    assert "| cat | 2 | 1 | 0 |" in md  # confusion matrix row
    assert "| true ↓ / predicted → | cat | dog | fox |" in md
    assert "## Summary (val split)" in md
    assert "`fox/6.png`" in md
    assert not list((tmp_path / "eval").glob(".*.tmp"))


def test_markdown_points_to_png_when_there_are_many_classes() -> None:
    labels = [f"class_{i}" for i in range(31)]
    y_true = np.arange(31)
    probs = np.eye(31) * 0.9 + 0.1 / 31
    md = render_markdown(compute_metrics(y_true, probs, labels), title="t", context={}, misclassified=[])
    assert "confusion_matrix.png" in md
    assert "| class_30 |" in md  # still in the per-class table


def test_confusion_png_labels_both_axes_and_names_the_split() -> None:
    fig = confusion_figure(compute_metrics(Y_TRUE, PROBS, LABELS), "test")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "true class" and ax.get_xlabel() == "predicted class"
    assert "test split" in ax.get_title()


# --------------------------------------------------------------------------- the drift report page


class _Page(HTMLParser):
    """The page's style sheet, its visible text, and each text with the classes of the elements around it."""

    def __init__(self) -> None:
        super().__init__()
        self.css, self.text, self.stack = "", [], []
        self.runs: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("img", "br"):
            self.stack.append((tag, dict(attrs).get("class") or ""))

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1][0] == "style":
            self.css += data
        elif data.strip():
            self.text.append(data)
            self.runs.append((data, [c for _, c in self.stack]))


@pytest.fixture(scope="module")
def same_images_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Page, dict, Path, Path]:
    """A real run's drift report on its own reference images: 16 px greyscale digits
    (width, height, aspect ratio and saturation each take one value), and the
    same embeddings on both sides, so the unbiased MMD² is below 0 by construction."""
    from duet.monitor.check import drift_check
    from duet.training.config import build_config
    from duet.training.loop import train

    base = tmp_path_factory.mktemp("drift-report")
    data = write_digit_folder(base / "data", classes=(0, 1), per_class=40, size=16)
    cfg = build_config(
        None,
        {
            "data_dir": data,
            "model": "test_resnet",
            "image_size": 16,
            "batch_size": 16,
            "epochs": 1,
            "workers": 0,
            "val_split": 0.5,
            "out": base / "runs",
            "name": "r",
        },
    )
    run = train(cfg, progress=False, log=lambda _m: None).run_dir
    with open(run / "manifest.csv", newline="") as f:
        held_out = [r["path"] for r in csv.DictReader(f) if r["split"] == "val" and r["status"] == "ok"]
    for rel in held_out:
        (base / "same" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / rel, base / "same" / rel)
    checked = drift_check(
        run, base / "same", out_dir=base / "report", device="cpu", workers=0, progress=False, log=lambda _m: None
    )
    page = _Page()
    page.feed(checked.files["html"].read_text(encoding="utf-8"))
    return page, json.loads(checked.files["json"].read_text(encoding="utf-8")), run, base / "same"


@pytest.mark.e2e
def test_a_negative_mmd2_is_shown_as_about_zero_and_kept_raw_in_the_json(same_images_report: tuple) -> None:
    page, document, run, same = same_images_report
    embedding = next(d for d in document["detectors"] if d["detector"] == "embedding")
    assert embedding["statistic"] < 0 and embedding["details"]["mmd2_unbiased"] == embedding["statistic"]
    text = " ".join(page.text)
    assert "MMD² ≈ 0" in text and "below 0" in text
    assert not re.search(r"MMD²\s*=?\s*[-\u2212]\s*\d", text), re.findall(r"MMD².{0,12}", text)
    terminal = run_cli(
        "drift",
        str(run),
        "--data",
        str(same),
        "--out",
        str(same.parent / "cli-report"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
    )
    assert terminal.returncode == 0, terminal.stderr
    assert "MMD² ≈ 0" in terminal.stdout and not re.search(r"MMD²\s*=?\s*-\d", terminal.stdout), terminal.stdout


@pytest.mark.e2e
def test_a_constant_image_statistic_is_stated_not_drawn_as_an_empty_block(same_images_report: tuple) -> None:
    page = same_images_report[0]
    note = " ".join(text for text, classes in page.runs if "constant" in classes)
    for stat, value in (
        ("width", "all images: 16 px"),
        ("height", "all images: 16 px"),
        ("aspect_ratio", "all images: 1.00"),
        ("saturation", "all images: 0"),
    ):
        assert stat in note and value in note, note
    assert "brightness" not in note  # it varies: drawn as histograms


@pytest.mark.e2e
def test_numbers_in_image_captions_never_break_inside(same_images_report: tuple) -> None:
    """The cards used `word-break: break-all`, which split "100%" into "10" / "0%"."""
    page = same_images_report[0]
    rules = dict(re.findall(r"([^{}]+)\{([^}]*)\}", page.css))
    rules = {k.strip(): v for k, v in rules.items()}
    assert "break-all" not in page.css
    assert "white-space:nowrap" in rules[".n"].replace(" ", "")
    percentages = [(text, classes) for text, classes in page.runs if re.search(r"\d%", text) and "card" in classes]
    assert percentages and all(classes[-1] == "n" for _, classes in percentages), percentages
