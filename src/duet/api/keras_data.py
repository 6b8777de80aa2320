"""The data a Keras user already has -> a duet data folder, so training from it
is training from a folder (same scan, split, checkpoints, resume and reports).

Accepted, for the training data and for a separate validation set alike:

- a folder (class sub-folders, or ``train/`` ``val/``);
- a ``tf.data.Dataset`` of ``(image, label)`` elements or batches, e.g. from
  ``tf.keras.utils.image_dataset_from_directory`` (which knows its
  ``file_paths`` and ``class_names``);
- a Keras ``ImageDataGenerator`` iterator: ``flow_from_directory`` (a
  ``DirectoryIterator``: ``filepaths``, ``classes``, ``class_indices``) or
  ``flow(x, y)`` (a ``NumpyArrayIterator``: ``x``, ``y``).

What is written, next to the run (``runs/<name>.data/``)::

    <name>.data/
      train/<label>/000000-cat.1.jpg -> /your/photos/cat/cat.1.jpg   (a link to the original file)
      val/<label>/000000.png                                         (pixels, written once as PNG)

Objects that know their files are linked to them (copied where the file system
refuses links): no pixel is re-encoded and the run's manifest hashes the
user's own bytes. The others are iterated once, in order, and each image is
written as a lossless RGB PNG; the generator's random augmentation is not
applied (``flow`` iterators are read from their ``x`` and ``y`` arrays), since
duet augments on its own. Without ``val`` the folder holds the class folders
directly and duet splits it (``val_split``). The folder is built under a
temporary name and renamed into place, so a failure leaves nothing behind.

Labels: class names when the object has them (``class_names``,
``class_indices``), else the label ids written with the same number of digits
(``07``, ``12``) so that duet's sorted label order is the id order. Image
values: uint8 as they are; float images are mapped from ``value_range``
(Keras yields 0..255 floats; after ``Rescaling(1/255)`` pass ``(0, 1)``), and
values outside it are an error, never clipped silently.

Nothing here imports TensorFlow: the objects are recognised by the module
their type comes from and read through their own methods.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from duet.data.scan import LAYOUT_SPLITS, SPLIT_FOLDERS
from duet.errors import ConfigError, DataError, RunError

KINDS = ("folder", "tf.data.Dataset", "DirectoryIterator", "NumpyArrayIterator")
_KERAS_MODULES = ("tensorflow", "keras", "tf_keras")


def kind_of(data: Any, name: str = "data") -> str:
    """Which of :data:`KINDS` ``data`` is; :class:`ConfigError` for anything else."""
    if isinstance(data, (str, os.PathLike)):
        return "folder"
    module = type(data).__module__.split(".")[0]
    if module in _KERAS_MODULES:
        if hasattr(data, "element_spec") and hasattr(data, "as_numpy_iterator"):
            return "tf.data.Dataset"
        if hasattr(data, "filepaths") and hasattr(data, "class_indices"):
            return "DirectoryIterator"
        if hasattr(data, "x") and hasattr(data, "y"):
            return "NumpyArrayIterator"
    raise ConfigError(
        f"`{name}` must be a data folder, a tf.data.Dataset of (image, label) or a Keras ImageDataGenerator "
        f"iterator (flow_from_directory / flow). Received: {type(data).__module__}.{type(data).__name__}"
    )


def needs_folder(data: Any, val: Any) -> bool:
    """True when ``data``/``val`` must be written as a folder first (anything but one plain folder)."""
    return val is not None or kind_of(data) != "folder"


def build_data_folder(data: Any, val: Any, dest: Path, *, value_range: tuple[float, float] = (0.0, 255.0)) -> Path:
    """Write ``data`` (and ``val``) as a duet data folder at ``dest``; see the module doc.

    Raises:
        ConfigError: an unsupported object, bad ``value_range``, or images of
            the wrong shape or range.
        DataError: a part holds no image.
        RunError: ``dest`` exists already.
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ConfigError(f"`value_range` must be (low, high) with high > low. Received: value_range={value_range!r}")
    parts = [("train", data, "data"), ("val", val, "val")] if val is not None else [("", data, "data")]
    for _, obj, name in parts:
        kind_of(obj, name)
    dest = Path(dest)
    if dest.exists():
        raise RunError(f"'{dest}' already exists; pick another run name (name=...) or remove it")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ids: set[int] = set()
        for split, obj, name in parts:
            _write_part(obj, tmp / split if split else tmp, (lo, hi), name, ids)
        _pad_id_folders(tmp, ids)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_part(obj: Any, folder: Path, value_range: tuple[float, float], name: str, ids: set[int]) -> None:
    """One split (or the whole set): links for known files, PNGs for pixels.
    Label ids without names are collected in ``ids`` (their folders get padded later)."""
    kind = kind_of(obj, name)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        _link_class_folders(Path(obj), folder, name)
    elif kind == "DirectoryIterator":
        names = {i: label for label, i in obj.class_indices.items()}
        _link_files([(str(p), names[int(c)]) for p, c in zip(obj.filepaths, obj.classes)], folder, name)
    elif kind == "tf.data.Dataset" and (files := _known_files(obj)) is not None:
        _link_files(files, folder, name)
    else:
        class_names = list(getattr(obj, "class_names", None) or [])
        pairs = _numpy_pairs(obj) if kind == "NumpyArrayIterator" else _dataset_pairs(obj)
        _write_pixels(pairs, folder, value_range, class_names, name, ids)


def _known_files(ds: Any) -> list[tuple[str, str]] | None:
    """(path, label) of an ``image_dataset_from_directory`` dataset whose labels
    were inferred from the folders; None when the dataset does not know them."""
    paths, names = getattr(ds, "file_paths", None), getattr(ds, "class_names", None)
    if not paths or not names:
        return None
    labels = [Path(p).parent.name for p in paths]
    if not set(labels) <= set(names):
        return None  # labels given by the user, not the folders: read them from the dataset
    return list(zip(map(str, paths), labels))


def _link_class_folders(source: Path, folder: Path, name: str) -> None:
    if not source.is_dir():
        raise DataError(f"`{name}` folder '{source}' does not exist or is not a folder; pass a folder of class folders")
    entries = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if {SPLIT_FOLDERS.get(p.name) for p in entries} >= {"train", "val"}:
        raise ConfigError(
            f"`{name}` folder '{source}' already holds train/ and val/ ({LAYOUT_SPLITS} layout); "
            "pass it alone, without val="
        )
    if not entries:
        raise DataError(f"No class folders in {source}; expected {source}/<class>/<image>")
    for entry in entries:
        _link(entry.resolve(), folder / entry.name)


def _link_files(files: list[tuple[str, str]], folder: Path, name: str) -> None:
    if not files:
        raise DataError(f"`{name}` holds no image file")
    for i, (path, label) in enumerate(files):
        source = Path(path).resolve()
        target = folder / label / f"{i:06d}-{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        _link(source, target)


def _link(source: Path, target: Path) -> None:
    """A symbolic link to ``source``, or a copy where links are refused (e.g. Windows without the right)."""
    try:
        target.symlink_to(source, target_is_directory=source.is_dir())
    except OSError:
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)


def _dataset_pairs(ds: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) numpy batches of a tf.data.Dataset; single elements become batches of one."""
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ConfigError(f"the tf.data.Dataset must yield (image, label) pairs. Received: element_spec={spec!r}")
    batched = spec[0].shape.rank == 4
    for x, y in ds.as_numpy_iterator():
        yield (x, np.asarray(y)) if batched else (x[None], np.asarray(y)[None])


def _numpy_pairs(it: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The raw arrays behind ``ImageDataGenerator.flow(x, y)`` (no random augmentation)."""
    if it.y is None:
        raise ConfigError("the flow(x, y) iterator has no labels (y=None); pass flow(x, y)")
    yield np.asarray(it.x), np.asarray(it.y)


def _write_pixels(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]],
    folder: Path,
    value_range: tuple[float, float],
    class_names: list[str],
    name: str,
    ids: set[int],
) -> None:
    n = 0
    for images, labels in pairs:
        for image, label in zip(_to_uint8(images, value_range, name), _label_ids(labels, len(images))):
            if class_names:
                if not 0 <= label < len(class_names):
                    raise ConfigError(f"`{name}` has label id {label} but only {len(class_names)} class_names")
                label_dir = class_names[label]
            else:
                ids.add(label)
                label_dir = str(label)
            target = folder / label_dir / f"{n:06d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target, format="PNG")
            n += 1
    if n == 0:
        raise DataError(f"`{name}` yielded no image")


def _to_uint8(images: np.ndarray, value_range: tuple[float, float], name: str) -> np.ndarray:
    """(N, H, W, C) with C in 1, 3 -> uint8 (N, H, W, 3); floats mapped from ``value_range``."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(
            f"`{name}` images must be HxWxC or NxHxWxC with C = 1 or 3 (channels last). Received: shape={images.shape}"
        )
    if images.dtype != np.uint8:
        lo, hi = value_range
        x = images.astype(np.float32)
        low, high = float(x.min()), float(x.max())
        span = (hi - lo) * 0.01
        if low < lo - span or high > hi + span:
            raise ConfigError(
                f"`{name}` images hold values from {low:g} to {high:g}, outside value_range=({lo:g}, {hi:g}); "
                "pass the range they use, e.g. value_range=(0, 1) after Rescaling(1/255)"
            )
        if hi > 1.0 and high <= 1.0 and lo >= 0:
            raise ConfigError(
                f"`{name}` images are floats in [0, 1] but value_range=({lo:g}, {hi:g}); pass value_range=(0, 1)"
            )
        images = np.clip(np.floor((x - lo) * (255.0 / (hi - lo)) + 0.5), 0, 255).astype(np.uint8)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _label_ids(labels: np.ndarray, n: int) -> list[int]:
    """Integer ids, floats holding integers (Keras "binary") or one-hot rows (Keras "categorical")."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(y) != n:
        raise ConfigError(f"got {n} images but {len(y)} labels in one batch; labels must be ids or one-hot rows")
    if y.dtype.kind == "f" and not np.all(np.round(y) == y):
        raise ConfigError("labels must be integer ids or one-hot rows. Received: fractional values")
    return [int(v) for v in np.round(y).astype(np.int64)]


def _pad_id_folders(root: Path, ids: set[int]) -> None:
    """Rename id folders ``7`` -> ``07`` when ids reach ``12``, in every split,
    so that duet's sorted labels are in id order."""
    if not ids:
        return
    width = len(str(max(ids)))
    for split in [root, *(root / s for s in ("train", "val"))]:
        for i in ids:
            old, new = split / str(i), split / f"{i:0{width}d}"
            if old.is_dir() and old != new:
                old.rename(new)
