"""The TensorFlow rows of `duet bench data`: the tutorial we started from, plain
tf.data, and duet's "tf" backend, each delivering float32 NCHW batches to PyTorch.

- ``keras_imagedatagenerator``: the tutorial's original path, Keras'
  ``ImageDataGenerator.flow_from_directory`` feeding PyTorch - wrapped the way
  it works: the Keras iterator already yields batches, so it goes into a
  ``DataLoader`` as an ``IterableDataset`` with ``batch_size=None`` (as written
  in the tutorial, each Keras batch became one 5-D "sample"), images are moved
  from channels-last to NCHW and labels are made int64 (``class_mode="sparse"``;
  the tutorial's "binary" floats are rejected by ``CrossEntropyLoss``). Keras
  loads and resizes one image at a time in the calling thread.
- ``keras_image_dataset_from_directory``: Keras' tf.data utility (parallel
  decode, bilinear resize without antialiasing, no crops), handed over by DLPack:
  what plain tf.data gives without duet.
- ``duet_tf``: duet's "tf" backend (``duet.data.tfdata``), then the device-side
  random crop, flip and normalisation every duet backend shares.

Each function returns ``{"name", "images", "seconds", "images_per_s", "note"}``.
Timing starts when the first batch is asked for (pipeline start-up included) and
ends when the last one has been touched on the device. Importing this module
imports TensorFlow (the safe way, see ``duet.data.tfdata``).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from duet.data import augment
from duet.data.contract import LoaderOptions, Sample, default_workers
from duet.data.imageio import IMAGE_EXTENSIONS
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.data.tfdata import tf, to_torch


def _result(name: str, images: int, seconds: float, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
        "note": note,
    }


def _drain(batches: Iterable[torch.Tensor], limit: int, device: torch.device) -> tuple[int, float]:
    """Take ``limit`` float NCHW batches, touching every value as a training step
    would; returns (images, seconds)."""
    n, t0 = 0, time.perf_counter()
    for i, x in enumerate(batches):
        if i >= limit:
            break
        assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 3, (x.dtype, x.shape)
        x.sum().item()
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - t0


class KerasBatches(torch.utils.data.IterableDataset):
    """A Keras image iterator as a torch dataset of whole batches (use it with
    ``DataLoader(..., batch_size=None)``): float32 NCHW images, int64 labels."""

    def __init__(self, keras_iterator: Any, batches: int) -> None:
        self.keras_iterator = keras_iterator
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.batches):
            x, y = next(self.keras_iterator)
            yield torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()


def keras_imagedatagenerator(
    data_dir: Path,
    batch_size: int,
    image_size: int,
    batches: int,
    *,
    interpolation: str = "nearest",
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
) -> dict[str, Any]:
    """The tutorial's pipeline: ``ImageDataGenerator(rescale=1/255,
    horizontal_flip=True).flow_from_directory`` (Keras' default nearest-neighbour
    resize straight to ``image_size``), through a torch DataLoader."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rescale=1 / 255, horizontal_flip=True)
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images belonging to K classes."
        flow = generator.flow_from_directory(
            str(data_dir),
            target_size=(image_size, image_size),
            batch_size=batch_size,
            class_mode="sparse",
            shuffle=True,
            seed=seed,
            interpolation=interpolation,
        )
    loader = torch.utils.data.DataLoader(KerasBatches(flow, batches), batch_size=None, num_workers=0)
    n, seconds = _drain((x.to(device) for x, _ in loader), batches, device)
    return _result(
        "Keras ImageDataGenerator -> torch (the tutorial)",
        n,
        seconds,
        f"1 thread, {interpolation} resize, rescale 1/255, flips",
    )


def keras_image_dataset_from_directory(
    data_dir: Path,
    batch_size: int,
    image_size: int,
    batches: int,
    *,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
) -> dict[str, Any]:
    """Keras' tf.data utility: parallel decode, bilinear resize (no antialias)
    straight to ``image_size``, batches handed over by DLPack, scaled to 0..1."""
    import keras

    with contextlib.redirect_stdout(io.StringIO()):  # "Found N files belonging to K classes."
        ds = keras.utils.image_dataset_from_directory(
            str(data_dir), image_size=(image_size, image_size), batch_size=batch_size, shuffle=True, seed=seed
        )
    ds = ds.repeat().prefetch(tf.data.AUTOTUNE)

    def batches_nchw() -> Iterator[torch.Tensor]:
        for x, _ in ds:
            yield to_torch(x).to(device).permute(0, 3, 1, 2).contiguous() / 255.0

    n, seconds = _drain(batches_nchw(), batches, device)
    return _result(
        "Keras image_dataset_from_directory + DLPack",
        n,
        seconds,
        "tf.data, bilinear resize without antialiasing, no crops",
    )


def duet_tf(
    data_dir: Path,
    batch_size: int,
    image_size: int,
    batches: int,
    *,
    samples: Sequence[Sample] | None = None,
    spec: PreprocessSpec | None = None,
    workers: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
) -> dict[str, Any]:
    """duet's "tf" backend: training batches (random resized crop, flip,
    normalise on the device) over ``samples``, or over every image in the class
    folders of ``data_dir`` (not scanned: files are assumed readable). ``spec``
    defaults to ``PreprocessSpec(image_size=image_size)``."""
    spec = spec or PreprocessSpec(image_size=image_size)
    samples = list(samples) if samples is not None else _folder_samples(Path(data_dir))
    workers = default_workers() if workers is None else workers
    options = LoaderOptions(
        batch_size=batch_size, shuffle=True, device=device, workers=workers, seed=seed, drop_last=True
    )
    loader = make_loader("tf", samples, spec, options)
    g = torch.Generator().manual_seed(seed)

    def epochs() -> Iterator[torch.Tensor]:
        epoch = 0
        while True:
            epoch += 1
            loader.set_epoch(epoch)
            for b in loader:
                yield augment.train_batch(
                    b.images, spec, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, generator=g
                )

    n, seconds = _drain(epochs(), batches, device)
    return _result(
        'duet "tf"', n, seconds, f"tf.data ({workers} threads) + duet resize; crops, flips, normalise on the device"
    )


def _folder_samples(root: Path) -> list[Sample]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [
        Sample(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    ]


def rows(
    samples: Sequence[Sample], spec: PreprocessSpec, *, batch_size: int, workers: int, device: torch.device, seed: int
) -> list[dict[str, Any]]:
    """The TensorFlow rows for ``duet bench data``: one epoch's worth of batches
    each (``len(samples) // batch_size``). The Keras rows read the folder the
    samples live in themselves, as their users do."""
    root = Path(os.path.commonpath([str(s.path.parent) for s in samples])) if samples else Path(".")
    if len({s.label for s in samples}) < 2:
        raise ValueError("the TensorFlow rows need samples from at least two class folders")
    batches = max(1, len(samples) // batch_size)
    return [
        keras_imagedatagenerator(root, batch_size, spec.image_size, batches, device=device, seed=seed),
        keras_image_dataset_from_directory(root, batch_size, spec.image_size, batches, device=device, seed=seed),
        duet_tf(
            root,
            batch_size,
            spec.image_size,
            batches,
            samples=samples,
            spec=spec,
            workers=workers,
            device=device,
            seed=seed,
        ),
    ]
