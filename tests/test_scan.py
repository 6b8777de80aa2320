"""Specification of duet.data.scan: a folder becomes a manifest with a fate for every file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import oddfiles
from duet.data.scan import (
    STATUS_CONFLICT,
    STATUS_DUPLICATE,
    STATUS_OK,
    STATUS_SKIPPED,
    Manifest,
    ManifestRow,
    data_report,
    read_manifest,
    require_trainable,
    scan,
    write_manifest,
)
from duet.errors import DataError


def _scan(root: Path) -> Manifest:
    return scan(root, progress=False, workers=4)


def _by_path(manifest: Manifest) -> dict[str, ManifestRow]:
    return {r.path: r for r in manifest.rows}


def _two_classes(root: Path, n: int = 3) -> None:
    for label, offset in (("cat", 0), ("dog", 50)):
        for i in range(n):
            oddfiles.write_good_png(root / label / f"{i}.png", seed=offset + i)


@pytest.fixture(scope="module")
def salted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Manifest]:
    root = tmp_path_factory.mktemp("salted")
    expected = oddfiles.write_salted_folder(root)
    return root, expected, _scan(root)


def test_salted_folder_gives_each_file_its_expected_status(salted: tuple[Path, dict[str, str], Manifest]) -> None:
    _, expected, manifest = salted
    assert {r.path: r.status for r in manifest.rows} == expected
    assert manifest.layout == "classes"
    assert manifest.labels == ["a", "b"]
    assert [r.path for r in manifest.rows] == sorted(expected)


def test_skipped_files_have_specific_reasons(salted: tuple[Path, dict[str, str], Manifest]) -> None:
    _, _, manifest = salted
    rows = _by_path(manifest)
    assert "truncated" in rows["a/truncated.jpg"].reason
    assert "empty" in rows["a/empty.jpg"].reason
    assert "not an image" in rows["b/text.jpg"].reason
    assert "pixels" in rows["b/huge_header.png"].reason
    assert rows["b/README.txt"].reason.startswith("not an image file extension '.txt' (allowed: .bmp, ")


def test_good_odd_files_get_their_displayed_size(salted: tuple[Path, dict[str, str], Manifest]) -> None:
    _, _, manifest = salted
    rows = _by_path(manifest)
    assert (rows["a/exif_rotated.jpg"].width, rows["a/exif_rotated.jpg"].height) == (24, 40)
    assert (rows["b/one_pixel.png"].width, rows["b/one_pixel.png"].height) == (1, 1)
    ok = [r for r in manifest.rows if r.status == STATUS_OK]
    assert all(r.reason == "" and len(r.sha256) == 64 and r.bytes > 0 for r in ok)


def test_every_skipped_file_is_in_the_report_with_its_reason(
    salted: tuple[Path, dict[str, str], Manifest],
) -> None:
    _, expected, manifest = salted
    report = data_report(manifest)
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {p for p, status in expected.items() if status == STATUS_SKIPPED}
    assert all(skipped.values())
    assert report["num_files"] == len(expected)
    assert report["num_usable"] == sum(status == STATUS_OK for status in expected.values())
    assert report["counts"]["a"]["unassigned"] == report["counts"]["a"]["total"] == 16
    assert report["counts"]["b"]["total"] == 14
    assert report["imbalance_ratio"] == pytest.approx(16 / 14)
    json.dumps(report)


def test_scan_never_changes_an_input_file(tmp_path: Path) -> None:
    oddfiles.write_salted_folder(tmp_path)

    def fingerprint() -> dict[str, tuple[str, int]]:
        return {
            str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file()
        }

    before = fingerprint()
    _scan(tmp_path)
    assert fingerprint() == before


def test_duplicates_within_a_class_keep_the_first_copy(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    shutil.copy(tmp_path / "cat/0.png", tmp_path / "cat/copy.png")
    (tmp_path / "cat/nested").mkdir()
    shutil.copy(tmp_path / "cat/0.png", tmp_path / "cat/nested/again.png")
    rows = _by_path(_scan(tmp_path))
    assert rows["cat/0.png"].status == STATUS_OK
    for dup in ("cat/copy.png", "cat/nested/again.png"):
        assert rows[dup].status == STATUS_DUPLICATE
        assert rows[dup].reason == "same bytes as cat/0.png"
        assert rows[dup].label == "cat"


def test_duplicates_are_listed_in_the_report(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    shutil.copy(tmp_path / "dog/1.png", tmp_path / "dog/zz.png")
    report = data_report(_scan(tmp_path))
    assert report["duplicates"] == [{"path": "dog/zz.png", "same_as": "dog/1.png"}]


def test_same_bytes_under_two_labels_is_a_conflict_on_both(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    shutil.copy(tmp_path / "cat/0.png", tmp_path / "dog/looks_like_a_cat.png")
    manifest = _scan(tmp_path)
    rows = _by_path(manifest)
    assert rows["cat/0.png"].status == STATUS_CONFLICT
    assert rows["cat/0.png"].reason == "same bytes also labelled 'dog' (dog/looks_like_a_cat.png)"
    assert rows["dog/looks_like_a_cat.png"].status == STATUS_CONFLICT
    assert "'cat'" in rows["dog/looks_like_a_cat.png"].reason
    conflicts = data_report(manifest)["conflicts"]
    assert {c["path"] for c in conflicts} == {"cat/0.png", "dog/looks_like_a_cat.png"}


def test_splits_layout_is_detected_from_train_and_validation_folders(tmp_path: Path) -> None:
    for s, folder in enumerate(("train", "validation", "test")):
        for c, label in enumerate(("cat", "dog")):
            oddfiles.write_good_jpeg(tmp_path / folder / label / "x.jpg", seed=10 * s + c)
    oddfiles.write_good_png(tmp_path / "train" / "loose.png", seed=7)
    manifest = _scan(tmp_path)
    rows = _by_path(manifest)
    assert manifest.layout == "splits"
    assert manifest.labels == ["cat", "dog"]
    assert rows["train/cat/x.jpg"].split == "train"
    assert rows["validation/dog/x.jpg"].split == "val"
    assert (rows["validation/dog/x.jpg"].label, rows["test/cat/x.jpg"].split) == ("dog", "test")
    assert rows["train/loose.png"].status == STATUS_SKIPPED
    assert "not inside a class folder" in rows["train/loose.png"].reason
    assert data_report(manifest)["splits"] == {"train": 2, "val": 2, "test": 2}
    require_trainable(manifest)


def test_duplicate_across_splits_keeps_the_train_copy(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _two_classes(tmp_path / split, n=1)
    rows = _by_path(_scan(tmp_path))
    assert rows["train/cat/0.png"].status == STATUS_OK
    assert rows["val/cat/0.png"].status == STATUS_DUPLICATE


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    oddfiles.write_good_png(tmp_path / "cat/.thumb.png", seed=99)
    oddfiles.write_good_png(tmp_path / ".cache/cat/x.png", seed=98)
    oddfiles.write_good_png(tmp_path / "dog/.git/x.png", seed=97)
    manifest = _scan(tmp_path)
    assert manifest.labels == ["cat", "dog"]
    assert all("/." not in "/" + r.path for r in manifest.rows)
    assert len(manifest.rows) == 6


def test_file_outside_a_class_folder_is_skipped(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    oddfiles.write_good_png(tmp_path / "stray.png", seed=42)
    row = _by_path(_scan(tmp_path))["stray.png"]
    assert (row.status, row.label) == (STATUS_SKIPPED, "")
    assert "not inside a class folder" in row.reason


def test_manifest_csv_round_trips(salted: tuple[Path, dict[str, str], Manifest], tmp_path: Path) -> None:
    root, _, manifest = salted
    path = tmp_path / "run" / "manifest.csv"
    write_manifest(manifest, path)
    assert path.read_text().splitlines()[0] == "path,label,bytes,sha256,width,height,status,reason,split"
    again = read_manifest(path, root)
    assert again == manifest


def test_splits_manifest_round_trips_with_its_layout(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _two_classes(tmp_path / "data" / split, n=2)
    manifest = _scan(tmp_path / "data")
    write_manifest(manifest, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv", tmp_path / "data") == manifest


def test_missing_data_dir_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass a folder with one sub-folder per class"):
        _scan(tmp_path / "nope")


def test_folder_without_images_is_a_data_error(tmp_path: Path) -> None:
    oddfiles.write_readme(tmp_path / "cat" / "notes.txt")
    oddfiles.write_good_png(tmp_path / "loose.png", seed=1)
    with pytest.raises(DataError, match=r"No images found in .*Expected .*/<class>/<image>\. Allowed formats: \.bmp"):
        _scan(tmp_path)


def test_single_class_is_not_trainable(tmp_path: Path) -> None:
    for i in range(3):
        oddfiles.write_good_png(tmp_path / "cat" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match=r"found only 1 class \('cat'\) in .*at least two class folders"):
        require_trainable(_scan(tmp_path))


def test_class_with_no_usable_image_is_not_trainable(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    shutil.rmtree(tmp_path / "dog")
    oddfiles.write_truncated_jpeg(tmp_path / "dog" / "a.jpg")
    oddfiles.write_zero_byte(tmp_path / "dog" / "b.jpg")
    with pytest.raises(DataError) as info:
        require_trainable(_scan(tmp_path))
    message = info.value.message
    assert message.startswith("class 'dog' has no usable image (2 files skipped: dog/a.jpg: truncated image; ")
    assert message.endswith(f"add images or remove the folder {tmp_path}/dog")


def test_empty_class_folder_is_not_trainable(tmp_path: Path) -> None:
    _two_classes(tmp_path)
    shutil.rmtree(tmp_path / "dog")
    (tmp_path / "dog").mkdir()
    manifest = _scan(tmp_path)
    assert manifest.labels == ["cat", "dog"]
    assert data_report(manifest)["imbalance_ratio"] is None
    with pytest.raises(DataError, match="class 'dog' has no usable image \\(the folder is empty\\)"):
        require_trainable(manifest)


def test_splits_layout_with_an_empty_train_split_is_not_trainable(tmp_path: Path) -> None:
    _two_classes(tmp_path / "val")
    oddfiles.write_readme(tmp_path / "train" / "cat" / "notes.txt")
    with pytest.raises(DataError, match=r"the train split .*/train has no usable image"):
        require_trainable(_scan(tmp_path))


def test_splits_layout_with_a_class_missing_from_train_is_not_trainable(tmp_path: Path) -> None:
    _two_classes(tmp_path / "val")
    oddfiles.write_good_png(tmp_path / "train" / "cat" / "t.png", seed=77)
    with pytest.raises(DataError, match=r"class 'dog' has no usable training image; add images to .*/train/dog/"):
        require_trainable(_scan(tmp_path))
