"""Everything a run needs before its first step: the data (scan, split, loaders),
the model (device, weights, input size) and the seeds.

Shared by the training loop (``duet.training.loop``/``trainer``) and ``duet lr-find``,
so both see the same splits, the same backend choice and the same seeded model.
The three loaders of a run (train, val, test) are made here and nowhere else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from duet.data.cache import cache_bytes
from duet.data.contract import Loader, LoaderOptions, Sample, default_workers, plan_sizes
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.data.scan import Manifest, require_trainable, scan
from duet.data.split import assign_splits
from duet.errors import ConfigError, DataError
from duet.system.device import resolve_device
from duet.system.process import guard_triton
from duet.training import distributed
from duet.training.config import TrainConfig
from duet.training.models import build, check_input_size
from duet.training.state import Log


def choose_backend(config: TrainConfig, num_images: int) -> str:
    """ "auto" means the decode cache whenever it fits the disk budget."""
    if config.data_backend != "auto":
        return config.data_backend
    fits = cache_bytes(num_images, config.preprocess()) <= config.cache_max_gb * 1e9
    return "cache" if fits else "torch"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and make CPU runs repeatable.

    First ``guard_triton``: ``torch.use_deterministic_algorithms`` imports torch's
    dynamo, which imports triton, and triton loaded after TensorFlow segfaults the
    process (a notebook that imported TensorFlow, then trained a table, crashed here)."""
    guard_triton()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # CPU runs are bit-for-bit repeatable for a seed; on CUDA we keep cuDNN's
    # fast (non-deterministic) kernels.
    torch.use_deterministic_algorithms(True, warn_only=True)


def split_samples(manifest: Manifest, split: str) -> list[Sample]:
    index = manifest.label_index()
    return [Sample(manifest.data_dir / r.path, index[r.label], r.sha256) for r in manifest.usable() if r.split == split]


def class_counts(samples: list[Sample], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for s in samples:
        counts[s.label] += 1
    return counts


def prepare_data(config: TrainConfig, *, progress: bool) -> Manifest:
    """Scan, split and check the data folder; raises DataError with what to fix."""
    manifest = scan(config.data_dir, max_pixels=config.max_pixels, progress=progress)
    manifest = assign_splits(manifest, val_fraction=config.val_split, test_fraction=config.test_split, seed=config.seed)
    require_trainable(manifest)
    return manifest


def prepare_model(config: TrainConfig, num_classes: int, weights: str | None = None) -> torch.nn.Module:
    """Everything about the model that can fail, done before a run folder exists:
    the device, the name, the weights (downloaded or read; ``weights``
    overrides ``config.weights``) and one image at the input size. Returns the
    seeded model on the CPU."""
    resolve_device(config.device)
    seed_everything(config.seed)  # guards triton first
    model = build(
        config.model,
        num_classes,
        config.weights if weights is None else weights,
        image_size=config.image_size,
        norm="group" if config.dp is not None else "batch",  # DP-SGD: BatchNorm mixes a batch's images
    )
    check_input_size(model, config.model, config.image_size)
    return model


@dataclass
class TrainData:
    """A run's splits and loaders. ``sizes`` is the epoch's plan of global batch
    sizes (every image in every epoch; no batch below half a batch, for BatchNorm:
    ``contract.plan_sizes``); each rank loads its share of every batch."""

    train_samples: list[Sample]
    val_samples: list[Sample]
    num_test: int
    backend: str
    batch_size: int  # global
    sizes: list[int]  # contract.plan_sizes
    train_loader: Loader
    val_loader: Loader | None  # None when this rank has no validation images
    common: LoaderOptions  # the validation and test loaders' settings


def build_data(
    config: TrainConfig, manifest: Manifest, dist: distributed.Dist, device: torch.device, *, progress: bool, log: Log
) -> TrainData:
    """The train and validation loaders of a run (this rank's share of each)."""
    spec = config.preprocess()
    workers = default_workers() if config.workers < 0 else config.workers
    train_samples = split_samples(manifest, "train")
    val_samples = split_samples(manifest, "val")
    if not train_samples:
        raise DataError("no training images after the split; add images or lower --val-split")
    batch_size = min(config.batch_size, len(train_samples))
    if batch_size % dist.world:
        raise ConfigError(f"--batch-size {batch_size} must be divisible by the number of processes ({dist.world})")
    backend = choose_backend(config, len(train_samples) + len(val_samples))
    num_test = sum(1 for r in manifest.usable() if r.split == "test")
    log(f"data backend: {backend}; {len(train_samples)} train / {len(val_samples)} val / {num_test} test images")
    common = LoaderOptions(  # validation and test: this process's share, in order
        batch_size=max(1, batch_size // dist.world),
        shuffle=False,
        device=device,
        workers=workers,
        seed=config.seed,
        max_pixels=config.max_pixels,
        cache_dir=config.cache_dir,
        progress=progress,
        device_share=config.cache_device_share,
    )
    train_options = replace(
        common, batch_size=batch_size, shuffle=True, rank=dist.rank, world=dist.world, poisson=config.dp is not None
    )
    train_loader = make_loader(backend, train_samples, spec, train_options)
    sizes = plan_sizes(len(train_samples), batch_size=batch_size, drop_last=False)
    val_share = val_samples[dist.rank :: dist.world]
    val_loader = make_loader(backend, val_share, spec, common) if val_share else None
    return TrainData(train_samples, val_samples, num_test, backend, batch_size, sizes, train_loader, val_loader, common)


def make_test_loader(
    data: TrainData, test_samples: list[Sample], spec: PreprocessSpec, dist: distributed.Dist
) -> Loader | None:
    """This rank's share of the test split (made once training is over); None when the share is empty."""
    share = test_samples[dist.rank :: dist.world]
    if not share:
        return None
    return make_loader(data.backend, share, spec, data.common)
