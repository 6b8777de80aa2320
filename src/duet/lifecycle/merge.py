"""Merge new labelled images into a champion's data without moving any old file across splits.

The champion's usable files keep the split its manifest records; new files get
the same rule (``duet.data.split``: content hash + the champion's seed and
validation fraction), so no old file ever changes side and the champion's
held-out images stay held out (new files get a test split only when the
champion has one). Files already known (same bytes) are skipped; the same bytes
under another label are reported as conflicts and left out. The merged set is a
folder of links in the ``train/ val/`` layout next to the challenger run
(``runs/<name>.data/``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duet.errors import DataError

# --------------------------------------------------------------------------- merge


@dataclass
class MergeSummary:
    data_dir: Path
    old_images: int
    new_images: int
    new_per_split: dict[str, int]
    already_known: int
    conflicts: list[dict[str, str]]
    labels_added: list[str]
    skipped: int


def _link(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.realpath(source), dest)
    except OSError:  # no symlinks (some Windows setups, some filesystems): copy
        shutil.copy2(source, dest)


def known_hashes(run_dir: Path) -> dict[str, str]:
    """``{sha256: label}`` of every usable file of a run's manifest."""
    from duet.artifacts.run_dir import load_run
    from duet.data.scan import read_manifest

    run = load_run(run_dir)
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    return {r.sha256: r.label for r in manifest.usable()}


def new_labelled_rows(
    run_dir: Path, data_dir: Path, *, progress: bool
) -> tuple[list[Any], Any, int, list[dict[str, str]]]:
    """Usable rows of ``data_dir`` the run has not seen: ``(rows, manifest, already known, conflicts)``."""
    from duet.data.scan import scan

    manifest = scan(data_dir, progress=progress)
    fresh, same, conflicts = fresh_rows(run_dir, manifest)
    return fresh, manifest, same, conflicts


def fresh_rows(run_dir: Path, manifest: Any) -> tuple[list[Any], int, list[dict[str, str]]]:
    """Usable rows of a scanned ``manifest`` the run has not seen: ``(rows, already known, conflicts)``."""
    known = known_hashes(run_dir)
    fresh, same, conflicts = [], 0, []
    for row in manifest.usable():
        if row.sha256 not in known:
            fresh.append(row)
        elif known[row.sha256] == row.label:
            same += 1
        else:
            conflicts.append({"path": row.path, "label": row.label, "known_as": known[row.sha256]})
    return fresh, same, conflicts


def merge_data(champion_run: Path, new_data: Path, dest: Path, *, progress: bool = True) -> MergeSummary:
    """Build the challenger's data folder (``train/ val/ [test/]`` of links) at ``dest``."""
    from duet.artifacts.run_dir import load_run, read_config
    from duet.data.scan import read_manifest
    from duet.data.split import assign_splits

    run = load_run(champion_run)
    config = read_config(run.paths)
    old = read_manifest(run.paths.manifest, run.data_dir)
    fresh, new_manifest, same, conflicts = new_labelled_rows(run.paths.root, Path(new_data), progress=progress)
    if not fresh:
        raise DataError(
            f"no new images in '{new_data}': all {same + len(conflicts)} usable images are already in "
            f"the champion's data ({len(conflicts)} under another label); add new labelled images"
        )
    # The champion's rule for new files: hash of content + its seed and validation
    # fraction; a test split only when the champion has one, then at its share
    # (however few the new images: the merged test split must keep growing).
    fresh_ids = {r.path for r in fresh}
    has_test = any(r.split == "test" for r in old.usable())
    split_new = assign_splits(
        new_manifest,
        val_fraction=float(config.get("val_split", 0.2)),
        test_fraction=float(config.get("test_split", 0.1)) if has_test else 0.0,
        seed=int(config.get("seed", 0)),
        test_min_per_class=0,
    )
    fresh = [r for r in split_new.usable() if r.path in fresh_ids]
    if dest.exists():
        raise DataError(f"'{dest}' already exists; choose another challenger --name")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    old_rows = old.usable()
    for row in old_rows:
        _link(
            old.data_dir / row.path, tmp / row.split / row.label / f"{row.sha256[:20]}{Path(row.path).suffix.lower()}"
        )
    per_split: dict[str, int] = {}
    for row in fresh:
        per_split[row.split] = per_split.get(row.split, 0) + 1
        _link(
            new_manifest.data_dir / row.path,
            tmp / row.split / row.label / f"{row.sha256[:20]}{Path(row.path).suffix.lower()}",
        )
    if not (tmp / "val").is_dir():  # the splits layout needs the folder even when it is empty
        (tmp / "val").mkdir(parents=True)
    os.replace(tmp, dest)
    return MergeSummary(
        data_dir=dest.resolve(),
        old_images=len(old_rows),
        new_images=len(fresh),
        new_per_split=per_split,
        already_known=same,
        conflicts=conflicts,
        labels_added=sorted({r.label for r in fresh} - set(run.labels)),
        skipped=sum(1 for r in new_manifest.rows if r.status != "ok"),
    )


# --------------------------------------------------------------------------- comparison and gate
