"""`duet bench train DIR`: end-to-end training images/s beside the model's own limit.

Same model, same device, same batch, same run:

- "synthetic tensors on the device": the model's limit (no input pipeline at all);
- duet "cache" end to end: batches gathered from the decode cache, cropped,
  flipped and normalised on the device, then the same training step;
- duet "torch" end to end: DataLoader workers decoding every epoch;
- torchvision ImageFolder + DataLoader end to end: the standard recipe.

The ratio to the synthetic row says how much of the model's speed the input
path delivers (on a GPU the target is >= 90%).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from duet.bench.data import Row, bench_samples, duet_epoch, environment, imagefolder_epoch
from duet.data.loaders import TorchLoader, default_workers
from duet.models import build
from duet.preprocess import PreprocessSpec
from duet.train.step import train_step


def _cycle(make_epoch: Callable[[int], Iterable[torch.Tensor]]) -> Iterator[torch.Tensor]:
    epoch = 1
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def _run_steps(model: torch.nn.Module, batches: Iterator[torch.Tensor], num_classes: int, *, warmup: int,
               steps: int, device: torch.device) -> tuple[int, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    n, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        x = next(batches)
        y = torch.randint(0, num_classes, (x.shape[0],), generator=g).to(device)
        train_step(model, opt, x, y)
        if i >= warmup:
            n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - t0


def bench_train(
    data_dir: Path,
    *,
    model_name: str = "resnet18",
    batch_size: int = 32,
    image_size: int = 224,
    steps: int = 10,
    warmup: int = 2,
    workers: int | None = None,
    device: torch.device = torch.device("cpu"),
    compile: bool = False,
    include_imagefolder: bool = True,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    spec = PreprocessSpec(image_size=image_size)
    workers = default_workers() if workers is None else workers
    root, labels, samples = bench_samples(data_dir, progress=progress)
    num_classes = max(2, len(labels))
    model = build(model_name, num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)  # as duet trains it, on every device
    if compile:
        model = torch.compile(model)
    model.train()
    rows: list[Row] = []

    def add(name: str, batches: Iterator[torch.Tensor], note: str = "") -> None:
        n, secs = _run_steps(model, batches, num_classes, warmup=warmup, steps=steps, device=device)
        row = Row(name, n, secs, note)
        rows.append(row)
        log(f"{name:<46} {row.images_per_s:>9.1f} img/s  ({n} images, {secs:.1f}s)")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    # In the layout the model is fastest with, so that the limit is a limit.
    fixed = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    fixed = fixed.contiguous(memory_format=torch.channels_last)
    add("synthetic tensors on the device (model limit)", iter(lambda: fixed, None))

    cache_dir = Path(tempfile.mkdtemp(prefix="duet-bench-cache-"))
    try:
        from duet.data.cache import CacheLoader

        t0 = time.perf_counter()
        cache = CacheLoader(samples, spec, batch_size=batch_size, shuffle=True, device=device, workers=workers,
                            seed=seed, drop_last=True, cache_dir=cache_dir, progress=progress)
        build_s = time.perf_counter() - t0
        add('duet "cache" end to end', _cycle(lambda e: duet_epoch(cache, spec, seed, e)),
            f"cache built once in {build_s:.1f}s ({len(samples)} images)")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    loader = TorchLoader(samples, spec, batch_size=batch_size, shuffle=True, device=device, workers=workers,
                         seed=seed, drop_last=True)
    add('duet "torch" end to end', _cycle(lambda e: duet_epoch(loader, spec, seed, e)))
    if include_imagefolder:
        add("torchvision ImageFolder + DataLoader end to end",
            _cycle(lambda e: imagefolder_epoch(root, samples, spec, batch_size, workers, device, seed + e)))

    limit = rows[0].images_per_s
    return {
        "kind": "train",
        "data_dir": str(Path(data_dir).resolve()),
        "model": model_name,
        "batch": [batch_size, 3, image_size, image_size],
        "steps": steps,
        "workers": workers,
        "device": str(device),
        "compile": compile,
        "rows": [{**asdict(r), "images_per_s": r.images_per_s, "vs_synthetic": r.images_per_s / limit} for r in rows],
        "environment": environment(device),
    }


def markdown(result: dict[str, object]) -> str:
    lines = ["| pipeline | images/s | of model limit | note |", "|---|---:|---:|---|"]
    for r in result["rows"]:  # type: ignore[union-attr]
        lines.append(f"| {r['name']} | {r['images_per_s']:,.1f} | {100 * r['vs_synthetic']:.0f}% | {r['note']} |")
    return "\n".join(lines)
