"""The learning-curves picture (duet.training.curves): read from metrics.jsonl, drawn, written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from duet.training.curves import read_rows, render_curves_png, write_curves


def _rows(n: int, *, val: bool = True) -> list[dict[str, float]]:
    rows = []
    for e in range(1, n + 1):
        row = {"epoch": e, "train_loss": 1.0 / e, "lr": 0.001 * (n - e + 1) / n}
        if val:
            row |= {"val_loss": 1.2 / e, "val_accuracy": min(0.5 + 0.1 * e, 0.9)}
        rows.append(row)
    return rows


def test_a_torn_last_line_and_non_epoch_lines_are_left_out(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in _rows(3)) + '\n{"note": 1}\n{"epoch": 4, "train_lo')
    assert [r["epoch"] for r in read_rows(metrics)] == [1, 2, 3]
    assert read_rows(tmp_path / "missing.jsonl") == []


def test_the_picture_has_three_panels_with_or_without_validation() -> None:
    for rows in (_rows(5), _rows(4, val=False), _rows(1)):
        image = Image.open(io.BytesIO(render_curves_png(rows, title="run")))
        assert image.format == "PNG" and image.size == (1200, 360)


def test_write_curves_writes_eval_curves_png_only_after_an_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert write_curves(run) is None and not (run / "eval").exists()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(2)) + "\n")
    out = write_curves(run)
    assert out == run / "eval" / "curves.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (run / "eval").iterdir()] == ["curves.png"]  # no temp file left behind
