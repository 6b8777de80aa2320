"""Folder -> manifest: one row per file, with its label, hash, size and fate.

Two layouts are understood::

    DATA_DIR/                      DATA_DIR/
      cat/                           train/
        001.jpg                        cat/001.jpg
        more/002.png                   dog/002.jpg
      dog/                           val/          (or validation/, valid/)
        003.jpg                        cat/003.jpg
                                     test/         (optional)
                                       dog/004.jpg

Left: ``layout="classes"``, each sub-folder is a class (files in nested folders
belong to it) and splits are assigned later by ``duet.data.split``. Right:
``layout="splits"``, chosen when ``train/`` and a validation folder both exist;
the folders fix each file's split.

Every file gets a row, even the ones that cannot be used, so that a user can
see what was skipped and why. Hidden files and folders (``.name``) are ignored.
Each file is read once, hashed and fully decoded with ``duet.data.imageio``, in
parallel threads (hashing and PIL decoding release the GIL). Files with the same
bytes are marked: within one class all but one are ``duplicate``; under two
labels every copy is a ``conflict`` and none is used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from duet.data.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, DecodeError, decode
from duet.errors import DataError
from duet.system.atomic import write_text_atomic
from duet.system.device import cpu_count
from duet.system.progress import track

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_DUPLICATE = "duplicate"
STATUS_CONFLICT = "conflict"
SPLIT_NAMES = ("train", "val", "test")

LAYOUT_CLASSES = "classes"
LAYOUT_SPLITS = "splits"

# Folder name -> split, for the "splits" layout.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}

_ALLOWED = ", ".join(sorted(IMAGE_EXTENSIONS))
_SPLIT_ORDER = {name: i for i, name in enumerate(SPLIT_NAMES)}


@dataclass
class ManifestRow:
    """One file under the data folder. Field order is the CSV column order."""

    path: str  # relative to data_dir, POSIX separators
    label: str  # class folder name; "" when the file is not inside one
    bytes: int
    sha256: str  # "" when not read
    width: int  # 0 when not decodable
    height: int
    status: str  # ok | skipped | duplicate | conflict
    reason: str  # "" for ok, else one line
    split: str  # train | val | test | "" (unassigned)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))
_INT_COLUMNS = frozenset({"bytes", "width", "height"})


@dataclass
class Manifest:
    data_dir: Path  # absolute
    labels: list[str]  # sorted class names, including empty class folders
    rows: list[ManifestRow]  # sorted by path
    layout: str  # "classes" or "splits"

    def usable(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.status == STATUS_OK]

    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass(frozen=True)
class _Candidate:
    """A file found by the walk, before it is read."""

    path: Path
    rel: str
    label: str
    split: str
    skip_reason: str  # set when the file's location alone rules it out


# ---------------------------------------------------------------- scan


def scan(
    data_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = True,
) -> Manifest:
    """Read every file under ``data_dir`` into a :class:`Manifest` (see the module
    docstring for the layouts).

    Args:
        data_dir: the data folder.
        max_pixels: images with more pixels are skipped (decompression bombs).
        workers: threads reading and decoding files; default min(32, CPUs + 4).
        progress: show a progress bar on stderr.

    Raises:
        DataError: ``data_dir`` is missing, or holds no image inside a class folder.
    """
    root = _check_data_dir(data_dir)
    layout = _detect_layout(root)
    labels, candidates = _walk(root, layout)
    if not any(c.skip_reason == "" and _has_image_extension(c.rel) for c in candidates):
        raise DataError(_no_images_message(root, layout))
    rows = _process_all(candidates, max_pixels, workers, progress)
    rows.sort(key=lambda r: r.path)
    return Manifest(data_dir=root, labels=labels, rows=_mark_duplicates(rows), layout=layout)


def _check_data_dir(data_dir: str | Path) -> Path:
    root = Path(data_dir).expanduser().absolute()
    example = f"e.g. {root}/cat/1.jpg, {root}/dog/2.jpg"
    if not root.exists():
        raise DataError(
            f"data directory '{data_dir}' does not exist; pass a folder with one sub-folder per class, {example}"
        )
    if not root.is_dir():
        raise DataError(
            f"data directory '{data_dir}' is a file, not a folder; "
            f"pass a folder with one sub-folder per class, {example}"
        )
    return root


def _no_images_message(root: Path, layout: str) -> str:
    expected = f"{root}/train/<class>/<image>" if layout == LAYOUT_SPLITS else f"{root}/<class>/<image>"
    return (
        f"No images found in {root}. Expected {expected}. Allowed formats: {_ALLOWED}; "
        f"add images in one sub-folder per class"
    )


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _hidden(p.name))


def _detect_layout(root: Path) -> str:
    splits = {SPLIT_FOLDERS[p.name] for p in _visible_entries(root) if p.is_dir() and p.name in SPLIT_FOLDERS}
    return LAYOUT_SPLITS if {"train", "val"} <= splits else LAYOUT_CLASSES


def _walk(root: Path, layout: str) -> tuple[list[str], list[_Candidate]]:
    """Find class folders and every visible file; returns (sorted labels, candidates)."""
    labels: set[str] = set()
    found: list[_Candidate] = []
    for entry in _visible_entries(root):
        if layout == LAYOUT_CLASSES:
            _walk_class_level(root, entry, "", labels, found)
        elif entry.is_dir() and entry.name in SPLIT_FOLDERS:
            split = SPLIT_FOLDERS[entry.name]
            for sub in _visible_entries(entry):
                _walk_class_level(root, sub, split, labels, found)
        else:
            reason = "not inside a split folder (expected train/<class>/, val/<class>/ or test/<class>/)"
            found.extend(_candidates(root, entry, label="", split="", skip_reason=reason))
    return sorted(labels), found


def _walk_class_level(root: Path, entry: Path, split: str, labels: set[str], found: list[_Candidate]) -> None:
    if entry.is_dir():
        labels.add(entry.name)
        found.extend(_candidates(root, entry, label=entry.name, split=split, skip_reason=""))
    else:
        found.extend(_candidates(root, entry, label="", split=split, skip_reason="not inside a class folder"))


def _candidates(root: Path, top: Path, *, label: str, split: str, skip_reason: str) -> Iterator[_Candidate]:
    """Every visible file at or below ``top`` (symlinked folders are not followed
    below ``top``, so a link loop cannot hang the scan)."""
    if not top.is_dir():
        yield _Candidate(top, top.relative_to(root).as_posix(), label, split, skip_reason)
        return
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if not _hidden(name):
                path = Path(folder) / name
                yield _Candidate(path, path.relative_to(root).as_posix(), label, split, skip_reason)


def _has_image_extension(rel: str) -> bool:
    return Path(rel).suffix.lower() in IMAGE_EXTENSIONS


def _process_all(
    candidates: list[_Candidate], max_pixels: int, workers: int | None, progress: bool
) -> list[ManifestRow]:
    workers = workers or min(32, cpu_count() + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_process, c, max_pixels) for c in candidates]
        done = track(as_completed(futures), total=len(futures), description="Scanning", enabled=progress)
        return [f.result() for f in done]


def _process(c: _Candidate, max_pixels: int) -> ManifestRow:
    """Read, hash and decode one file (never writes to it)."""
    row = ManifestRow(c.rel, c.label, 0, "", 0, 0, STATUS_SKIPPED, c.skip_reason, c.split)
    if c.skip_reason:
        row.bytes = _size(c.path)
        return row
    suffix = Path(c.rel).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        row.bytes = _size(c.path)
        found = f"file extension '{suffix}'" if suffix else "file without extension"
        row.reason = f"not an image {found} (allowed: {_ALLOWED})"
        return row
    try:
        data = c.path.read_bytes()
    except OSError as e:
        row.reason = f"cannot read file: {e.strerror or e}"
        return row
    row.bytes, row.sha256 = len(data), hashlib.sha256(data).hexdigest()
    try:
        pixels = decode(data, max_pixels=max_pixels)
    except DecodeError as e:
        row.reason = e.reason
        return row
    row.height, row.width = pixels.shape[:2]
    row.status, row.reason = STATUS_OK, ""
    return row


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mark_duplicates(rows: list[ManifestRow]) -> list[ManifestRow]:
    """Same bytes under two labels -> every copy ``conflict``; within one label the
    first (train, val, test, then by path) stays ``ok``, the others ``duplicate``."""
    groups: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        if row.status == STATUS_OK:
            groups[row.sha256].append(row)
    for group in groups.values():
        if len(group) < 2:
            continue
        if len({r.label for r in group}) > 1:
            for row in group:
                other = next(r for r in group if r.label != row.label)
                row.status = STATUS_CONFLICT
                row.reason = f"same bytes also labelled '{other.label}' ({other.path})"
            continue
        keep, *rest = sorted(group, key=_first_copy_order)
        for row in rest:
            row.status, row.reason = STATUS_DUPLICATE, f"same bytes as {keep.path}"
    return rows


def _first_copy_order(row: ManifestRow) -> tuple[int, str]:
    return _SPLIT_ORDER.get(row.split, len(SPLIT_NAMES)), row.path


# ---------------------------------------------------------------- CSV


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest.csv`` atomically: a header row, then one row per file."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in manifest.rows:
        writer.writerow([getattr(row, name) for name in COLUMNS])
    write_text_atomic(Path(path), buf.getvalue())


def read_manifest(path: Path, data_dir: Path) -> Manifest:
    """Read a CSV written by :func:`write_manifest`. Labels are those of the rows
    (a class folder without files is not recorded in the CSV)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise DataError(f"manifest '{path}' has columns {reader.fieldnames}; expected {list(COLUMNS)}")
            rows = [_row_from_csv(record, path, i) for i, record in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise DataError(f"manifest '{path}' does not exist; run a scan first") from None
    labels = sorted({r.label for r in rows if r.label})
    return Manifest(
        data_dir=Path(data_dir).expanduser().absolute(),
        labels=labels,
        rows=sorted(rows, key=lambda r: r.path),
        layout=_infer_layout(rows),
    )


def _row_from_csv(record: dict[str, Any], path: Path, line: int) -> ManifestRow:
    values: dict[str, Any] = {}
    for name in COLUMNS:
        value = record.get(name)
        if value is None:
            raise DataError(f"manifest '{path}' line {line} has too few columns")
        try:
            values[name] = int(value) if name in _INT_COLUMNS else value
        except ValueError:
            raise DataError(f"manifest '{path}' line {line}: {name}={value!r} is not an integer") from None
    return ManifestRow(**values)


def _infer_layout(rows: list[ManifestRow]) -> str:
    """In the "classes" layout every labelled path starts with its label; in
    "splits" it starts with a split folder and the label comes second."""
    for row in rows:
        if row.label:
            return LAYOUT_CLASSES if row.path.split("/", 1)[0] == row.label else LAYOUT_SPLITS
    return LAYOUT_CLASSES


# ---------------------------------------------------------------- checks and report


def require_trainable(manifest: Manifest) -> None:
    """Raise :class:`DataError` unless there are two or more classes, each with a
    usable image (and, in the "splits" layout, a usable training image)."""
    root = manifest.data_dir
    if len(manifest.labels) < 2:
        found = "no class folder" if not manifest.labels else f"only 1 class ('{manifest.labels[0]}')"
        raise DataError(
            f"found {found} in {root}; classification needs at least two class folders, "
            f"e.g. {root}/cat/1.jpg and {root}/dog/2.jpg"
        )
    usable = manifest.usable()
    for label in manifest.labels:
        if not any(r.label == label for r in usable):
            raise DataError(_empty_class_message(manifest, label))
    if manifest.layout == LAYOUT_SPLITS:
        train = [r for r in usable if r.split == "train"]
        if not train:
            raise DataError(
                f"the train split {root}/train has no usable image; put training images in {root}/train/<class>/"
            )
        for label in manifest.labels:
            if not any(r.label == label for r in train):
                raise DataError(
                    f"class '{label}' has no usable training image; "
                    f"add images to {root}/train/{label}/ or remove the class from every split"
                )


def _empty_class_message(manifest: Manifest, label: str) -> str:
    rows = [r for r in manifest.rows if r.label == label]
    if rows:
        shown = "; ".join(f"{r.path}: {r.reason}" for r in rows[:3])
        more = f"; and {len(rows) - 3} more" if len(rows) > 3 else ""
        files = f"{len(rows)} file{'s' if len(rows) != 1 else ''} skipped: {shown}{more}"
    else:
        files = "the folder is empty"
    if manifest.layout == LAYOUT_SPLITS:
        where = f"the '{label}' folders under {manifest.data_dir}/<split>/"
    else:
        where = f"the folder {manifest.data_dir}/{label}"
    return f"class '{label}' has no usable image ({files}); add images or remove {where}"


def data_report(manifest: Manifest) -> dict[str, Any]:
    """Counts per class and split, and every file that is not used and why (JSON-able)."""
    usable = manifest.usable()
    counts: dict[str, dict[str, int]] = {
        label: {"train": 0, "val": 0, "test": 0, "unassigned": 0, "total": 0} for label in manifest.labels
    }
    for row in usable:
        per_class = counts.setdefault(row.label, {"train": 0, "val": 0, "test": 0, "unassigned": 0, "total": 0})
        per_class[row.split or "unassigned"] += 1
        per_class["total"] += 1
    totals = [c["total"] for c in counts.values()]
    kept = {(r.sha256, r.label): r.path for r in usable}
    return {
        "data_dir": str(manifest.data_dir),
        "layout": manifest.layout,
        "labels": list(manifest.labels),
        "num_files": len(manifest.rows),
        "num_usable": len(usable),
        "counts": counts,
        "splits": {name: sum(1 for r in usable if r.split == name) for name in SPLIT_NAMES},
        "skipped": [{"path": r.path, "reason": r.reason} for r in manifest.rows if r.status == STATUS_SKIPPED],
        "duplicates": [
            {"path": r.path, "same_as": kept.get((r.sha256, r.label), "")}
            for r in manifest.rows
            if r.status == STATUS_DUPLICATE
        ],
        "conflicts": [
            {"path": r.path, "label": r.label, "reason": r.reason} for r in manifest.rows if r.status == STATUS_CONFLICT
        ],
        # None when a class has no usable image (a ratio would be infinite).
        "imbalance_ratio": (max(totals) / min(totals)) if totals and min(totals) > 0 else None,
    }


def with_rows(manifest: Manifest, rows: list[ManifestRow]) -> Manifest:
    """A copy of ``manifest`` holding ``rows`` (copied)."""
    return Manifest(
        data_dir=manifest.data_dir,
        labels=list(manifest.labels),
        rows=[replace(r) for r in rows],
        layout=manifest.layout,
    )
