"""`duet bench`: the commands run end to end and report every row (speed itself is
proven in docs/benchmarks.md, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli


def test_sample_data_is_reproducible(tmp_path: Path) -> None:
    for out in ("a", "b"):
        proc = run_cli("bench", "sample-data", str(tmp_path / out), "--count", "12", "--classes", "3")
        assert proc.returncode == 0, proc.stderr
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(a) == 12 and len({p.parent for p in a}) == 3
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)


def test_bench_data_reports_every_pipeline_on_the_same_files(tmp_path: Path) -> None:
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "24", "--classes", "2").returncode == 0
    proc = run_cli("bench", "data", str(tmp_path / "d"), "--batch-size", "8", "--image-size", "32", "--workers", "1",
                   "--later-epochs", "1", "--no-tf", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    names = [r["name"] for r in result["rows"]]
    assert names == ["torchvision ImageFolder + DataLoader", 'duet "torch"',
                     'duet "cache", first epoch (build included)', 'duet "cache", later epochs']
    assert all(r["images"] == 24 and r["images_per_s"] > 0 for r in result["rows"])
    assert result["rows"][0]["vs_imagefolder"] == 1.0
    assert {"date", "machine", "torch"} <= set(result["environment"])


def test_bench_data_on_too_few_images_says_its_ratios_are_noise(tmp_path: Path) -> None:
    """24 images finish every row in well under a second: the numbers are printed
    but flagged, in the JSON, the table and on stderr, never passed off as a speed-up."""
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "24", "--classes", "2").returncode == 0
    args = ["bench", "data", str(tmp_path / "d"), "--batch-size", "8", "--image-size", "32", "--workers", "1",
            "--later-epochs", "1", "--no-tf", "--quiet"]
    as_json = run_cli(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    warnings = json.loads(as_json.stdout)["warnings"]
    assert len(warnings) == 1 and 'duet "cache", later epochs' in warnings[0] and "sample-data" in warnings[0]
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    assert "noise, not a measurement" in table.stdout
    assert "warning:" in table.stderr and "under 1 s on 24 images" in table.stderr


def test_bench_train_reports_the_model_limit_beside_end_to_end(tmp_path: Path) -> None:
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "16", "--classes", "2").returncode == 0
    proc = run_cli("bench", "train", str(tmp_path / "d"), "--batch-size", "4", "--image-size", "32", "--steps", "2",
                   "--warmup", "1", "--workers", "1", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert rows[0]["name"].startswith("synthetic") and rows[0]["vs_synthetic"] == 1.0
    assert len(rows) == 4 and all(r["images"] == 8 for r in rows)
