"""Data backends: yield ``(uint8 NCHW load squares, int64 labels, indices)`` on the device.

Backend "torch": DataLoader worker processes read and decode files (with the
shared ``imageio.decode``) and resize them to the spec's uint8 load square; the
batch stays uint8 until it reaches the device, where ``augment`` does the float
work batched. Issue #3 adds a "cache" backend behind the same interface.

A file that fails to load after the scan (deleted, truncated since) does not
crash a worker: its sample comes back with label -1 and the training loop
counts it, reports it and stops past a limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from duet.data.imageio import DecodeError, decode
from duet.preprocess import PreprocessSpec, to_load_square


@dataclass(frozen=True)
class Sample:
    """One image of a split: absolute path and label index."""

    path: Path
    label: int


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


class TorchLoader:
    """The "torch" backend over one split. Iterating yields one epoch of Batches.

    Shuffling uses a generator seeded with ``seed + epoch`` (``set_epoch``), so a
    run's batch order depends only on the seed, not on worker timing.
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
        self.seed = seed
        self.epoch = 0
        self.shuffle = shuffle
        self.generator = torch.Generator()
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=workers > 0,
            generator=self.generator,
            prefetch_factor=4 if workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        non_blocking = self.device.type == "cuda"
        for images, labels, index, errors in self.loader:
            yield Batch(
                images.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, non_blocking=non_blocking),
                index,
                errors,
            )
