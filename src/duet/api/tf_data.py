"""duet for people who live in Keras: a run's data as a ``tf.data.Dataset``, and
any ``tf.data.Dataset`` as duet training batches.

``tf_dataset(run, split)`` gives a split of a duet run (or manifest) with duet's
labels and duet's preprocessing, decoded by the same pipeline as the "tf"
backend (``duet.data.tfdata``)::

    from duet import tf_dataset
    train = tf_dataset("runs/cats", "train", batch_size=32)   # uint8 256x256x3, int64 label
    val = tf_dataset("runs/cats", "val", batch_size=32)       # uint8 224x224x3 (the eval crop)
    keras_model.fit(train.map(lambda x, y: (tf.cast(x, "float32") / 255, y)), validation_data=...)

``from_tf_dataset(ds, spec, device)`` goes the other way: a pipeline you already
have, yielding ``(image, label)``, feeds duet's PyTorch training loop::

    from duet import from_tf_dataset
    loader = from_tf_dataset(my_ds, spec, torch.device("cuda"), batch_size=64)
    for batch in loader:               # duet.data.contract.Batch, uint8 NCHW load squares
        x = augment.train_batch(batch.images, spec, ...)

Importing this module imports TensorFlow (safely, see ``tfdata.import_tensorflow``);
``duet`` re-exports both functions lazily, so ``import duet`` does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.run_dir import RunInfo, RunPaths
from duet.data.contract import Batch, default_workers
from duet.data.imageio import DEFAULT_MAX_PIXELS
from duet.data.preprocess import PreprocessSpec, centre_offset, to_load_square
from duet.data.scan import SPLIT_NAMES, Manifest, read_manifest
from duet.data.tfdata import file_dataset, make_decoder, tf, to_torch
from duet.errors import ConfigError, DataError, RunError

SIZES = ("load", "eval")


def _check_args(split: str, size: str | None, batch_size: int | None) -> None:
    if split not in SPLIT_NAMES:
        raise ConfigError(f"`split` must be one of {list(SPLIT_NAMES)}. Received: split={split!r}")
    if size is not None and size not in SIZES:
        raise ConfigError(f"`size` must be one of {list(SIZES)} or None. Received: size={size!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"`batch_size` must be a positive integer or None. Received: batch_size={batch_size!r}")


def tf_dataset(
    run_or_manifest: str | Path | RunInfo | Manifest,
    split: str = "train",
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    size: str | None = None,
    spec: PreprocessSpec | None = None,
    workers: int | None = None,
) -> Any:
    """One split of a duet run as a ``tf.data.Dataset`` of ``(image, label)``.

    Expected input, either a run folder made by ``duet train``::

        runs/<name>/
          run.json        labels (their order gives the label ids) and preprocessing
          manifest.csv    every file, its label and split (never re-split here)

    or a :class:`~duet.data.scan.Manifest` (after ``duet.data.split.assign_splits``).

    Args:
        run_or_manifest: a run folder (path or ``RunInfo``) or a ``Manifest``.
        split: "train", "val" or "test". Default: "train".
        batch_size: images per element; ``None`` (default) yields single images.
        shuffle: reshuffle the files on every pass (with ``seed``). Default: True
            for "train", False otherwise.
        seed: shuffling seed. Default: 0.
        size: "load" - the spec's uint8 ``load_size`` square, from which training
            takes random crops; "eval" - its centre ``image_size`` crop, what the
            model sees at evaluation before normalisation. Default: "load" for
            "train", "eval" otherwise.
        spec: the preprocessing; default: the run's (for a Manifest:
            ``PreprocessSpec()``).
        workers: threads decoding files (tf.data's AUTOTUNE picks up to this
            many). Default: one per CPU core, at most 8.

    Returns:
        ``tf.data.Dataset`` of (uint8 [S, S, 3], int64 label), or batches
        ([N, S, S, 3], [N]), where S is ``load_size`` or ``image_size``. Pixels
        equal duet's own (``imageio.decode`` + ``preprocess.to_load_square``).
        Every file decoded at scan time; one changed since then stops the
        iteration with TensorFlow's error (``ds.ignore_errors()`` drops such
        files instead, silently).

    Raises:
        ConfigError: a bad argument value.
        RunError: not a run folder.
        DataError: the split has no usable image.
    """
    _check_args(split, size, batch_size)
    manifest, labels, run_spec = _open(run_or_manifest)
    spec = spec or run_spec
    size = size or ("load" if split == "train" else "eval")
    shuffle = split == "train" if shuffle is None else shuffle

    index = {label: i for i, label in enumerate(labels)}
    rows = [r for r in manifest.usable() if r.split == split]
    if not rows:
        found = {s: sum(r.split == s for r in manifest.usable()) for s in SPLIT_NAMES}
        raise DataError(f"split '{split}' has no usable image (usable images per split: {found}); pick another split")
    paths = [str(manifest.data_dir / r.path) for r in rows]
    decoder = make_decoder(spec, DEFAULT_MAX_PIXELS)
    ds = file_dataset(
        paths,
        [index[r.label] for r in rows],
        list(range(len(rows))),
        decoder,
        workers=default_workers() if workers is None else workers,
        shuffle_seed=seed if shuffle else None,
    )
    o, s = centre_offset(spec), spec.image_size
    if size == "eval":
        ds = ds.map(lambda x, y, i: (x[o : o + s, o : o + s, :], y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y, i: (x, y))
    if batch_size is not None:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def _open(source: str | Path | RunInfo | Manifest) -> tuple[Manifest, list[str], PreprocessSpec]:
    """(manifest, labels in id order, spec) of a run folder, RunInfo or Manifest."""
    if isinstance(source, Manifest):
        return source, list(source.labels), PreprocessSpec()
    if isinstance(source, RunInfo):
        return read_manifest(source.paths.manifest, source.data_dir), list(source.labels), source.preprocess
    if not isinstance(source, (str, Path)):
        raise ConfigError(
            "`run_or_manifest` must be a run folder (str or Path), a RunInfo or a Manifest. "
            f"Received: {type(source).__name__}"
        )
    paths = RunPaths(Path(source))
    if not paths.info.is_file() or not paths.manifest.is_file():
        raise RunError(
            f"'{source}' is not a duet run folder (it needs run.json and manifest.csv); "
            "pass a folder made by `duet train` (e.g. runs/<name>)"
        )
    try:
        info = json.loads(paths.info.read_text(encoding="utf-8"))
        labels, spec = list(info["labels"]), PreprocessSpec.from_dict(info["preprocess"])
        data_dir = Path(info["data_dir"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"'{paths.info}' is damaged ({type(e).__name__}: {e}); re-run `duet train`") from e
    return read_manifest(paths.manifest, data_dir), labels, spec


# ------------------------------------------------------------------ any tf.data.Dataset -> Batches


class TfDatasetLoader:
    """Batches from a user's ``tf.data.Dataset`` of (image, label); see :func:`from_tf_dataset`."""

    def __init__(
        self,
        ds: Any,
        spec: PreprocessSpec,
        device: torch.device,
        *,
        batch_size: int | None,
        value_range: tuple[float, float],
        steps: int | None,
        workers: int,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.epoch = 0
        image_spec, _ = _element_specs(ds)
        batched = image_spec.shape.rank == 4
        if batched and batch_size is not None:  # re-batch to the size asked for
            ds, batched = ds.unbatch(), False
        if not batched and batch_size is None:
            raise ConfigError(
                "`batch_size` is needed: the dataset yields single images and none was given. "
                "Pass batch_size=N (e.g. 64)"
            )
        lo, hi = float(value_range[0]), float(value_range[1])
        s = spec.load_size

        def square(rgb: np.ndarray) -> np.ndarray:
            return rgb if rgb.shape[:2] == (s, s) else to_load_square(rgb, spec)

        def squares(images: np.ndarray) -> np.ndarray:
            if images.ndim == 3:
                return square(images)
            return np.stack([square(im) for im in images]) if len(images) else np.zeros((0, s, s, 3), np.uint8)

        def convert(image: Any, label: Any) -> tuple[Any, Any]:
            x = image
            if x.dtype != tf.uint8:
                x = tf.cast(x, tf.float32)
                x = tf.cast(tf.clip_by_value(tf.floor((x - lo) * (255.0 / (hi - lo)) + 0.5), 0.0, 255.0), tf.uint8)
            if x.shape[-1] == 1:
                x = tf.image.grayscale_to_rgb(x)
            x = tf.numpy_function(squares, [x], tf.uint8, stateful=False)
            x = tf.ensure_shape(x, [None, s, s, 3] if batched else [s, s, 3])
            y = label
            if y.shape.rank == image.shape.rank - 2:  # one-hot vectors (Keras "categorical")
                y = tf.argmax(y, axis=-1)
            return x, tf.reshape(tf.cast(y, tf.int64), [-1] if batched else [])

        parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) if workers > 1 else {}
        ds = ds.map(convert, **parallel)
        if not batched:
            ds = ds.batch(int(batch_size))  # type: ignore[arg-type]
        options = tf.data.Options()
        options.deterministic = True
        self._ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
        cardinality = int(self._ds.cardinality())
        self._len: int | None = steps if steps is not None else (cardinality if cardinality >= 0 else None)

    def set_epoch(self, epoch: int) -> None:
        """Recorded only: the dataset's own ``shuffle`` decides the order."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self._len is None:
            raise TypeError("the tf.data.Dataset's length is unknown; pass steps=N to from_tf_dataset")
        return self._len

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        non_blocking = self.device.type == "cuda"
        for images, labels in self._ds:
            x = to_torch(images).permute(0, 3, 1, 2)  # NHWC -> NCHW view, no copy
            y = torch.from_numpy(labels.numpy())
            n = int(y.shape[0])
            yield Batch(
                x.to(self.device, non_blocking=non_blocking),
                y.to(self.device, non_blocking=non_blocking),
                torch.arange(seen, seen + n),
                [""] * n,
            )
            seen += n


def _element_specs(ds: Any) -> tuple[Any, Any]:
    spec = getattr(ds, "element_spec", None)
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ConfigError(f"`ds` must be a tf.data.Dataset of (image, label) pairs. Received: element_spec={spec!r}")
    image, label = spec
    if image.shape.rank not in (3, 4) or image.shape[-1] not in (1, 3):
        raise ConfigError(
            "images must be HxWxC or NxHxWxC with C = 1 or 3 (channels last, as Keras yields them). "
            f"Received: shape={image.shape}"
        )
    return image, label


def from_tf_dataset(
    ds: Any,
    spec: PreprocessSpec,
    device: torch.device | str,
    *,
    batch_size: int | None = None,
    value_range: tuple[float, float] = (0.0, 255.0),
    steps: int | None = None,
    workers: int | None = None,
) -> TfDatasetLoader:
    """Turn any ``tf.data.Dataset`` of (image, label) into duet training batches.

    Each image becomes the spec's uint8 ``load_size`` square (shorter side
    resized with Pillow, as duet does, then the centre square; images already
    that size pass unchanged), is batched, handed to PyTorch by DLPack without
    a copy and moved to ``device``, uint8 until there. Use the batches like any
    backend's: ``augment.train_batch`` / ``augment.eval_batch`` on the device.

    Args:
        ds: yields (image, label). Images HxWxC or batched NxHxWxC, C = 1 or 3,
            uint8, or float in ``value_range``. Labels: integer ids, floats
            holding integers (Keras "binary") or one-hot vectors (Keras
            "categorical", turned into ids by argmax).
        spec: duet's preprocessing (e.g. ``RunInfo.preprocess``).
        device: where the batches go.
        batch_size: images per batch. Default: keep the dataset's own batches
            when it is batched; required when it yields single images. Given
            for a batched dataset, it is re-batched to this size.
        value_range: the range of float images: (0, 255) for Keras'
            ``image_dataset_from_directory`` (default), (0, 1) after a
            ``Rescaling(1/255)``.
        steps: batches per epoch, when the dataset's length is unknown
            (``len()`` of the loader needs it; the training loop uses it for its
            learning-rate schedule).
        workers: parallel conversions (AUTOTUNE); default: one per CPU core, at most 8.

    Returns:
        A loader with ``set_epoch``, ``len`` and iteration yielding
        :class:`~duet.data.contract.Batch` (``index`` counts images within the
        epoch; ``errors`` are all empty - a failing user pipeline raises).
    """
    if not isinstance(spec, PreprocessSpec):
        raise ConfigError(f"`spec` must be a duet PreprocessSpec. Received: {type(spec).__name__}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"`batch_size` must be a positive integer or None. Received: batch_size={batch_size!r}")
    if not value_range[1] > value_range[0]:
        raise ConfigError(f"`value_range` must be (low, high) with high > low. Received: value_range={value_range!r}")
    return TfDatasetLoader(
        ds,
        spec,
        torch.device(device),
        batch_size=batch_size,
        value_range=value_range,
        steps=steps,
        workers=default_workers() if workers is None else workers,
    )
