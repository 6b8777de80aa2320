"""The closed loop on real digits: a challenger trained on new labelled data is
promoted only when it beats the champion on the same held-out images.

The champion is the session's ``digits_champion`` (conftest: 500 random digits,
profiled); each test gets its own registry with that champion as v1, so the
tests run alone or in any order. The new data are
digits it never saw: 300 inverted (white on black: a new camera, real drift,
correct labels), or 900 with their class labels shuffled between classes
(every '0' filed as '3', '1' as '4', ...: a broken labelling job).
"""

from __future__ import annotations

import csv
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from duet.artifacts.registry import ChampionWatcher, Registry
from helpers import run_cli, write_digit_folder

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

NEW_IMAGES = 300
# Shuffled labels must outnumber the champion's ~35 training images per class to
# change what the challenger predicts; fewer are simply outvoted (and the gate
# then rightly lets a challenger through that is not worse).
SHUFFLED_IMAGES = 900
CHALLENGER = ["--epochs", "3", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def new_data(digits_champion: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits the champion never saw: inverted (real drift, right labels) and with
    shuffled labels. Written once; the tests only read them."""
    _run, pool = digits_champion
    base = tmp_path_factory.mktemp("retrain-data")
    files = sorted(pool.rglob("*.png"))
    order = np.random.default_rng(3).permutation(len(files))
    inverted, shuffled = base / "inverted", base / "shuffled"
    from PIL import Image

    for i in order[:NEW_IMAGES]:
        f = files[i]
        dest = inverted / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(f).convert("RGB"))).save(dest)
    for i in order[NEW_IMAGES : NEW_IMAGES + SHUFFLED_IMAGES]:
        f = files[i]
        dest = shuffled / str((int(f.parent.name) + 3) % 10) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    return {"inverted": inverted, "shuffled": shuffled}


@pytest.fixture
def setup(digits_champion: tuple[Path, Path], new_data: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A fresh registry whose champion (v1) is the session's digits champion, and an
    empty runs folder: what one test changes, no other test sees."""
    run = digits_champion[0]
    Registry(tmp_path / "registry").promote(run, reason="the digits champion")
    return {"champion": run, **new_data, "registry": tmp_path / "registry", "runs": tmp_path / "runs"}


def _splits(run: Path) -> dict[str, str]:
    with open(run / "manifest.csv", newline="") as f:
        return {r["sha256"]: r["split"] for r in csv.DictReader(f) if r["status"] == "ok"}


def test_retrain_on_shuffled_labels_is_refused_by_the_gate(setup: dict[str, Path]) -> None:
    proc = run_cli(
        "retrain",
        str(setup["champion"]),
        "--data",
        str(setup["shuffled"]),
        "--registry",
        str(setup["registry"]),
        "--out",
        str(setup["runs"]),
        "--json",
        *CHALLENGER,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["promoted"] is False and result["decision"] == "kept champion", result["reasons"]
    # Refused by the paired drop test on the champion's own held-out images (whose
    # labels are right), not only by overall accuracy on a mix with the shuffled ones.
    test = result["drop_test"]
    assert test["where"] == "the champion's own held-out images" and test["refused"] is True, result["reasons"]
    assert test["images"] == result["held_out"]["champion_held_out_images"] > 100
    assert test["p_value"] < 0.001 and test["drop"] > test["min_detectable_drop"] > 0.02
    assert any(r.startswith("significantly worse on the champion's own held-out images") for r in result["reasons"])
    assert result["challenger"]["accuracy_on_champion_held_out"] < result["champion"]["accuracy_on_champion_held_out"]
    reg = Registry(setup["registry"])
    assert reg.champion().version == "v1" and reg.champion().run == setup["champion"].resolve()
    assert [v.version for v in reg.versions()] == ["v1"]  # a refused challenger is not registered
    report = Path(result["report"]["md"]).read_text()
    assert report.startswith("# Champion vs challenger: kept champion") and "significantly worse" in report
    assert f"Minimum detectable drop (80% power): **{100 * test['min_detectable_drop']:.1f} points**" in report
    assert reg.events()[-1]["event"] == "retrain" and reg.events()[-1]["decision"] == "kept champion"


def test_watch_retrains_on_drift_with_new_labels_and_promotes_the_better_challenger(setup: dict[str, Path]) -> None:
    """Iteration 1: 300 new inverted digits drift -> retrain -> gate -> promote.
    Iteration 2: nothing new since the promotion -> nothing to do."""
    watcher = ChampionWatcher(Registry(setup["registry"]))
    assert watcher.poll().version == "v1"
    proc = run_cli(
        "watch",
        "--data",
        str(setup["inverted"]),
        "--registry",
        str(setup["registry"]),
        "--out",
        str(setup["runs"]),
        "--iterations",
        "2",
        "--interval",
        "0",
        "--json",
        *CHALLENGER,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)
    assert first["drift"] is True and first["action"] == "retrain" and first["new_images"] == NEW_IMAGES
    assert first["promoted"] is True, first["reasons"]
    assert second["champion"] == "v2" and second["new_images"] == 0 and second["action"] == "none"

    reg = Registry(setup["registry"])
    champion = reg.champion()
    assert champion.version == "v2" and champion.record["parent"] == "v1"
    assert watcher.poll().version == "v2"  # what a server polling the registry sees
    challenger = Path(first["challenger"])
    assert champion.run == challenger.resolve()
    assert (challenger / "profile" / "profile.json").is_file()  # ready for the next round of drift checks
    comparison = json.loads((challenger / "retrain" / "comparison.json").read_text())
    assert comparison["promoted"] is True
    assert comparison["comparison"]["challenger"]["accuracy"] > comparison["comparison"]["champion"]["accuracy"]
    drop = comparison["comparison"]["drop_test"]  # the gate says what it could have seen
    assert drop["refused"] is False and 0.02 < drop["min_detectable_drop"] < 0.2

    # The merge kept every old file on its side of the split and added the new ones.
    old, new = _splits(setup["champion"]), _splits(challenger)
    assert all(new[sha] == split for sha, split in old.items())
    assert len(new) == len(old) + comparison["merge"]["new_images"] and comparison["merge"]["new_images"] > 290
    assert [e["event"] for e in reg.events() if e["event"] in ("watch", "retrain")][-3:] == [
        "retrain",
        "watch",
        "watch",
    ]


def _lines(stream) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in stream], daemon=True).start()
    return q


def _wait_for_line(
    q: queue.Queue[str], needle: str, seen: list[str], proc: subprocess.Popen[str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None and q.empty():
                break
            continue
        seen.append(line)
        if needle in line:
            return
    pytest.fail(f"no line with {needle!r} (exit status {proc.poll()}); stderr so far: {''.join(seen)[-2000:]}")


def test_watch_waits_for_a_missing_then_empty_data_folder_and_says_so_once(tmp_path: Path) -> None:
    """`duet watch` on a --data folder that does not exist yet keeps watching: it says
    so once, then once that the folder has no labelled images, then once that the
    images in it are not new, and ends after --iterations like any other run."""
    from duet.training.config import build_config
    from duet.training.loop import train

    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=12, size=16)
    cfg = build_config(
        None,
        {
            "data_dir": data,
            "model": "test_resnet",
            "image_size": 16,
            "batch_size": 8,
            "epochs": 1,
            "workers": 0,
            "out": tmp_path / "runs",
            "name": "champ",
        },
    )
    run = train(cfg, progress=False, log=lambda _m: None).run_dir
    registry = tmp_path / "registry"
    Registry(registry).promote(run)
    incoming = tmp_path / "incoming"
    iterations = 40
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duet",
            "watch",
            "--data",
            str(incoming),
            "--registry",
            str(registry),
            "--interval",
            "0.25",
            "--iterations",
            str(iterations),
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    seen: list[str] = []
    try:
        q = _lines(proc.stderr)
        _wait_for_line(q, "does not exist yet", seen, proc)
        incoming.mkdir()
        _wait_for_line(q, "no labelled images", seen, proc)
        shutil.copytree(data / "0", incoming / "0")  # the champion's own images: nothing new
        _wait_for_line(q, "no new images", seen, proc)
        stdout = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, "".join(seen)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.3)  # the reader thread drains the last lines
    while not q.empty():
        seen.append(q.get())
    stderr = "".join(seen)
    assert "Traceback" not in stderr and "error" not in stderr, stderr
    for needle in ("does not exist yet", "no labelled images", "no new images"):
        assert stderr.count(needle) == 1, stderr  # once per state, not at every tick
    assert f"[{iterations}] " in stdout and stdout.count("does not exist yet") >= 1
    watch_events = [e for e in Registry(registry).events() if e["event"] == "watch"]
    assert [e["state"] for e in watch_events] == ["no_data_folder", "no_labelled_images", "no_new_images"]
    assert [e["action"] for e in watch_events] == ["wait_for_labels", "wait_for_labels", "none"]
