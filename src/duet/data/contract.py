"""The data contract: what every backend is given and what it yields.

A backend (``duet.data.loaders.make_loader``) turns the samples of one split
into ``Batch``es; this module holds everything the backends share and the
training loop and evaluation rely on, so that no backend imports another:

- ``Sample``: one image of a split (path, label index, sha256 of its bytes).
- ``LoaderOptions``: every setting a backend takes, typed and validated once.
  A backend uses the fields it needs and ignores the rest (only "cache" reads
  ``cache_dir``, ``progress`` and ``device_share``).
- The batch plan (``epoch_order``, ``plan_sizes``, ``rank_slice``,
  ``batch_plan``, ``PlanSampler``). One batch plan for every backend: which
  samples form each batch of an epoch, in which order, how many per batch and
  per process, is decided here from the number of samples, the seed and the
  epoch alone. A backend only decodes and delivers the batches it is handed,
  so changing backend changes speed, never which images a step sees, and
  resuming mid-epoch is skipping the batches already seen.
- ``Batch``: uint8 NCHW load squares on the device (channels_last strides),
  labels on the device, sample indices and per-sample load errors. A file that
  fails to load after the scan (deleted, truncated since) does not crash a
  backend: its sample comes back with label -1 and the reason in ``errors``,
  and the training loop counts it, reports it and stops past a limit.
- ``Loader``: the protocol a backend implements (``set_epoch``, ``len``, iteration).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Sampler

from duet.data.imageio import DEFAULT_MAX_PIXELS
from duet.system.device import cpu_count


@dataclass(frozen=True)
class Sample:
    """One image of a split: absolute path, label index and (when scanned) the
    sha256 of its bytes, which keys the decode cache."""

    path: Path
    label: int
    sha256: str = ""


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N,3,L,L on the device, channels_last strides (NHWC in memory)
    labels: torch.Tensor  # int64 N on the device; -1 where the file failed to load
    index: torch.Tensor  # int64 N, positions in the split's sample list (CPU)
    errors: list[str]  # per sample: "" or the load failure reason


def default_workers() -> int:
    """Decode workers when the user asks for none in particular: one per CPU this
    process may use, at most 8 (beyond that the loop, not decoding, is the limit)."""
    return max(1, min(8, cpu_count()))


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """How a backend feeds one split. Build it once, derive variants with
    ``dataclasses.replace`` (e.g. the validation loader of a training run).

    Attributes:
        batch_size: the global batch (all processes together; see ``batch_plan``).
        shuffle: a new seeded order every epoch (training) or the split's order.
        device: where batches are delivered (uint8 until there).
        workers: decode workers (processes for "torch", threads for "cache"
            and "tf"); 0 decodes in the consuming process or one thread.
        seed: seeds the epoch order (``epoch_order``).
        max_pixels: images with more pixels are refused, not decoded.
        drop_last: drop the short last batch (benchmarks want equal batches).
        rank, world: this process's share of every global batch (``rank_slice``).
        cache_dir: "cache" only: where the decode cache lives (None: the default).
        progress: "cache" only: show a progress bar while the cache is built.
        device_share: "cache" only: hold the store on the accelerator when it
            fits in this share of its free memory.
        poisson: Poisson sampling (DP-SGD, ``duet.training.privacy``): each of
            the epoch's ``plan_sizes`` steps takes every sample independently
            with probability ``batch_size / n``, so batch sizes vary; one process only.
    """

    batch_size: int
    shuffle: bool
    device: torch.device
    workers: int
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    drop_last: bool = False
    rank: int = 0
    world: int = 1
    cache_dir: Path | None = None
    progress: bool = True
    device_share: float = 0.5
    poisson: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers} (default_workers() picks one per CPU)")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank={self.rank}, world={self.world}")
        if not 0.0 <= self.device_share <= 1.0:
            raise ValueError(f"device_share must be in [0, 1], got {self.device_share}")
        if self.poisson and self.world > 1:
            raise ValueError("Poisson sampling is for one process (DP-SGD refuses distributed runs)")


# ------------------------------------------------------------------ the batch plan


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


def poisson_plan(n: int, *, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of Poisson sampling: ``len(plan_sizes(n, batch_size))`` steps, each
    taking every sample independently with probability ``q = batch_size / n``
    (the sampling DP-SGD's privacy accounting assumes). Steps can be empty;
    ``batch_plan`` leaves those out and the trainer counts them for the
    accountant (``duet.training.privacy``)."""
    q = min(1.0, batch_size / max(n, 1))
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    steps = len(plan_sizes(n, batch_size=batch_size, drop_last=False))
    return [np.flatnonzero(rng.random(n) < q).tolist() for _ in range(steps)]


class PlanSampler(Sampler[list[int]]):
    """Every backend's position in the plan: ``batch_plan`` over ``n`` samples
    with ``options``, for the epoch set last, from batch ``start`` on. The
    "torch" backend hands it to DataLoader as its batch_sampler (re-iterated
    each epoch, also with persistent workers); "cache" and "tf" iterate it
    themselves."""

    def __init__(self, n: int, options: LoaderOptions) -> None:
        self.n, self.options = n, options
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        o = self.options
        if o.poisson:
            steps = poisson_plan(self.n, batch_size=o.batch_size, seed=o.seed, epoch=self.epoch)
            return iter([b for b in steps if b][self.start :])  # start counts the steps taken
        plan = batch_plan(
            self.n,
            batch_size=o.batch_size,
            shuffle=o.shuffle,
            seed=o.seed,
            epoch=self.epoch,
            drop_last=o.drop_last,
            rank=o.rank,
            world=o.world,
        )
        return iter(plan[self.start :])

    def __len__(self) -> int:
        return len(plan_sizes(self.n, batch_size=self.options.batch_size, drop_last=self.options.drop_last))


class Loader(Protocol):
    """What the training loop and evaluation need from a backend over one split.

    ``batch_size`` is the global batch (see ``batch_plan``); ``set_epoch(e,
    start_batch=k)`` makes the next iteration yield epoch ``e``'s batches from
    the k-th on (resuming mid-epoch)."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __len__(self) -> int: ...  # batches in a whole epoch

    def __iter__(self) -> Iterator[Batch]: ...
