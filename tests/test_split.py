"""Specification of duet.data.split.assign_splits: seeded, exactly stratified, stable."""

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


def _moves(before: dict[str, str], after: dict[str, str]) -> dict[tuple[str, str], int]:
    moved: dict[tuple[str, str], int] = {}
    for path, side in before.items():
        if after[path] != side:
            key = tuple(sorted((side, after[path])))
            moved[key] = moved.get(key, 0) + 1  # type: ignore[index]
    return moved


def test_split_is_stable_when_files_are_added() -> None:
    """Adding m images to a class moves at most m of its existing images across
    each boundary (train|val, train|test), and none of any other class."""
    for seed in range(5):
        for n, m in ((50, 10), (100, 1), (100, 5), (37, 3), (200, 20)):
            sizes = {"a": n, "b": 60, "c": 45}
            before = _splits(assign_splits(_manifest(_classes(sizes)), test_fraction=0.1, seed=seed))
            grown = _manifest(_classes(sizes) + _classes({"a": m}, start=n))
            after = _splits(assign_splits(grown, test_fraction=0.1, seed=seed))
            moved = _moves(before, after)
            assert moved.get(("test", "val"), 0) == 0
            assert moved.get(("train", "val"), 0) <= m and moved.get(("test", "train"), 0) <= m, moved
            assert all(after[p] == s for p, s in before.items() if not p.startswith("a/"))


def test_per_class_counts_are_exact() -> None:
    """Two classes of 100 at 0.2 once gave 8 and 21 validation images; now exactly 20 each."""
    for seed in range(10):
        result = assign_splits(_manifest(_classes({"faces": 100, "other": 100})), val_fraction=0.2, seed=seed)
        for label in ("faces", "other"):
            splits = [r.split for r in result.rows if r.label == label]
            assert splits.count("val") == 20 and splits.count("train") == 80, (seed, label)


def test_counts_round_half_up_per_class() -> None:
    result = assign_splits(
        _manifest(_classes({"a": 25, "b": 33, "c": 7})), val_fraction=0.2, test_fraction=0.1, test_min_per_class=0
    )
    expected = {"a": (5, 3), "b": (7, 3), "c": (1, 1)}  # 5.0/2.5, 6.6/3.3, 1.4/0.7
    for label, (val, test) in expected.items():
        splits = [r.split for r in result.rows if r.label == label]
        assert (splits.count("val"), splits.count("test")) == (val, test), label


def test_test_split_is_held_out_when_every_class_has_20_images() -> None:
    result = assign_splits(_manifest(_classes({"a": 100, "b": 40})), val_fraction=0.2, test_fraction=0.1)
    for label, (val, test) in {"a": (20, 10), "b": (8, 4)}.items():
        splits = [r.split for r in result.rows if r.label == label]
        assert (splits.count("val"), splits.count("test")) == (val, test), label


def test_no_test_split_when_a_class_has_fewer_than_20_images() -> None:
    result = assign_splits(_manifest(_classes({"a": 100, "b": 19})), val_fraction=0.2, test_fraction=0.1)
    assert {r.split for r in result.rows} == {"train", "val"}


def test_turning_the_test_split_on_moves_only_training_images() -> None:
    small = _manifest(_classes({"a": 40, "b": 19}))
    before = _splits(assign_splits(small, test_fraction=0.1))
    after = _splits(assign_splits(_manifest(_classes({"a": 40, "b": 20})), test_fraction=0.1))
    moved = _moves(before, after)
    assert set(moved) <= {("test", "train"), ("train", "val")} and moved[("test", "train")] >= 4
    assert moved.get(("train", "val"), 0) <= 1  # b grew by one image


def test_duplicates_never_straddle_the_split() -> None:
    rows = _classes({"a": 100, "b": 100})
    copies = [replace(r, path=r.path + ".copy.jpg") for r in rows[::3]]
    result = assign_splits(_manifest(rows + copies), test_fraction=0.1)
    assert {r.split for r in result.rows} == {"train", "val", "test"}
    by_sha: dict[str, set[str]] = {}
    for row in result.rows:
        by_sha.setdefault(row.sha256, set()).add(row.split)
    assert all(len(sides) == 1 for sides in by_sha.values())


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


def test_single_image_class_stays_in_train() -> None:
    for seed in range(20):
        result = assign_splits(_manifest(_classes({"one": 1, "big": 100})), seed=seed)
        assert [r.split for r in result.rows if r.label == "one"] == ["train"]


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


@pytest.mark.parametrize("name", ["val_fraction", "test_fraction"])
@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_zero_one_is_a_config_error(name: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"`{name}` must be in \[0, 1\)"):
        assign_splits(_manifest(_classes({"a": 3, "b": 3})), **{name: bad})


def test_fractions_leaving_nothing_to_train_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must be below 1"):
        assign_splits(_manifest(_classes({"a": 30, "b": 30})), val_fraction=0.5, test_fraction=0.5)
