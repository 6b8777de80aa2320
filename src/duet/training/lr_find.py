"""`duet lr-find`: the learning-rate range test (Smith 2015; fastai's lr_find).

Train from the run's starting point for up to ``steps`` batches while the LR
grows exponentially from ``start`` to ``end``; record the smoothed loss; stop
early once it diverges (4x its minimum). The suggestion is the "valley": the
LR of the steepest descent of the smoothed loss inside the longest stretch
where the loss goes down, which tends to be a little below the minimum.
Nothing is saved besides the plot and a JSON of the curve; the model is thrown
away.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duet.data import augment
from duet.data.contract import Loader, LoaderOptions, Sample, default_workers
from duet.data.loaders import make_loader
from duet.errors import DataError
from duet.system.atomic import write_bytes_atomic, write_json_atomic
from duet.system.device import resolve_device
from duet.system.progress import make_progress
from duet.training import recipe
from duet.training.bf16_convs import keep_fp32_where_bf16_breaks
from duet.training.config import TrainConfig
from duet.training.precision import resolve_precision
from duet.training.prepare import choose_backend, prepare_data, prepare_model, seed_everything, split_samples
from duet.training.step import cross_entropy, train_step


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    plot: Path | None
    precision: str = ""  # the forward pass's precision, and why


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The valley: steepest descent within the longest decreasing stretch."""
    n = len(losses)
    if n < 3:
        return lrs[int(np.argmin(losses))] / 10
    best_len, best = 0, (0, n - 1)
    start = 0
    for i in range(1, n):
        if losses[i] > losses[i - 1]:
            if i - start > best_len:
                best_len, best = i - start, (start, i - 1)
            start = i
    if n - start > best_len:
        best = (start, n - 1)
    a, b = best
    if b - a < 2:
        return lrs[int(np.argmin(losses))] / 10
    log_lr = np.log10(lrs[a : b + 1])
    slope = np.gradient(np.array(losses[a : b + 1]), log_lr)
    return float(lrs[a + int(np.argmin(slope))])


def lr_find(
    config: TrainConfig,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    out: Path | None = None,
    progress: bool = True,
) -> LrFindResult:
    manifest = prepare_data(config, progress=progress)
    spec = config.preprocess()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    samples = split_samples(manifest, "train")
    batch_size = min(config.batch_size, len(samples))
    if batch_size < 2:
        raise DataError("lr-find needs at least 2 training images")
    loader = _loader(config, samples, batch_size, device, progress=progress)
    model = prepare_model(config, len(manifest.labels)).to(device)
    keep_fp32_where_bf16_breaks(model, spec.image_size, precision, device)
    which = recipe.resolve(config.recipe, config.weights)
    # Probe the phase that the chosen recipe trains longest: all layers.
    groups = recipe.param_groups(
        model, lr=1.0, weight_decay=config.weight_decay, recipe=which, layer_decay=config.layer_decay
    )
    scales = [g["lr"] for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=start)
    loss_fn = cross_entropy(config.label_smoothing)
    gen = torch.Generator().manual_seed(config.seed)
    factor = (end / start) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    model.train()
    epoch = 0
    with make_progress(progress) as bar:
        task = bar.add_task("lr-find", total=steps, info="")
        while len(lrs) < steps:
            epoch += 1
            loader.set_epoch(epoch)
            for batch in loader:
                ok = batch.labels >= 0
                lr = start * factor ** len(lrs)
                for g, s in zip(optimizer.param_groups, scales):
                    g["lr"] = lr * s
                x = augment.train_batch(
                    batch.images,
                    spec,
                    scale=config.augment.scale,
                    ratio=config.augment.ratio,
                    hflip=config.augment.hflip,
                    generator=gen,
                )[ok]
                result = train_step(model, optimizer, x, batch.labels[ok], loss_fn=loss_fn, precision=precision)
                raw = result.loss if math.isfinite(result.loss) else math.inf
                avg = 0.98 * avg + 0.02 * raw if math.isfinite(raw) else math.inf
                smooth = avg / (1 - 0.98 ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(smooth)
                best = min(best, smooth)
                bar.update(task, advance=1, info=f"lr {lr:.1e} loss {smooth:.3f}")
                if len(lrs) >= steps or not math.isfinite(smooth) or (len(lrs) > 5 and smooth > 4 * best):
                    break
            if not math.isfinite(losses[-1]) or (len(lrs) > 5 and losses[-1] > 4 * best):
                break
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    lrs_f, losses_f = [a for a, _ in finite], [b for _, b in finite]
    suggestion = suggest(lrs_f, losses_f)
    plot = None
    if out is not None:
        plot = _plot(lrs_f, losses_f, suggestion, Path(out))
        curve = {"lrs": lrs_f, "losses": losses_f, "suggestion": suggestion}
        write_json_atomic(
            Path(out).with_suffix(".json"), {**curve, "model": config.model, "precision": precision.to_dict()}
        )
    return LrFindResult(lrs_f, losses_f, suggestion, plot, precision.reason)


def _loader(
    config: TrainConfig, samples: list[Sample], batch_size: int, device: torch.device, *, progress: bool
) -> Loader:
    """The training split in full batches (a short last batch would jolt the curve)."""
    backend = choose_backend(config, len(samples))
    options = LoaderOptions(
        batch_size=batch_size,
        shuffle=True,
        device=device,
        workers=default_workers() if config.workers < 0 else config.workers,
        seed=config.seed,
        max_pixels=config.max_pixels,
        drop_last=True,
        cache_dir=config.cache_dir,
        progress=progress,
    )
    return make_loader(backend, samples, config.preprocess(), options)


def _plot(lrs: list[float], losses: list[float], suggestion: float, out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(out, buf.getvalue())
    return out
