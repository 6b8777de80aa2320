"""``duet bench monitor``: the shifts it applies and the tables it measures, on the
digits champion the session already trains (the conftest fixture), at a tiny size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duet.bench.monitor import MIX_KINDS, Prepared, Scenario, markdown, measure, prepare, scenarios, summarise
from duet.bench.shifts import SHIFTS, photo_crops, write_shifted
from duet.monitor.estimate import METHODS
from helpers import run_cli

POOL_IMAGES = 120
WINDOWS = (30, 60)
TRIALS = 6


def digit_like(size: int = 16) -> Image.Image:
    """Dark ink on white paper: a filled square in the middle."""
    a = np.full((size, size, 3), 255, np.uint8)
    a[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 20
    return Image.fromarray(a)


def test_brightness_and_contrast_change_the_pixels_as_named() -> None:
    img, rng = digit_like(), np.random.default_rng(0)
    a = np.asarray(img, np.float64)
    assert np.asarray(SHIFTS["brightness"](img, rng), np.float64).mean() == pytest.approx(0.6 * a.mean(), abs=0.5)
    assert np.asarray(SHIFTS["contrast"](img, rng), np.float64).std() == pytest.approx(0.5 * a.std(), rel=0.05)


def test_scale_and_translate_keep_the_size_and_fill_with_the_paper() -> None:
    img, rng = digit_like(20), np.random.default_rng(0)
    scaled, moved = SHIFTS["scale"](img, rng), SHIFTS["translate"](img, rng)
    assert scaled.size == moved.size == img.size and scaled.mode == moved.mode == "RGB"
    ink = lambda im: np.argwhere(np.asarray(im)[:, :, 0] < 128)  # noqa: E731
    assert len(ink(scaled)) == pytest.approx(0.36 * len(ink(img)), rel=0.25)  # 60 % per side
    assert np.asarray(scaled)[0, 0].tolist() == [255, 255, 255]
    assert (ink(moved).min(0) - ink(img).min(0)).tolist() == [3, 3]  # 15 % of 20 px, down and right


def test_jpeg_and_noise_change_pixels_but_not_the_picture() -> None:
    img, rng = digit_like(), np.random.default_rng(0)
    a = np.asarray(img, np.float64)
    for name in ("jpeg", "noise"):
        b = np.asarray(SHIFTS[name](img, rng), np.float64)
        assert b.shape == a.shape and 0 < np.abs(b - a).mean() < 20
    noisy = np.asarray(SHIFTS["noise"](Image.new("RGB", (64, 64), (128,) * 3), rng), np.float64)
    assert np.std(noisy) == pytest.approx(5.0, rel=0.1)
    assert np.array_equal(noisy[..., 0], noisy[..., 1]) and np.array_equal(noisy[..., 0], noisy[..., 2])  # still grey


def test_photo_crops_are_seeded_squares_of_the_asked_size() -> None:
    a, b = photo_crops(5, 16, seed=3), photo_crops(5, 16, seed=3)
    assert len(a) == 5 and all(im.size == (16, 16) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(photo_crops(1, 16, seed=4)[0]), np.asarray(a[0]))


def test_shifted_files_keep_their_class_folders(tmp_path: Path) -> None:
    (tmp_path / "src" / "7").mkdir(parents=True)
    digit_like().save(tmp_path / "src" / "7" / "a.png")
    out = write_shifted([tmp_path / "src" / "7" / "a.png"], tmp_path / "src", tmp_path / "out", "scale")
    assert out == [tmp_path / "out" / "7" / "a.png"] and Image.open(out[0]).size == (16, 16)


@pytest.fixture(scope="module")
def prepared(digits_champion: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    run, pool = digits_champion
    return prepare(run, pool, work_dir=tmp_path_factory.mktemp("bench-monitor"), max_images=POOL_IMAGES)


@pytest.fixture(scope="module")
def measured(prepared: Prepared) -> dict:
    return summarise(prepared, measure(prepared, windows=WINDOWS, trials=TRIALS), trials=TRIALS, seed=0)


@pytest.mark.e2e
def test_every_scenario_and_window_is_measured(measured: dict) -> None:
    names = [s.name for s in scenarios(list(SHIFTS))]
    assert {"clean", "photo", "prior", *SHIFTS} <= set(names) and len(names) == 9 + 2 * len(MIX_KINDS)
    assert [(r["scenario"], r["window"]) for r in measured["rows"]] == [(n, w) for n in names for w in WINDOWS]
    for r in measured["rows"]:
        assert r["trials"] == TRIALS and set(r["estimates"]) == set(METHODS)
        assert set(r["detectors"]) >= {"embedding", "confidence"}  # whatever else the monitor runs
        assert all(0 <= v <= 1 for v in (r["verdict"], *r["detectors"].values()))
        for e in r["estimates"].values():
            assert 0 <= e["mean_abs_error"] <= e["max_abs_error"] <= 1
    photo = next(r for r in measured["rows"] if r["scenario"] == "photo")
    assert photo["true_accuracy"] == 0.0  # a photo crop is never a right digit
    assert measured["setup"]["pool_images"] == POOL_IMAGES


@pytest.mark.e2e
def test_alarms_on_clean_windows_are_counted_as_false_alarms(prepared: Prepared) -> None:
    """A "clean" pool that is in fact low-contrast digits: every clean window alarms,
    and the table shows them as false alarms."""
    fake = replace(prepared, pools={**prepared.pools, "clean": prepared.pools["contrast"]})
    rows = measure(fake, windows=(30,), trials=4, only=[Scenario("clean")])
    assert [(r["scenario"], r["verdict"]) for r in rows] == [("clean", 1.0)]
    row = next(
        line
        for line in markdown(summarise(fake, rows, trials=4, seed=0)).splitlines()
        if line.startswith("| clean | 30 |")
    )
    assert row.split("|")[4].strip() == "100%"  # the verdict column
    quiet = measure(prepared, windows=(30,), trials=4, only=[Scenario("clean")])
    assert quiet[0]["verdict"] <= 0.5  # the real clean pool: calibrated for ~4 %


@pytest.mark.e2e
def test_scaled_digits_lower_the_true_accuracy_and_every_estimate(measured: dict) -> None:
    at = {(r["scenario"], r["window"]): r for r in measured["rows"]}
    clean, scaled = at[("clean", 60)], at[("scale", 60)]
    assert scaled["true_accuracy"] < clean["true_accuracy"] - 0.3  # ~20 % vs ~88 % measured
    for m in METHODS:
        assert scaled["estimates"][m]["mean_estimate"] < clean["estimates"][m]["mean_estimate"]


@pytest.mark.e2e
def test_the_command_writes_json_and_markdown_and_refuses_half_a_setup(
    tmp_path: Path, digits_champion: tuple[Path, Path]
) -> None:
    run, pool = digits_champion
    out = tmp_path / "m.json"
    proc = run_cli(
        "bench",
        "monitor",
        "--run",
        str(run),
        "--pool",
        str(pool),
        "--work",
        str(tmp_path / "w"),
        "--windows",
        "30",
        "--trials",
        "2",
        "--max-images",
        "60",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["command"].startswith("duet bench monitor --run") and doc["environment"]["machine"]
    md = out.with_suffix(".md").read_text()
    assert "| clean | 30 |" in md and "command: duet bench monitor" in md and "machine:" in md
    half = run_cli("bench", "monitor", "--run", str(run))
    assert half.returncode == 2 and half.stderr.strip().count("\n") == 0 and "--pool" in half.stderr
