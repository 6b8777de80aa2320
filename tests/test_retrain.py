"""The closed loop on real digits: a challenger trained on new labelled data is
promoted only when it beats the champion on the same held-out images.

The champion is test_drift's (500 random digits, profiled); the new data are
digits it never saw: 300 inverted (white on black: a new camera, real drift,
correct labels), or 900 with their class labels shuffled between classes
(every '0' filed as '3', '1' as '4', ...: a broken labelling job).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from test_drift import digits_champion  # the same champion, trained once per session

from duet.registry import ChampionWatcher, Registry

NEW_IMAGES = 300
# Shuffled labels must outnumber the champion's ~35 training images per class to
# change what the challenger predicts; fewer are simply outvoted (and the gate
# then rightly lets a challenger through that is not worse).
SHUFFLED_IMAGES = 900
CHALLENGER = ["--epochs", "3", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run, pool = digits_champion(tmp_path_factory.getbasetemp() / "digits-champion")
    base = tmp_path_factory.mktemp("retrain")
    files = sorted(pool.rglob("*.png"))
    order = np.random.default_rng(3).permutation(len(files))
    inverted, shuffled = base / "inverted", base / "shuffled"
    from PIL import Image

    for i in order[:NEW_IMAGES]:
        f = files[i]
        dest = inverted / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(f).convert("RGB"))).save(dest)
    for i in order[NEW_IMAGES:NEW_IMAGES + SHUFFLED_IMAGES]:
        f = files[i]
        dest = shuffled / str((int(f.parent.name) + 3) % 10) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    return {"champion": run, "inverted": inverted, "shuffled": shuffled, "registry": base / "registry",
            "runs": base / "runs"}


def _splits(run: Path) -> dict[str, str]:
    with open(run / "manifest.csv", newline="") as f:
        return {r["sha256"]: r["split"] for r in csv.DictReader(f) if r["status"] == "ok"}


def test_retrain_on_shuffled_labels_is_refused_by_the_gate(setup: dict[str, Path]) -> None:
    proc = run_cli("retrain", str(setup["champion"]), "--data", str(setup["shuffled"]), "--registry",
                   str(setup["registry"]), "--out", str(setup["runs"]), "--json", *CHALLENGER)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["promoted"] is False and result["decision"] == "kept champion", result["reasons"]
    assert any("regressed on the champion's own held-out images" in r for r in result["reasons"])
    assert result["challenger"]["accuracy_on_champion_held_out"] < result["champion"]["accuracy_on_champion_held_out"]
    reg = Registry(setup["registry"])
    assert reg.champion().version == "v1" and reg.champion().run == setup["champion"].resolve()
    assert [v.version for v in reg.versions()] == ["v1"]  # a refused challenger is not registered
    report = Path(result["report"]["md"]).read_text()
    assert report.startswith("# Champion vs challenger: kept champion") and "regressed" in report
    assert reg.events()[-1]["event"] == "retrain" and reg.events()[-1]["decision"] == "kept champion"


def test_watch_retrains_on_drift_with_new_labels_and_promotes_the_better_challenger(setup: dict[str, Path]) -> None:
    """Iteration 1: 300 new inverted digits drift -> retrain -> gate -> promote.
    Iteration 2: nothing new since the promotion -> nothing to do."""
    watcher = ChampionWatcher(Registry(setup["registry"]))
    assert watcher.poll().version == "v1"
    proc = run_cli("watch", "--data", str(setup["inverted"]), "--registry", str(setup["registry"]), "--out",
                   str(setup["runs"]), "--iterations", "2", "--interval", "0", "--json", *CHALLENGER)
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

    # The merge kept every old file on its side of the split and added the new ones.
    old, new = _splits(setup["champion"]), _splits(challenger)
    assert all(new[sha] == split for sha, split in old.items())
    assert len(new) == len(old) + comparison["merge"]["new_images"] and comparison["merge"]["new_images"] > 290
    assert [e["event"] for e in reg.events() if e["event"] in ("watch", "retrain")][-3:] == ["retrain", "watch", "watch"]
