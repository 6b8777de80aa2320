"""Specification of duet.data.split.assign_splits: seeded, stratified, stable."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from duet.data.scan import STATUS_DUPLICATE, STATUS_OK, STATUS_SKIPPED, Manifest, ManifestRow
from duet.data.split import assign_splits
from duet.errors import ConfigError


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _row(label: str, name: str, *, sha: str | None = None, status: str = STATUS_OK, split: str = "") -> ManifestRow:
    return ManifestRow(
        path=f"{label}/{name}",
        label=label,
        bytes=100,
        sha256=sha if sha is not None else _sha(f"{label}/{name}"),
        width=8,
        height=8,
        status=status,
        reason="" if status == STATUS_OK else "some reason",
        split=split,
    )


def _manifest(rows: list[ManifestRow], layout: str = "classes") -> Manifest:
    return Manifest(
        data_dir=Path("/data"),
        labels=sorted({r.label for r in rows}),
        rows=sorted(rows, key=lambda r: r.path),
        layout=layout,
    )


def _classes(sizes: dict[str, int], start: int = 0) -> list[ManifestRow]:
    return [_row(label, f"{i:04d}.jpg") for label, n in sizes.items() for i in range(start, start + n)]


def _splits(manifest: Manifest) -> dict[str, str]:
    return {r.path: r.split for r in manifest.rows}


def test_split_is_stable_when_files_are_added() -> None:
    before = assign_splits(_manifest(_classes({"a": 50, "b": 50, "c": 50})))
    grown = _manifest(_classes({"a": 50, "b": 50, "c": 50}) + _classes({"a": 10, "b": 10, "c": 10}, start=50))
    after = _splits(assign_splits(grown))
    assert len(after) == 180
    assert all(after[path] == split for path, split in _splits(before).items())


def test_duplicates_never_straddle_the_split() -> None:
    rows = _classes({"a": 100, "b": 100})
    copies = [replace(r, path=r.path + ".copy.jpg") for r in rows[::3]]
    result = assign_splits(_manifest(rows + copies))
    by_sha: dict[str, set[str]] = {}
    for row in result.rows:
        by_sha.setdefault(row.sha256, set()).add(row.split)
    assert all(len(sides) == 1 for sides in by_sha.values())


def test_each_class_gets_about_val_fraction_in_validation() -> None:
    result = assign_splits(_manifest(_classes({"a": 200, "b": 200, "c": 200})), val_fraction=0.2)
    for label in ("a", "b", "c"):
        splits = [r.split for r in result.rows if r.label == label]
        assert set(splits) == {"train", "val"}
        assert 0.14 <= splits.count("val") / len(splits) <= 0.26


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one() -> None:
    manifest = _manifest(_classes({"a": 200, "b": 200}))
    first = _splits(assign_splits(manifest, seed=0))
    assert _splits(assign_splits(manifest, seed=0)) == first
    assert _splits(assign_splits(manifest, seed=1)) != first


def test_input_manifest_is_not_modified() -> None:
    manifest = _manifest(_classes({"a": 20, "b": 20}))
    result = assign_splits(manifest)
    assert all(r.split == "" for r in manifest.rows)
    assert all(r.split in ("train", "val") for r in result.rows)


def test_splits_layout_keeps_the_folders_split() -> None:
    rows = [_row("a", f"{i}.jpg", split=s) for i, s in enumerate(["train"] * 5 + ["val"] * 5 + ["test"] * 2)]
    manifest = _manifest(rows, layout="splits")
    result = assign_splits(manifest, val_fraction=0.5, seed=3)
    assert _splits(result) == _splits(manifest)
    assert result.rows is not manifest.rows


def test_tiny_class_gets_one_val_and_one_train() -> None:
    for seed in range(20):
        result = assign_splits(_manifest(_classes({"tiny": 2, "big": 100})), seed=seed)
        assert sorted(r.split for r in result.rows if r.label == "tiny") == ["train", "val"]


def test_single_image_class_stays_in_train_or_val_as_hashed() -> None:
    result = assign_splits(_manifest(_classes({"one": 1, "big": 100})))
    assert [r.split for r in result.rows if r.label == "one"][0] in ("train", "val")


def test_unusable_rows_get_no_split() -> None:
    rows = _classes({"a": 10, "b": 10}) + [
        _row("a", "broken.jpg", status=STATUS_SKIPPED, split="train"),
        _row("a", "dup.jpg", status=STATUS_DUPLICATE),
    ]
    result = {r.path: r.split for r in assign_splits(_manifest(rows)).rows}
    assert result["a/broken.jpg"] == result["a/dup.jpg"] == ""


def test_zero_val_fraction_puts_everything_in_train() -> None:
    result = assign_splits(_manifest(_classes({"a": 30, "b": 2})), val_fraction=0.0)
    assert {r.split for r in result.rows} == {"train"}


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_val_fraction_outside_zero_one_is_a_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"`val_fraction` must be in \[0, 1\)"):
        assign_splits(_manifest(_classes({"a": 3, "b": 3})), val_fraction=bad)
