"""Backend "torch": DataLoader worker processes read and decode the files.

Each worker decodes one file per sample (``imageio.decode``) into the spec's
uint8 load square (``preprocess.to_load_square``); batches follow the plan
(``contract.PlanSampler``), so they depend only on the seed and epoch, not on
worker timing. Worker processes ignore SIGINT: Ctrl-C reaches the training
loop, which saves a checkpoint, instead of killing the workers under it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from duet.data.contract import Batch, LoaderOptions, PlanSampler, Sample
from duet.data.imageio import DecodeError, decode
from duet.data.preprocess import PreprocessSpec, to_load_square


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


class TorchLoader:
    """The "torch" backend over one split. Iterating yields one epoch of Batches."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, options: LoaderOptions) -> None:
        self.dataset = ImageFileDataset(samples, spec, options.max_pixels)
        self.device = options.device
        self.sampler = PlanSampler(len(self.dataset), options)
        workers = options.workers
        self.generator = torch.Generator().manual_seed(options.seed)  # worker seeds only; decoding draws nothing
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
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
