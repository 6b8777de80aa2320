"""Merging new labelled images into a champion's data (duet.lifecycle.merge), on
its own: the champion is a run folder written by duet's own writers (scan, split,
config, run.json, weights), not trained, so each test takes well under a second.
The closed loop with training is in test_retrain.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from duet.artifacts.run_dir import RunPaths, write_config, write_info
from duet.data.preprocess import PreprocessSpec
from duet.data.scan import read_manifest, scan, write_manifest
from duet.data.split import assign_splits
from duet.errors import DataError
from duet.lifecycle.merge import merge_data
from duet.training.checkpoint import save_weights
from helpers import write_digit_folder

SEED, VAL = 5, 0.3


def _champion(root: Path, *, test_split: float = 0.0) -> Path:
    """A run folder on digits 0 and 1 (20 each) as `duet train` leaves it, without the training."""
    data = write_digit_folder(root / "old", classes=(0, 1), per_class=20, size=8)
    manifest = assign_splits(
        scan(data, progress=False), val_fraction=VAL, test_fraction=test_split, seed=SEED, test_min_per_class=0
    )
    paths = RunPaths(root / "runs" / "champ")
    paths.checkpoints.mkdir(parents=True)
    write_manifest(manifest, paths.manifest)
    write_config(paths, {"seed": SEED, "val_split": VAL, "test_split": test_split})
    write_info(
        paths,
        {
            "model": "test_resnet",
            "labels": manifest.labels,
            "preprocess": PreprocessSpec(image_size=8).to_dict(),
            "data_dir": str(data),
        },
    )
    save_weights(paths.best, {"w": torch.zeros(1)})
    return paths.root


def _splits(folder: Path) -> dict[str, str]:
    """``{sha256: split}`` of the merged folder (``split/label/<sha256[:20]>.png`` links)."""
    return {p.stem: p.parts[-3] for p in folder.rglob("*.png")}


def test_old_images_keep_their_split_and_new_ones_are_added(tmp_path: Path) -> None:
    run = _champion(tmp_path)
    old = read_manifest(RunPaths(run).manifest, tmp_path / "old")
    new = write_digit_folder(tmp_path / "new", classes=(1, 2), per_class=40, size=8)  # 20 of class 1 known
    summary = merge_data(run, new, tmp_path / "merged", progress=False)

    merged = _splits(tmp_path / "merged")
    assert {r.sha256[:20]: r.split for r in old.usable()}.items() <= merged.items()  # no old file moved
    assert summary.old_images == 40 and summary.already_known == 20 and summary.new_images == 60
    assert len(merged) == 100 and sum(summary.new_per_split.values()) == 60
    assert set(summary.new_per_split) == {"train", "val"}  # the champion has no test split: none added
    assert summary.labels_added == ["2"] and summary.conflicts == [] and summary.skipped == 0
    assert all(p.is_symlink() and p.resolve().is_file() for p in (tmp_path / "merged").rglob("*.png"))
    assert not (tmp_path / "merged.partial").exists()


def test_new_files_get_the_same_split_whatever_else_arrives_with_them(tmp_path: Path) -> None:
    """The champion's rule (content hash + its seed): a file's side does not depend on
    the other new files, so a later merge cannot move it."""
    run = _champion(tmp_path)
    both = write_digit_folder(tmp_path / "both", classes=(2, 3), per_class=30, size=8)
    merge_data(run, both, tmp_path / "m1", progress=False)
    shutil.copytree(both / "2", tmp_path / "one" / "2")
    merge_data(run, tmp_path / "one", tmp_path / "m2", progress=False)
    first, second = _splits(tmp_path / "m1"), _splits(tmp_path / "m2")
    assert second.items() <= first.items() and len(first) - len(second) == 30


def test_same_bytes_under_another_label_are_conflicts_left_out(tmp_path: Path) -> None:
    run = _champion(tmp_path)
    new = tmp_path / "new"
    shutil.copytree(tmp_path / "old" / "0", new / "1")  # every known '0' filed as '1'
    write_digit_folder(new, classes=(2,), per_class=5, size=8)
    summary = merge_data(run, new, tmp_path / "merged", progress=False)
    assert summary.new_images == 5 and len(summary.conflicts) == 20
    assert {(c["label"], c["known_as"]) for c in summary.conflicts} == {("1", "0")}
    assert len(list((tmp_path / "merged").rglob("*.png"))) == 45


def test_a_champion_with_a_test_split_gives_new_files_one_too(tmp_path: Path) -> None:
    run = _champion(tmp_path, test_split=0.2)
    new = write_digit_folder(tmp_path / "new", classes=(3,), per_class=60, size=8)
    summary = merge_data(run, new, tmp_path / "merged", progress=False)
    assert summary.new_per_split.get("test", 0) > 0


def test_nothing_new_or_an_existing_destination_is_a_data_error(tmp_path: Path) -> None:
    run = _champion(tmp_path)
    with pytest.raises(DataError, match=r"no new images .* all 40 usable images are already in"):
        merge_data(run, tmp_path / "old", tmp_path / "merged", progress=False)
    (tmp_path / "taken").mkdir()
    new = write_digit_folder(tmp_path / "new", classes=(2,), per_class=5, size=8)
    with pytest.raises(DataError, match="already exists; choose another challenger --name"):
        merge_data(run, new, tmp_path / "taken", progress=False)
