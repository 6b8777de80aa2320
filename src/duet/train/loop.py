"""The training run, top to bottom: data, model, optimiser, epochs, checkpoints.

Read it as the story of a run. Each step is a small function; the loop itself
is in ``_fit``.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import duet
from duet.config import TrainConfig, config_from_dict
from duet.data import augment
from duet.data.cache import cache_bytes
from duet.data.loaders import Loader, Sample, default_workers, make_loader
from duet.data.scan import Manifest, data_report, read_manifest, require_trainable, scan, write_manifest
from duet.data.split import assign_splits
from duet.errors import ConfigError, DataError, RunError
from duet.atomic import write_json_atomic, write_text_atomic
from duet.models import build
from duet.preprocess import PreprocessSpec
from duet.progress import make_progress
from duet.runs import RunPaths, create_run_dir, read_config, write_config, write_info
from duet.train import checkpoint
from duet.train.schedule import warmup_cosine
from duet.train.step import train_step

Log = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int
    best_val_accuracy: float | None
    last: dict[str, Any]
    seconds: float
    train_images_per_s: float
    num_train: int
    num_val: int
    load_failures: list[dict[str, str]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_backend(config: TrainConfig, num_images: int) -> str:
    """"auto" means the decode cache whenever it fits the disk budget."""
    if config.data_backend != "auto":
        return config.data_backend
    fits = cache_bytes(num_images, config.preprocess()) <= config.cache_max_gb * 1e9
    return "cache" if fits else "torch"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # CPU runs are bit-for-bit repeatable for a seed; on CUDA we keep cuDNN's
    # fast (non-deterministic) kernels.
    torch.use_deterministic_algorithms(True, warn_only=True)


def split_samples(manifest: Manifest, split: str) -> list[Sample]:
    index = manifest.label_index()
    return [
        Sample(manifest.data_dir / r.path, index[r.label], r.sha256)
        for r in manifest.usable()
        if r.split == split
    ]


def prepare_data(config: TrainConfig, *, progress: bool) -> Manifest:
    """Scan, split and check the data folder; raises DataError with what to fix."""
    manifest = scan(config.data_dir, max_pixels=config.max_pixels, progress=progress)
    manifest = assign_splits(manifest, val_fraction=config.val_split, seed=config.seed)
    require_trainable(manifest)
    return manifest


def _versions() -> dict[str, str]:
    import timm

    return {
        "duet": duet.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def _run_info(config: TrainConfig, manifest: Manifest, best: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": config.model,
        "labels": manifest.labels,
        "num_classes": len(manifest.labels),
        "preprocess": config.preprocess().to_dict(),
        "data_dir": str(manifest.data_dir),
        "best": best,
        "versions": _versions(),
    }


def train(config: TrainConfig, *, progress: bool = True, log: Log = print) -> TrainResult:
    """Train a new run from ``config``; returns when all epochs are done."""
    manifest = prepare_data(config, progress=progress)
    paths = create_run_dir(config.out, config.name, config.model)
    write_config(paths, config.to_yaml_dict())
    write_manifest(manifest, paths.manifest)
    write_json_atomic(paths.data_report, data_report(manifest))
    write_info(paths, _run_info(config, manifest, {}))
    log(f"run folder: {paths.root}")
    return _fit(config, manifest, paths, resume=None, progress=progress, log=log)


def resume(run_dir: Path, *, progress: bool = True, log: Log = print) -> TrainResult:
    """Continue an interrupted run from its last completed epoch."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise RunError(f"run folder '{paths.root}' does not exist")
    config = config_from_dict(read_config(paths), str(paths.config))
    if not paths.manifest.is_file():
        raise RunError(f"'{paths.root}' has no manifest.csv; it cannot be resumed, start a new run")
    manifest = read_manifest(paths.manifest, Path(config.data_dir))
    state = checkpoint.load_last(paths.last)
    if state["epoch"] >= config.epochs:
        raise RunError(f"run '{paths.root}' already finished all {config.epochs} epochs; nothing to resume")
    log(f"resuming {paths.root} after epoch {state['epoch']} of {config.epochs}")
    return _fit(config, manifest, paths, resume=state, progress=progress, log=log)


def _keep_metrics_until(path: Path, epoch: int) -> None:
    """On resume, drop metric lines of epochs after the checkpoint (they will be redone)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    write_text_atomic(path, "".join(ln + "\n" for ln in lines))


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Loader, spec: PreprocessSpec, device: torch.device) -> dict[str, float]:
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in loader:
        ok = batch.labels >= 0
        if not bool(ok.any()):
            continue
        x = augment.eval_batch(batch.images[ok], spec)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        y = batch.labels[ok]
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += int(y.numel())
    return {"val_loss": total_loss / max(n, 1), "val_accuracy": correct / max(n, 1), "val_images": n}


def _fit(
    config: TrainConfig,
    manifest: Manifest,
    paths: RunPaths,
    *,
    resume: dict[str, Any] | None,
    progress: bool,
    log: Log,
) -> TrainResult:
    spec = config.preprocess()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    workers = default_workers() if config.workers < 0 else config.workers

    train_samples = split_samples(manifest, "train")
    val_samples = split_samples(manifest, "val")
    if not train_samples:
        raise DataError("no training images after the split; add images or lower --val-split")
    batch_size = min(config.batch_size, len(train_samples))
    backend = choose_backend(config, len(train_samples) + len(val_samples))
    log(f"data backend: {backend}")
    common = dict(device=device, workers=workers, seed=config.seed, max_pixels=config.max_pixels,
                  cache_dir=config.cache_dir, progress=progress)
    train_loader = make_loader(
        backend, train_samples, spec, batch_size=batch_size, shuffle=True,
        drop_last=len(train_samples) > batch_size, **common,
    )
    val_loader = make_loader(
        backend, val_samples, spec, batch_size=batch_size, shuffle=False, **common,
    ) if val_samples else None

    model = build(config.model, len(manifest.labels), config.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total=total_steps, warmup=warmup_steps)
    )
    aug_gen = torch.Generator().manual_seed(config.seed)

    start_epoch, best_acc, best_epoch = 0, None, 0
    failures: list[dict[str, str]] = []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        aug_gen.set_state(resume["aug_rng"])
        checkpoint.set_rng_state(resume["rng"])
        start_epoch, best_acc, best_epoch = resume["epoch"], resume["best_val_accuracy"], resume["best_epoch"]
        failures = list(resume.get("load_failures", []))
        _keep_metrics_until(paths.metrics, start_epoch)

    t_run = time.perf_counter()
    trained_images, train_seconds = 0, 0.0
    last: dict[str, Any] = {}
    with make_progress(progress) as bar:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            model.train()
            train_loader.set_epoch(epoch)
            task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps_per_epoch, info="")
            t0 = time.perf_counter()
            loss_sum, seen, epoch_failures = 0.0, 0, 0
            for batch in train_loader:
                ok = batch.labels >= 0
                if not bool(ok.all()):
                    for i, err in zip(batch.index.tolist(), batch.errors):
                        if err:
                            failures.append({"path": str(train_samples[i].path), "reason": err, "epoch": str(epoch)})
                            epoch_failures += 1
                    if epoch_failures > max(1, config.max_load_failures * len(train_samples)):
                        raise DataError(
                            f"{epoch_failures} training images failed to load in epoch {epoch} "
                            f"(e.g. {failures[-1]['path']}: {failures[-1]['reason']}); "
                            "the data folder changed after the scan; fix it and resume"
                        )
                if int(ok.sum()) < 2:
                    continue  # BatchNorm cannot train on a single image
                x = augment.train_batch(
                    batch.images[ok], spec, scale=config.augment.scale, ratio=config.augment.ratio,
                    hflip=config.augment.hflip, generator=aug_gen,
                )
                y = batch.labels[ok]
                loss = train_step(model, optimizer, x, y, label_smoothing=config.label_smoothing)
                scheduler.step()
                loss_sum += loss.item() * int(y.numel())
                seen += int(y.numel())
                bar.update(task, advance=1, info=f"loss {loss_sum / max(seen, 1):.4f}")
            epoch_seconds = time.perf_counter() - t0
            trained_images += seen
            train_seconds += epoch_seconds
            bar.remove_task(task)

            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "train_images": seen,
                "images_per_s": seen / max(epoch_seconds, 1e-9),
                "epoch_seconds": epoch_seconds,
                "load_failures": epoch_failures,
            }
            if val_loader is not None:
                row.update(validate(model, val_loader, spec, device))
            acc = row.get("val_accuracy")
            is_best = best_acc is None or (acc is not None and acc > best_acc) or acc is None
            if is_best:
                best_acc, best_epoch = acc, epoch
                checkpoint.save_weights(paths.best, checkpoint.weights_state(model))
            _append_metrics(paths.metrics, row)
            checkpoint.save_last(paths.last, {
                "model": checkpoint.weights_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "aug_rng": aug_gen.get_state(),
                "rng": checkpoint.rng_state(),
                "epoch": epoch,
                "best_val_accuracy": best_acc,
                "best_epoch": best_epoch,
                "load_failures": failures,
                "config": config.to_yaml_dict(),
                "labels": manifest.labels,
            })
            write_info(paths, _run_info(config, manifest, {
                "epoch": best_epoch, "val_accuracy": best_acc, "epochs_done": epoch,
            }))
            last = row
            log(_epoch_line(row, config.epochs, is_best))

    return TrainResult(
        run_dir=paths.root,
        epochs=config.epochs,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        last=last,
        seconds=time.perf_counter() - t_run,
        train_images_per_s=trained_images / max(train_seconds, 1e-9),
        num_train=len(train_samples),
        num_val=len(val_samples),
        load_failures=failures,
    )


def _epoch_line(row: dict[str, Any], epochs: int, is_best: bool) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_accuracy" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {100 * row['val_accuracy']:.2f}%"]
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.0f} img/s", f"{row['epoch_seconds']:.1f}s"]
    if row["load_failures"]:
        parts.append(f"{row['load_failures']} load failures")
    return "  ".join(parts) + ("  *best" if is_best else "")
