"""`duet bench train DIR`: end-to-end training images/s beside the model's own limit,
in fp32 and in bf16 autocast.

Same model, same device, same batch, same run:

- "synthetic tensors on the device": the model's limit (no input pipeline at
  all), measured twice: fp32 and bf16 autocast (the same ``train_step`` as
  ``duet train``, given the precision: channels_last, AdamW, fp32 master
  weights, loss from fp32 logits);
- duet "cache" end to end: batches gathered from the decode cache, cropped,
  flipped and normalised on the device, then the same training step;
- duet "torch" end to end: DataLoader workers decoding every epoch;
- torchvision ImageFolder + DataLoader end to end: the standard recipe;
- with ``inference``: forward-only images/s (eval mode, no autograd) on the
  same synthetic batch, fp32 and bf16: the serving side of the precision table.

The end-to-end rows run in the precision a training run would choose
(``precision="auto"``, resolved by ``duet.training.precision``: bf16 autocast on CUDA
and on CPUs with AMX; fp32 elsewhere), or the one asked for. Every row carries its
ratio to the limit of its own precision (``vs_synthetic``: how much of the
model's speed the input path delivers; on a GPU the target is >= 90%) and to
the fp32 limit (``vs_fp32_limit``: what the precision buys on top).

With ``compile`` the model is ``torch.compile``d once; each precision and mode
compiles its own graph during its first step, so every row records the
seconds of its first (untimed) step, ``first_step_s``: the compile time, less
one steady step.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch

from duet.bench.data import Row, bench_samples, duet_epoch, environment, imagefolder_epoch
from duet.data.contract import LoaderOptions, Sample, default_workers
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.training.bf16_convs import keep_fp32_where_bf16_breaks
from duet.training.models import build
from duet.training.precision import Precision, autocast, resolve_precision
from duet.training.step import train_step

PRECISIONS = ("fp32", "bf16")  # the limit is measured in both
LIMIT = "synthetic tensors on the device (model limit)"
LIMIT_BF16 = "synthetic tensors on the device, bf16 autocast (model limit)"


@dataclass
class PrecisionRow(Row):
    precision: str = "fp32"
    first_step_s: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(make_epoch: Callable[[int], Iterable[torch.Tensor]]) -> Iterator[torch.Tensor]:
    epoch = 1
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def _timed_loop(
    step: Callable[[torch.Tensor], None],
    batches: Iterator[torch.Tensor],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
) -> tuple[int, float, float]:
    """Run ``warmup`` untimed then ``steps`` timed calls: (images timed, seconds, first call's seconds)."""
    n, t0, first = 0, 0.0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        start = time.perf_counter()
        x = next(batches)
        step(x)
        if i == 0:
            _sync(device)
            first = time.perf_counter() - start
        if i >= warmup:
            n += x.shape[0]
    _sync(device)
    return n, time.perf_counter() - t0, first


def _train_steps(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    num_classes: int,
    precision: Precision,
    *,
    warmup: int,
    steps: int,
    device: torch.device,
) -> tuple[int, float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    first = next(batches)
    batches = itertools.chain([first], batches)
    keep_fp32_where_bf16_breaks(model, int(first.shape[-1]), precision, device)

    def step(x: torch.Tensor) -> None:
        y = torch.randint(0, num_classes, (x.shape[0],), generator=g).to(device)
        train_step(model, opt, x, y, precision=precision)

    model.train()
    return _timed_loop(step, batches, warmup=warmup, steps=steps, device=device)


def _inference_steps(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    precision: Precision,
    *,
    warmup: int,
    steps: int,
    device: torch.device,
) -> tuple[int, float, float]:
    def step(x: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(precision, device):
            model(x).float().sum()

    model.eval()
    try:
        return _timed_loop(step, batches, warmup=warmup, steps=steps, device=device)
    finally:
        model.train()


def _limit_rows(
    model: torch.nn.Module,
    fixed: torch.Tensor,
    num_classes: int,
    *,
    inference: bool,
    warmup: int,
    steps: int,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[list[PrecisionRow], list[PrecisionRow]]:
    """The synthetic-data limits: training in fp32 and bf16, then (optionally) inference in both.
    bf16 is measured as asked on every CPU (where it is not native it is emulated, and the row says so)."""
    training: list[PrecisionRow] = []
    for name, label in zip(PRECISIONS, (LIMIT, LIMIT_BF16)):
        precision = resolve_precision(name, device)
        n, secs, first = _train_steps(
            model, iter(lambda: fixed, None), num_classes, precision, warmup=warmup, steps=steps, device=device
        )
        training.append(_logged(PrecisionRow(label, n, secs, _note(precision), name, first), log))
    infer: list[PrecisionRow] = []
    for name in PRECISIONS if inference else ():
        precision = resolve_precision(name, device)
        n, secs, first = _inference_steps(
            model, iter(lambda: fixed, None), precision, warmup=warmup, steps=steps, device=device
        )
        infer.append(
            _logged(
                PrecisionRow(f"inference, synthetic tensors ({name})", n, secs, "eval mode, no autograd", name, first),
                log,
            )
        )
    return training, infer


def _note(precision: Precision) -> str:
    """Nothing for fp32; for bf16, what runs it (the resolver's reason: native on the CPU, emulated, CUDA)."""
    if not precision.bf16:
        return ""
    return precision.reason.removeprefix("bf16: ").removeprefix("asked for; ").replace(" (asked for)", "")


def _logged(row: PrecisionRow, log: Callable[[str], None]) -> PrecisionRow:
    log(
        f"{row.name:<62} {row.images_per_s:>9.1f} img/s  ({row.images} images, {row.seconds:.1f}s; "
        f"first step {row.first_step_s:.1f}s)"
    )
    return row


def _end_to_end_rows(
    model: torch.nn.Module,
    precision: Precision,
    root: Path,
    samples: list[Sample],
    spec: PreprocessSpec,
    num_classes: int,
    *,
    batch_size: int,
    workers: int,
    include_imagefolder: bool,
    warmup: int,
    steps: int,
    device: torch.device,
    seed: int,
    progress: bool,
    log: Callable[[str], None],
) -> list[PrecisionRow]:
    rows: list[PrecisionRow] = []

    def add(name: str, batches: Iterator[torch.Tensor], note: str = "") -> None:
        n, secs, first = _train_steps(model, batches, num_classes, precision, warmup=warmup, steps=steps, device=device)
        rows.append(_logged(PrecisionRow(f"{name} ({precision.name})", n, secs, note, precision.name, first), log))

    options = LoaderOptions(
        batch_size=batch_size,
        shuffle=True,
        device=device,
        workers=workers,
        seed=seed,
        drop_last=True,
        progress=progress,
    )
    cache_dir = Path(tempfile.mkdtemp(prefix="duet-bench-cache-"))
    try:
        t0 = time.perf_counter()
        cache = make_loader("cache", samples, spec, replace(options, cache_dir=cache_dir))
        build_s = time.perf_counter() - t0
        add(
            'duet "cache" end to end',
            _cycle(lambda e: duet_epoch(cache, spec, seed, e)),
            f"cache built once in {build_s:.1f}s ({len(samples)} images)",
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    loader = make_loader("torch", samples, spec, options)
    add('duet "torch" end to end', _cycle(lambda e: duet_epoch(loader, spec, seed, e)))
    if include_imagefolder:
        add(
            "torchvision ImageFolder + DataLoader end to end",
            _cycle(lambda e: imagefolder_epoch(root, samples, spec, batch_size, workers, device, seed + e)),
        )
    return rows


def _ratios(rows: list[PrecisionRow], limits: dict[str, float]) -> list[dict[str, object]]:
    return [
        {
            **asdict(r),
            "images_per_s": r.images_per_s,
            "vs_synthetic": r.images_per_s / limits[r.precision],
            "vs_fp32_limit": r.images_per_s / limits["fp32"],
        }
        for r in rows
    ]


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
    precision: str = "auto",
    inference: bool = True,
    include_imagefolder: bool = True,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    chosen = resolve_precision(precision, device)
    spec = PreprocessSpec(image_size=image_size)
    workers = default_workers() if workers is None else workers
    root, labels, samples = bench_samples(data_dir, progress=progress)
    num_classes = max(2, len(labels))
    model = build(model_name, num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)  # as duet trains it, on every device
    if compile:
        model = cast(torch.nn.Module, torch.compile(model))  # compiled, still called as the model
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # In the layout the model is fastest with, so that the limit is a limit.
    fixed = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    fixed = fixed.contiguous(memory_format=torch.channels_last)
    limits, infer = _limit_rows(
        model, fixed, num_classes, inference=inference, warmup=warmup, steps=steps, device=device, log=log
    )
    e2e = _end_to_end_rows(
        model,
        chosen,
        root,
        samples,
        spec,
        num_classes,
        batch_size=batch_size,
        workers=workers,
        include_imagefolder=include_imagefolder,
        warmup=warmup,
        steps=steps,
        device=device,
        seed=seed,
        progress=progress,
        log=log,
    )
    train_limits = {r.precision: r.images_per_s for r in limits}
    infer_limits = {r.precision: r.images_per_s for r in infer}
    return {
        "kind": "train",
        "data_dir": str(Path(data_dir).resolve()),
        "model": model_name,
        "batch": [batch_size, 3, image_size, image_size],
        "steps": steps,
        "warmup": warmup,
        "workers": workers,
        "device": str(device),
        "compile": compile,
        "precision": {"asked": precision, "end_to_end": chosen.name, "reason": chosen.reason},
        "rows": _ratios(limits + e2e, train_limits),
        "inference": _ratios(infer, infer_limits) if infer else [],
        "environment": environment(device),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| pipeline | images/s | of model limit (same precision) | vs fp32 limit | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['images_per_s']:,.1f} | {100 * r['vs_synthetic']:.0f}% "
            f"| {r['vs_fp32_limit']:.2f}× | {r['note']} |"
        )
    lines += ["", precision_table(result)]
    if result["compile"]:
        lines += [
            "",
            "torch.compile: first (untimed) step of each row, compile included: "
            + ", ".join(f"{r['name']} {r['first_step_s']:.1f}s" for r in [*result["rows"], *result["inference"]]),
        ]
    return "\n".join(lines)


def precision_table(result: dict[str, Any]) -> str:
    """The issue's table: the limits in fp32 and bf16 autocast, and their ratio."""
    lines = ["| synthetic limit | fp32 | bf16 autocast | × |", "|---|---:|---:|---:|"]
    for label, rows in (
        ("training images/s (AdamW step)", result["rows"]),
        ("inference images/s", result["inference"]),
    ):
        limits = [r for r in rows if r["name"].startswith(("synthetic", "inference"))]
        by = {r["precision"]: r["images_per_s"] for r in limits}
        if len(by) == 2:
            lines.append(f"| {label} | {by['fp32']:,.1f} | {by['bf16']:,.1f} | {by['bf16'] / by['fp32']:.2f} |")
    return "\n".join(lines)
