"""Data backends: each yields ``Batch``es of uint8 NCHW load squares already on the device.

Every backend produces the same thing for the same files: the spec's uint8
``load_size`` square of each image (``preprocess.to_load_square`` over
``imageio.decode``), labels and sample indices; float conversion, augmentation
and normalisation happen afterwards on the device (``augment``), batched, so a
backend changes speed, never pixels beyond its documented tolerance.

Backends (``make_loader(name, ...)``):
- "torch": DataLoader worker processes read and decode files.
- "cache": decode once into a memory-mapped uint8 store (``duet.data.cache``).
- "tf": a tf.data pipeline handing tensors over by DLPack (``duet.data.tfdata``).

A file that fails to load after the scan (deleted, truncated since) does not
crash a worker: its sample comes back with label -1 and the training loop
counts it, reports it and stops past a limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from duet.data.imageio import DecodeError, decode
from duet.preprocess import PreprocessSpec, to_load_square


@dataclass(frozen=True)
class Sample:
    """One image of a split: absolute path, label index and (when scanned) the
    sha256 of its bytes, which keys the decode cache."""

    path: Path
    label: int
    sha256: str = ""


class ImageFileDataset(Dataset):
    """Decodes one file per item into a CHW uint8 load square."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, max_pixels: int) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
        s = self.samples[i]
        try:
            rgb = decode(s.path, max_pixels=self.max_pixels, min_size=self.spec.load_size)
        except (DecodeError, OSError) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            blank = torch.zeros(3, self.spec.load_size, self.spec.load_size, dtype=torch.uint8)
            return blank, -1, i, reason
        square = to_load_square(rgb, self.spec)
        return torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1))), s.label, i, ""


def _collate(batch: list[tuple[torch.Tensor, int, int, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    index = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return images, labels, index, [b[3] for b in batch]


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N,3,L,L on the device
    labels: torch.Tensor  # int64 N on the device; -1 where the file failed to load
    index: torch.Tensor   # int64 N, positions in the split's sample list (CPU)
    errors: list[str]     # per sample: "" or the load failure reason


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, shared by every backend so that the same
    seed gives the same batches whichever backend feeds them."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class EpochSampler(Sampler[int]):
    """Yields ``epoch_order`` for the epoch set last (DataLoader re-iterates it
    each epoch, also with persistent workers)."""

    def __init__(self, n: int, *, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


class Loader(Protocol):
    """What the training loop and evaluation need from a backend over one split."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...  # batches per epoch

    def __iter__(self) -> Iterator[Batch]: ...


class TorchLoader:
    """The "torch" backend over one split. Iterating yields one epoch of Batches.

    The order comes from ``epoch_order`` (seed and ``set_epoch``), so a run's
    batch order depends only on the seed, not on worker timing or backend.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        spec: PreprocessSpec,
        *,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        workers: int,
        seed: int = 0,
        max_pixels: int = 89_478_485,
        drop_last: bool = False,
    ) -> None:
        self.dataset = ImageFileDataset(samples, spec, max_pixels)
        self.device = device
        self.sampler = EpochSampler(len(self.dataset), shuffle=shuffle, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)  # worker seeds only; decoding draws nothing
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=workers > 0,
            generator=self.generator,
            prefetch_factor=4 if workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        for images, labels, index, errors in self.loader:
            yield Batch(
                images.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, non_blocking=non_blocking),
                index,
                errors,
            )


BACKENDS = ("torch", "cache", "tf")


def make_loader(
    backend: str,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    batch_size: int,
    shuffle: bool,
    device: torch.device,
    workers: int,
    seed: int = 0,
    max_pixels: int = 89_478_485,
    drop_last: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Loader:
    """The one place a backend is chosen. Heavy backends import lazily, so that
    importing duet never imports TensorFlow."""
    if backend == "torch":
        return TorchLoader(samples, spec, batch_size=batch_size, shuffle=shuffle, device=device,
                           workers=workers, seed=seed, max_pixels=max_pixels, drop_last=drop_last)
    if backend == "cache":
        from duet.data.cache import CacheLoader

        return CacheLoader(samples, spec, batch_size=batch_size, shuffle=shuffle, device=device,
                           workers=workers, seed=seed, max_pixels=max_pixels, drop_last=drop_last,
                           cache_dir=cache_dir, progress=progress)
    if backend == "tf":
        from duet.data.tfdata import TfLoader

        return TfLoader(samples, spec, batch_size=batch_size, shuffle=shuffle, device=device,
                        workers=workers, seed=seed, max_pixels=max_pixels, drop_last=drop_last)
    raise ValueError(f"unknown data backend {backend!r}; choose one of {', '.join(BACKENDS)}")
