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
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from duet.data.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode
from duet.data.preprocess import PreprocessSpec, to_load_square


@dataclass(frozen=True)
class Sample:
    """One image of a split: absolute path, label index and (when scanned) the
    sha256 of its bytes, which keys the decode cache."""

    path: Path
    label: int
    sha256: str = ""


class ImageFileDataset(Dataset):
    """Decodes one file per item into an HWC uint8 load square."""

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
            blank = torch.zeros(self.spec.load_size, self.spec.load_size, 3, dtype=torch.uint8)
            return blank, -1, i, reason
        square = to_load_square(rgb, self.spec)
        return torch.from_numpy(square), s.label, i, ""


def _collate(
    batch: list[tuple[torch.Tensor, int, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    images = torch.stack([b[0] for b in batch]).permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    index = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return images, labels, index, [b[3] for b in batch]


def _ignore_sigint(_worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N,3,L,L on the device, channels_last strides (NHWC in memory)
    labels: torch.Tensor  # int64 N on the device; -1 where the file failed to load
    index: torch.Tensor  # int64 N, positions in the split's sample list (CPU)
    errors: list[str]  # per sample: "" or the load failure reason


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation seeded by seed and epoch."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def plan_sizes(n: int, *, batch_size: int, drop_last: bool) -> list[int]:
    """The global batch sizes of one epoch over ``n`` samples.

    ``drop_last`` drops the short last batch (benchmarks want equal batches).
    Otherwise every sample is in every epoch, and no batch is smaller than half
    a batch: a short last batch of at least half a batch is kept (171 images at
    batch 64: 64, 64, 43); a smaller one is pooled with the batch before and
    the two are split evenly (129 images: 64, 33, 32). So BatchNorm, which
    cannot train on a single image, never gets a batch of one from the plan
    (nor does a process of a distributed run with 4 or more images per batch),
    no batch grows beyond ``batch_size``, and the sizes do not depend on the
    number of processes, so N processes still see exactly what one would."""
    full, rest = divmod(n, batch_size)
    sizes = [batch_size] * full
    if not rest or drop_last:
        return sizes
    if not full or (rest >= 2 and 2 * rest >= batch_size):
        return sizes + [rest]
    pooled = batch_size + rest
    half = pooled // 2
    if half < 2:  # batch_size 2: one batch of 3 rather than 2 + 1
        return sizes[:-1] + [pooled]
    return sizes[:-1] + [pooled - half, half]


def rank_slice(size: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s contiguous share of a global batch of ``size``:
    equal shares, the first ``size % world`` ranks one image more."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def batch_plan(
    n: int,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    rank: int = 0,
    world: int = 1,
) -> list[list[int]]:
    """The batches of one epoch, shared by every backend, so that the same seed
    gives the same batches whichever backend feeds them (sizes: ``plan_sizes``).

    ``batch_size`` is the global batch; with ``world`` > 1 each rank gets its
    contiguous slice of every global batch (``rank_slice``), so N processes see
    exactly the images one process would, and a rank's position in the plan is
    the same everywhere (which makes resuming mid-epoch a matter of skipping
    batches).
    """
    order = epoch_order(n, shuffle=shuffle, seed=seed, epoch=epoch).tolist()
    plan, start = [], 0
    for size in plan_sizes(n, batch_size=batch_size, drop_last=drop_last):
        batch = order[start : start + size]
        start += size
        lo, hi = rank_slice(size, rank, world)
        plan.append(batch[lo:hi])
    return plan


class PlanSampler(Sampler[list[int]]):
    """Every backend's position in the plan: ``batch_plan`` for the epoch set
    last, from batch ``start`` on. The "torch" backend hands it to DataLoader
    as its batch_sampler (re-iterated each epoch, also with persistent
    workers); "cache" and "tf" iterate it themselves."""

    def __init__(
        self, n: int, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool, rank: int = 0, world: int = 1
    ) -> None:
        self.kw = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world=world)
        self.n, self.epoch, self.start = n, 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(batch_plan(self.n, epoch=self.epoch, **self.kw)[self.start :])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(plan_sizes(self.n, batch_size=int(self.kw["batch_size"]), drop_last=bool(self.kw["drop_last"])))


class Loader(Protocol):
    """What the training loop and evaluation need from a backend over one split.

    ``batch_size`` is the global batch (see ``batch_plan``); ``set_epoch(e,
    start_batch=k)`` makes the next iteration yield epoch ``e``'s batches from
    the k-th on (resuming mid-epoch)."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __len__(self) -> int: ...  # batches in a whole epoch

    def __iter__(self) -> Iterator[Batch]: ...


class TorchLoader:
    """The "torch" backend over one split. Iterating yields one epoch of Batches.

    Batches come from ``batch_plan`` (seed and ``set_epoch``), so a run's
    batches depend only on the seed, not on worker timing or backend. Worker
    processes ignore SIGINT: Ctrl-C reaches the training loop, which saves a
    checkpoint, instead of killing the workers under it.
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
        max_pixels: int = DEFAULT_MAX_PIXELS,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset = ImageFileDataset(samples, spec, max_pixels)
        self.device = device
        self.sampler = PlanSampler(
            len(self.dataset),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world=world,
        )
        self.generator = torch.Generator().manual_seed(seed)  # worker seeds only; decoding draws nothing
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_ignore_sigint if workers > 0 else None,
            generator=self.generator,
            prefetch_factor=4 if workers > 0 else None,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    drop_last: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    device_share: float = 0.5,
) -> Loader:
    """The one place a backend is chosen. Heavy backends import lazily, so that
    importing duet never imports TensorFlow."""
    if backend == "torch":
        return TorchLoader(
            samples,
            spec,
            batch_size=batch_size,
            shuffle=shuffle,
            device=device,
            workers=workers,
            seed=seed,
            max_pixels=max_pixels,
            drop_last=drop_last,
            rank=rank,
            world=world,
        )
    if backend == "cache":
        from duet.data.cache import CacheLoader

        return CacheLoader(
            samples,
            spec,
            batch_size=batch_size,
            shuffle=shuffle,
            device=device,
            workers=workers,
            seed=seed,
            max_pixels=max_pixels,
            drop_last=drop_last,
            cache_dir=cache_dir,
            progress=progress,
            rank=rank,
            world=world,
            device_share=device_share,
        )
    if backend == "tf":
        from duet.data.tfdata import TfLoader

        return TfLoader(
            samples,
            spec,
            batch_size=batch_size,
            shuffle=shuffle,
            device=device,
            workers=workers,
            seed=seed,
            max_pixels=max_pixels,
            drop_last=drop_last,
            rank=rank,
            world=world,
        )
    raise ValueError(f"unknown data backend {backend!r}; choose one of {', '.join(BACKENDS)}")
