"""Drift detection on real handwritten digits: a profile, the detectors, their
calibration, the report and the rolling window a server keeps.

Data (fixed seeds): scikit-learn's 1,797 digits written by
``duet.data.digits.write_digits`` at 16 x 16 px; a seeded random 500 train the
champion (``--val-split 0.3``: ~150 held-out images become the reference
profile, ~350 train), the other 1,297 are unseen "production" digits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from duet.monitor.check import observe_files
from duet.monitor.drift import DriftMonitor, Observations, compare, false_alarm_rate
from duet.monitor.profile import ARRAYS_FILE, JSON_FILE, ReferenceProfile, load_profile
from helpers import run_cli

WINDOW = 200  # images per "current" sample in these tests


def corrupt(paths: list[Path], out: Path, kind: str) -> list[Path]:
    """The same digits, changed the way a new camera or pipeline might change them."""
    rng = np.random.default_rng(0)
    written = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        if kind == "rotated":
            img = img.rotate(90)
        elif kind == "inverted":
            img = Image.fromarray(255 - np.asarray(img))
        elif kind == "blurred":
            img = img.filter(ImageFilter.GaussianBlur(1.0))
        elif kind == "noisy":
            noise = rng.normal(0, 40, (img.height, img.width, 1))
            img = Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8))
        dest = out / kind / p.parent.name / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        img.save(dest)
        written.append(dest)
    return written


@pytest.fixture(scope="module")
def champion(digits_champion: tuple[Path, Path]) -> tuple[Path, Path]:
    """The session's digits champion (conftest) and its pool of unseen digits."""
    return digits_champion


@pytest.fixture(scope="module")
def profile(champion: tuple[Path, Path]) -> ReferenceProfile:
    return load_profile(champion[0])


@pytest.fixture(scope="module")
def pool(champion: tuple[Path, Path], profile: ReferenceProfile) -> tuple[Observations, list[Path]]:
    """The model's view of all 1,297 unseen digits (computed once, resampled below)."""
    paths = sorted(champion[1].rglob("*.png"))
    obs, kept, failed = observe_files(champion[0], paths, profile, workers=0, progress=False)
    assert not failed and len(kept) == len(paths)
    return obs, kept


@pytest.fixture(scope="module")
def window_paths(pool: tuple[Observations, list[Path]]) -> np.ndarray:
    return np.sort(np.random.default_rng(1).choice(len(pool[1]), WINDOW, replace=False))


@pytest.mark.e2e
def test_profile_holds_reference_statistics_as_plain_arrays(
    champion: tuple[Path, Path], profile: ReferenceProfile
) -> None:
    folder = champion[0] / "profile"
    doc = json.loads((folder / JSON_FILE).read_text())
    assert doc["schema"] == "duet.profile/1" and doc["labels"] == [str(d) for d in range(10)]
    assert doc["reference"]["split"] == "val" and doc["fit"]["split"] == "train"
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:  # no pickles anywhere
        assert npz["embeddings"].shape == (profile.n_reference, profile.n_components)
    assert 100 <= profile.n_reference <= 200  # ~30% of 500
    assert 1 <= profile.n_components <= 32 and profile.feature_dim > profile.n_components
    assert profile.image_stats.shape == (profile.n_reference, 6)
    assert np.all((profile.confidences > 0) & (profile.confidences <= 1))
    assert profile.sigma2 > 0
    with pytest.raises(ValueError, match="penultimate"):
        profile.project(np.zeros((2, profile.feature_dim + 1), np.float32))


@pytest.mark.e2e
def test_clean_held_out_digits_raise_no_drift(
    pool: tuple[Observations, list[Path]], profile: ReferenceProfile, window_paths: np.ndarray
) -> None:
    """200 unseen, unchanged digits vs the ~150-image reference."""
    result = compare(profile, pool[0].take(window_paths))
    assert not result.drift, result.sentence
    assert len(result.ran()) == 5 and result.status == "no_drift"
    assert result.sentence.startswith("No drift")


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["rotated", "inverted", "blurred", "noisy"])
def test_corrupted_digits_raise_drift(
    kind: str,
    champion: tuple[Path, Path],
    profile: ReferenceProfile,
    pool: tuple[Observations, list[Path]],
    window_paths: np.ndarray,
    tmp_path: Path,
) -> None:
    """The same 200 digits as the clean test, rotated 90°, inverted, blurred (Gaussian,
    radius 1 px) or noisy (Gaussian, sigma 40 grey levels)."""
    paths = corrupt([pool[1][i] for i in window_paths], tmp_path, kind)
    obs, _kept, _ = observe_files(champion[0], paths, profile, workers=0, progress=False)
    result = compare(profile, obs)
    assert result.drift, result.sentence
    assert result.sentence.startswith("Drift detected")
    if kind == "rotated":  # same pixels, moved: only the model-based detectors can see it
        assert result.detector("embedding").drift and not result.detector("image_stats").drift
    if kind == "inverted":
        assert "brightness" in result.detector("image_stats").details["changed"]


@pytest.mark.e2e
def test_false_alarm_rate_at_defaults_is_at_most_5_percent(
    pool: tuple[Observations, list[Path]], profile: ReferenceProfile
) -> None:
    """Resampling: 1,000 times, split the 1,297 + ~150 held-out digits at random into a
    150-image reference and a disjoint 100-image window, and run the full verdict at
    the default settings. Every alarm is false; the requirement is at most 5% (the
    defaults bound it by 4%; docs/monitoring.md has the rates measured over 1,000 trials)."""
    obs = pool[0]
    ref = profile.observations()
    held_out = Observations(
        *(
            np.concatenate([getattr(ref, f), getattr(obs, f)])
            for f in ("embeddings", "classes", "confidences", "image_stats")
        )
    )
    far = false_alarm_rate(
        held_out,
        labels=profile.labels,
        sigma2=profile.sigma2,
        stat_names=profile.stat_names,
        reference_size=150,
        window=100,
        trials=1000,
        seed=0,
    )
    assert far["rate"] <= 0.05, far
    # Bonferroni: each of the 5 detectors spends alpha/5 = 0.8 %, so none alone may
    # fire in more than 2.5 % of the trials (measured: at most 16 of 1,000), and every
    # alarm a detector raises is an alarm of the verdict.
    assert set(far["per_detector"]) == {"embedding", "predicted_class", "confidence", "image_stats", "outlier_rate"}
    assert max(far["per_detector"].values()) <= 25, far
    assert far["alarms"] >= max(far["per_detector"].values()), far


@pytest.mark.e2e
def test_drift_command_prints_a_verdict_and_writes_an_html_report(
    champion: tuple[Path, Path], pool: tuple[Observations, list[Path]], window_paths: np.ndarray, tmp_path: Path
) -> None:
    run = champion[0]
    clean = tmp_path / "clean"
    for i in window_paths[::2]:  # 100 of the 200, spread over all classes
        src = pool[1][i]
        (clean / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, clean / src.parent.name / src.name)
    ok = run_cli("drift", str(run), "--data", str(clean), "--workers", "0", "--fail-on-drift", "--quiet")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "NO DRIFT" in ok.stdout

    rotated = corrupt([pool[1][i] for i in window_paths[::2]], tmp_path, "rotated")[0].parents[1]
    bad = run_cli("drift", str(run), "--data", str(rotated), "--workers", "0", "--json", "--fail-on-drift", "--quiet")
    assert bad.returncode == 1, bad.stderr  # --fail-on-drift: status 1 when drift is found
    verdict = json.loads(bad.stdout)
    assert verdict["drift"] is True and verdict["images"] == 100
    assert {d["detector"] for d in verdict["detectors"]} == {
        "embedding",
        "predicted_class",
        "confidence",
        "image_stats",
        "outlier_rate",
    }
    page = Path(verdict["report"]["html"]).read_text()
    for section in (
        "Detectors",
        "Embeddings",
        "Per-class shift",
        "Confidence",
        "Image statistics",
        "Most atypical images",
    ):
        assert section in page or section.lower() in page.lower(), section
    assert page.count("data:image/png;base64,") >= 4 + 12  # plots + thumbnails, all inline
    report = json.loads(Path(verdict["report"]["json"]).read_text())
    assert len(report["most_atypical"]) == 12
    scores = [a["score"] for a in report["most_atypical"]]  # ranked by the per-image outlier score
    assert scores == sorted(scores, reverse=True) and all(
        isinstance(a["outlier"], bool) for a in report["most_atypical"]
    )
    for a in report["most_atypical"]:  # captioned by class folder and name, relative to the data folder
        assert a["file"] == Path(a["path"]).relative_to(rotated.resolve()).as_posix() and a["file"].count("/") == 1
        assert f">{a['file']}</span>" in page


@pytest.mark.e2e
def test_too_few_images_is_its_own_verdict_and_fails_a_drift_gate(
    champion: tuple[Path, Path], pool: tuple[Observations, list[Path]], window_paths: np.ndarray, tmp_path: Path
) -> None:
    """20 strongly shifted images (fewer than the 30 a detector needs): not a green 'no drift' but
    "insufficient", drift null, amber in the report, and --fail-on-drift fails unless told otherwise."""
    few = corrupt([pool[1][i] for i in window_paths[:20]], tmp_path, "inverted")[0].parents[1]
    gate = run_cli(
        "drift", str(champion[0]), "--data", str(few), "--workers", "0", "--json", "--fail-on-drift", "--quiet"
    )
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "too few to decide" in gate.stderr and "--allow-insufficient" in gate.stderr
    verdict = json.loads(gate.stdout)
    assert verdict["status"] == "insufficient" and verdict["drift"] is None and verdict["images"] == 20
    assert len(verdict["detectors"]) == 5 and all(d["skipped"] for d in verdict["detectors"])  # not vacuous
    page = Path(verdict["report"]["html"]).read_text()
    assert "class='verdict insufficient'" in page and "NOT ENOUGH DATA" in page and "NO DRIFT" not in page

    allowed = run_cli(
        "drift",
        str(champion[0]),
        "--data",
        str(few),
        "--workers",
        "0",
        "--fail-on-drift",
        "--allow-insufficient",
        "--quiet",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "NOT ENOUGH DATA" in allowed.stdout and "NO DRIFT" not in allowed.stdout


def test_atypical_images_are_named_relative_to_the_data_folder(tmp_path: Path) -> None:
    """Files of the same name in two class folders get captions that tell them apart."""
    from duet.monitor.drift_report import display_path

    paths = [tmp_path / "cats" / "001.jpg", tmp_path / "dogs" / "001.jpg", tmp_path / "dogs" / "old" / "001.jpg"]
    assert [display_path(p, tmp_path, paths) for p in paths] == ["cats/001.jpg", "dogs/001.jpg", "dogs/old/001.jpg"]
    assert [display_path(p, None, paths) for p in paths] == ["cats/001.jpg", "dogs/001.jpg", "dogs/old/001.jpg"]
    one_folder = paths[:1]
    assert display_path(paths[0], None, one_folder) == "cats/001.jpg"


@pytest.mark.e2e
def test_drift_command_errors_are_one_line(champion: tuple[Path, Path], tmp_path: Path) -> None:
    missing = run_cli("drift", str(champion[0]), "--data", str(tmp_path / "nope"))
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: data folder")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    empty = run_cli("drift", str(champion[0]), "--data", str(tmp_path / "empty"))
    assert empty.returncode == 3 and "No images found" in empty.stderr
    not_run = run_cli("drift", str(tmp_path), "--data", str(tmp_path / "empty"))
    assert not_run.returncode == 5 and "not a duet run" in not_run.stderr
    helped = run_cli("drift", "--help")
    assert helped.returncode == 0 and "--fail-on-drift" in helped.stdout and "false-alarm" in helped.stdout


@pytest.mark.e2e
def test_monitor_window_is_bounded_thread_safe_and_turns_to_drift(
    profile: ReferenceProfile, pool: tuple[Observations, list[Path]]
) -> None:
    """A server's view: 4 threads add clean batches while another computes; then
    inverted digits fill the window. Window 200; inputs are the pool's features."""
    obs = pool[0]
    monitor = DriftMonitor(profile, window=WINDOW)
    assert monitor.compute().sentence.startswith("Warming up")
    raw = _raw_features(profile, obs.embeddings)
    clean = np.random.default_rng(2).permutation(len(obs))[:800]
    errors: list[BaseException] = []

    def feed(rows: np.ndarray) -> None:
        try:
            for chunk in np.array_split(rows, 20):
                probs = np.zeros((len(chunk), len(profile.labels)), np.float32)
                probs[np.arange(len(chunk)), obs.classes[chunk]] = obs.confidences[chunk]
                probs[:, 0] += 1e-6  # any remainder: argmax and max are what count
                monitor.add(probabilities=probs, embeddings=raw[chunk], image_stats=obs.image_stats[chunk])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=feed, args=(part,)) for part in np.array_split(clean, 4)]
    for t in threads:
        t.start()
    results = [monitor.compute() for _ in range(3)]  # concurrently with the writers
    for t in threads:
        t.join()
    assert not errors and all(r.n_current <= WINDOW for r in results)
    assert monitor.seen == 800
    calm = monitor.compute()
    assert calm.n_current == WINDOW and not calm.drift, calm.sentence

    shifted = raw + 3.0 * np.sqrt(profile.sigma2) * profile.pca_components[0]  # a large move along PCA 1
    monitor.add(classes=obs.classes[:WINDOW], confidences=obs.confidences[:WINDOW], embeddings=shifted[:WINDOW])
    alarm = monitor.compute()
    assert alarm.drift and alarm.detector("embedding").drift, alarm.sentence
    assert set(alarm.scores()) == {"embedding", "predicted_class", "confidence", "image_stats", "outlier_rate"}
    json.dumps(alarm.to_dict())  # what GET /v1/monitor returns


def _raw_features(profile: ReferenceProfile, projected: np.ndarray) -> np.ndarray:
    """Features whose projection is ``projected`` (the PCA axes are orthonormal)."""
    return (projected @ profile.pca_components + profile.pca_mean).astype(np.float32)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
def test_drift_alert_rules_pass_their_promtool_tests() -> None:
    deploy = Path(__file__).parents[1] / "deploy" / "prometheus"
    for args in (("check", "rules", "drift_rules.yml"), ("test", "rules", "drift_rules_test.yml")):
        proc = subprocess.run(["promtool", *args], cwd=deploy, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def contaminants(
    champion: tuple[Path, Path],
    profile: ReferenceProfile,
    pool: tuple[Observations, list[Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Observations]:
    """The model's view of 60 photo crops and of 60 unseen digits shrunk to 60 % (scale + pad)."""
    from duet.bench.shifts import write_photos, write_shifted

    out = tmp_path_factory.mktemp("contaminants")
    picked = [pool[1][i] for i in np.random.default_rng(7).choice(len(pool[1]), 60, replace=False)]
    files = {
        "photo": write_photos(out / "photo", 60, 16, seed=0),
        "scale": write_shifted(picked, champion[1], out / "scale", "scale"),
    }
    observed = {}
    for kind, paths in files.items():
        obs, kept, failed = observe_files(champion[0], paths, profile, workers=0, progress=False)
        assert not failed and len(kept) == 60
        observed[kind] = obs
    return observed


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["photo", "scale"])
def test_ten_percent_foreign_images_are_caught_by_the_outlier_rate(
    kind: str, profile: ReferenceProfile, pool: tuple[Observations, list[Path]], contaminants: dict[str, Observations]
) -> None:
    """Issue 12's blind spot: 10 foreign images in a 100-image window. Each image's
    outlier score flags them (photos in feature space, shrunk digits by their
    statistics), and the outlier-rate detector turns the window to drift; clean
    windows stay quiet. 20 seeded windows each (measured: 100 % and 0 %)."""
    obs, foreign = pool[0], contaminants[kind]
    assert profile.outliers is not None
    assert np.mean(profile.outliers.flags(foreign.outlier_scores)) >= 0.8
    assert np.mean(profile.outliers.flags(obs.outlier_scores)) <= 0.03  # ~1 % by construction
    rng = np.random.default_rng(11)
    caught = quiet = 0
    for _ in range(20):
        clean, extra = rng.choice(len(obs), 100, replace=False), rng.choice(60, 10, replace=False)
        mixed = Observations(
            **{k: np.concatenate([v[clean[:90]], getattr(foreign, k)[extra]]) for k, v in obs._arrays().items()}
        )
        result = compare(profile, mixed)
        caught += result.drift and result.detector("outlier_rate").drift
        quiet += not compare(profile, obs.take(clean)).drift
    assert caught >= 18 and quiet >= 18, (caught, quiet)
