"""`duet bench data DIR`: input-pipeline images/s, duet beside the standard, same files, same run.

Every row delivers the same thing to the training device: shuffled float32
batches of ``batch_size x 3 x image_size x image_size``, randomly cropped,
flipped and normalised (the training input). Rows:

- torchvision ImageFolder + DataLoader: the standard recipe (PIL decode,
  RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize in workers);
- when TensorFlow is installed (``duet[tf]``): Keras
  ImageDataGenerator.flow_from_directory (the tutorial's original, wrapped so
  it runs), Keras image_dataset_from_directory handed over by DLPack, and
  duet "tf" (``duet.bench.tf_peers``);
- duet "torch": workers decode to uint8, crops/flips/normalise on the device;
- duet "cache", first epoch: the decode-once build plus one pass;
- duet "cache", later epochs: the steady state every later epoch runs at.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

from duet.data import augment
from duet.data.contract import Loader, LoaderOptions, Sample, default_workers
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.data.scan import scan


@dataclass
class Row:
    name: str
    images: int
    seconds: float
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _drain(batches: Iterable[torch.Tensor], device: torch.device) -> int:
    """Consume float batches as a training step would (touching every value)."""
    n = 0
    for x in batches:
        assert x.dtype == torch.float32 and x.device.type == device.type
        x.sum()
        n += x.shape[0]
    _sync(device)
    return n


def _timed(name: str, device: torch.device, make: Callable[[], Iterable[torch.Tensor]], note: str = "") -> Row:
    t0 = time.perf_counter()
    n = _drain(make(), device)
    return Row(name, n, time.perf_counter() - t0, note)


def imagefolder_epoch(
    root: Path,
    samples: list[Sample],
    spec: PreprocessSpec,
    batch_size: int,
    workers: int,
    device: torch.device,
    seed: int,
) -> Iterable[torch.Tensor]:
    """The standard torchvision pipeline over exactly ``samples``."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    keep = {str(s.path) for s in samples}
    ds.samples = [s for s in ds.samples if s[0] in keep]
    ds.targets = [t for _, t in ds.samples]
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=g,
        drop_last=True,
    )
    for x, _ in loader:
        yield x.to(device, non_blocking=True)


def duet_epoch(loader: Loader, spec: PreprocessSpec, seed: int, epoch: int) -> Iterable[torch.Tensor]:
    loader.set_epoch(epoch)
    g = torch.Generator().manual_seed(seed + epoch)
    for b in loader:
        yield augment.train_batch(b.images, spec, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True, generator=g)


def bench_samples(
    data_dir: Path, *, max_images: int | None = None, progress: bool = True
) -> tuple[Path, list[str], list[Sample]]:
    """The benchmark's images: the usable files of DIR (of DIR/train/ in the
    splits layout), as (ImageFolder root, labels, samples)."""
    manifest = scan(data_dir, progress=progress)
    index = manifest.label_index()
    rows = [r for r in manifest.usable() if manifest.layout == "classes" or r.split == "train"]
    samples = [Sample(manifest.data_dir / r.path, index[r.label], r.sha256) for r in rows]
    root = manifest.data_dir if manifest.layout == "classes" else manifest.data_dir / "train"
    return root, manifest.labels, samples[:max_images] if max_images else samples


def bench_data(
    data_dir: Path,
    *,
    batch_size: int = 32,
    image_size: int = 224,
    workers: int | None = None,
    later_epochs: int = 2,
    max_images: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    include_tf: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    spec = PreprocessSpec(image_size=image_size)
    workers = default_workers() if workers is None else workers
    root, _labels, samples = bench_samples(data_dir, max_images=max_images, progress=progress)
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        log(f"{row.name:<46} {row.images_per_s:>9.0f} img/s  ({row.images} images, {row.seconds:.1f}s)")

    add(
        _timed(
            "torchvision ImageFolder + DataLoader",
            device,
            lambda: imagefolder_epoch(root, samples, spec, batch_size, workers, device, seed),
        )
    )
    if include_tf and importlib.util.find_spec("tensorflow") is not None:
        from duet.bench import tf_peers

        for row in tf_peers.rows(samples, spec, batch_size=batch_size, workers=workers, device=device, seed=seed):
            add(Row(row["name"], int(row["images"]), float(row["seconds"]), str(row.get("note", ""))))
    options = LoaderOptions(
        batch_size=batch_size, shuffle=True, device=device, workers=workers, seed=seed, drop_last=True, progress=False
    )
    torch_loader = make_loader("torch", samples, spec, options)
    add(_timed('duet "torch"', device, lambda: duet_epoch(torch_loader, spec, seed, 1)))

    cache_dir = Path(tempfile.mkdtemp(prefix="duet-bench-cache-"))
    try:
        holder: dict[str, Loader] = {}

        def first_epoch() -> Iterable[torch.Tensor]:
            holder["loader"] = make_loader("cache", samples, spec, replace(options, cache_dir=cache_dir))
            yield from duet_epoch(holder["loader"], spec, seed, 1)

        add(_timed('duet "cache", first epoch (build included)', device, first_epoch))
        later = [
            _timed("", device, partial(duet_epoch, holder["loader"], spec, seed, e)) for e in range(2, 2 + later_epochs)
        ]
        add(
            Row(
                'duet "cache", later epochs',
                sum(r.images for r in later),
                sum(r.seconds for r in later),
                f"mean of {later_epochs} epochs",
            )
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    base = rows[0].images_per_s
    return {
        "warnings": timing_warnings(rows, len(samples), batch_size),
        "kind": "data",
        "data_dir": str(Path(data_dir).resolve()),
        "images": len(samples),
        "batch": [batch_size, 3, image_size, image_size],
        "workers": workers,
        "device": str(device),
        "rows": [{**asdict(r), "images_per_s": r.images_per_s, "vs_imagefolder": r.images_per_s / base} for r in rows],
        "environment": environment(device),
    }


def environment(device: torch.device) -> dict[str, str]:
    import timm

    import duet
    from duet.system import cpu_caps
    from duet.system import process as runtime

    caps = cpu_caps.cpu_capabilities()
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {caps['cpu']}",
        # What bf16 autocast and int8 inference can run on (duet/system/cpu_caps.py).
        "cpu capabilities": cpu_caps.summary(caps),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "duet": duet.__version__,
        # What the `duet` command tuned in this process (duet/system/process.py); every row runs under it.
        "process tuning": ", ".join(runtime.applied) or "none",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if importlib.util.find_spec("tensorflow") is not None:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("tensorflow-cpu", "tensorflow"):
            try:
                env["tensorflow"] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return env


# A row timed in less than this is dominated by start-up and clock noise: its
# ratio to ImageFolder means nothing (192 images once gave "105.83x" from 0.0 s).
MIN_ROW_SECONDS = 1.0


def timing_warnings(rows: list[Row], images: int, batch_size: int) -> list[str]:
    """One sentence per row too short to be a measurement, saying how to get one."""
    short = [r for r in rows if r.seconds < MIN_ROW_SECONDS]
    if not short:
        return []
    names = ", ".join(f"{r.name} ({r.seconds:.2f} s)" for r in short)
    return [
        f"{len(short)} of {len(rows)} rows took under {MIN_ROW_SECONDS:g} s on {images} images "
        f"(batch {batch_size}): {names}. Their images/s and ratios are noise, not measurements; "
        "use more images (`duet bench sample-data DIR` makes 4,000) or more --later-epochs."
    ]


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = ["| pipeline | images/s | × ImageFolder | note |", "|---|---:|---:|---|"]
    for r in rows:
        note = r["note"]
        if r["seconds"] < MIN_ROW_SECONDS:
            note = f"{note}; " if note else ""
            note += f"timed {r['seconds']:.2f} s: noise, not a measurement"
        lines.append(f"| {r['name']} | {r['images_per_s']:,.0f} | {r['vs_imagefolder']:.2f}× | {note} |")
    return "\n".join(lines)
