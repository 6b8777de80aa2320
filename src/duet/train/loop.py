"""The training run, top to bottom: data, model, optimiser, epochs, checkpoints,
then the test split, once (validation chose the epoch; test never took part).

Read it as the story of a run. ``train`` and ``resume`` prepare a run folder and
call ``_fit``; ``train`` first does everything about the model that can fail
(``prepare_model``: device, name, weights, input size), so a run that cannot
start leaves no folder, and removes its folder if it fails before its first
checkpoint; ``_fit`` builds the pieces (loaders, model, optimiser, schedule,
EMA, mixup) and runs the epochs; each step goes through ``train_step``, which
owns the numerical safety nets. Every forward pass runs in the run's precision
(``duet.train.precision``: resolved once at the start, recorded in run.json and the
checkpoint, kept by a resume). Everything a resume needs is in ``LoopState``
plus the state dicts saved beside it in checkpoints/last.pt.

Resilience, in one place:
- checkpoints at every epoch end and every ``checkpoint_every`` steps /
  ``checkpoint_minutes``, written atomically, never with non-finite weights;
  ``--resume`` continues from the exact batch (same seed => same result);
- SIGINT/SIGTERM finish the current step, write a checkpoint and exit with the
  command that resumes;
- a non-finite loss skips the step; ``rollback_after`` in a row reload the last
  checkpoint with a lower LR; ``max_bad_steps`` in all stop the run (exit 6);
- CUDA out-of-memory halves the micro-batch (gradients accumulate, the
  effective batch stays the same);
- a sample that fails to load is counted and reported, and stops the run past
  ``max_load_failures``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import duet
from duet.artifacts.run_dir import RunPaths, create_run_dir, read_config, write_config, write_info
from duet.data import augment
from duet.data.cache import cache_bytes
from duet.data.contract import Loader, LoaderOptions, Sample, default_workers, plan_sizes, rank_slice
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.data.scan import Manifest, data_report, read_manifest, require_trainable, scan, write_manifest
from duet.data.split import assign_splits
from duet.errors import ConfigError, DataError, Interrupted, RunError, TrainingDiverged
from duet.system.atomic import write_json_atomic, write_text_atomic
from duet.system.device import resolve_device
from duet.system.process import guard_triton
from duet.system.progress import make_progress
from duet.train import checkpoint, distributed, recipe
from duet.train.config import TrainConfig, config_from_dict
from duet.train.models import build, check_input_size, check_source
from duet.train.precision import FP32, Precision, autocast, resolve_precision
from duet.train.schedule import warmup_cosine
from duet.train.step import cross_entropy, train_step

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
    stopped_early: bool = False
    events: list[str] = field(default_factory=list)
    num_test: int = 0
    # The held-out test split, evaluated once after training with the best
    # epoch's weights: {"test_accuracy", "test_loss", "test_images"}; {} without one.
    test: dict[str, Any] = field(default_factory=dict)
    # The forward-pass precision and why: {"name", "requested", "reason"} (duet.train.precision).
    precision: dict[str, str] = field(default_factory=dict)


@dataclass
class LoopState:
    """The loop's own counters; saved in last.pt as a plain dict."""

    epoch: int = 1  # the epoch in progress (or about to start)
    step_in_epoch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0  # optimizer steps attempted, for the schedule and fault injection
    loss_sum: float = 0.0  # of the epoch in progress
    seen: int = 0  # images of the epoch in progress
    epoch_failures: int = 0
    epoch_bad_steps: int = 0
    best_val_accuracy: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs without val improvement (early stopping)
    bad_steps: int = 0  # non-finite losses, whole run
    bad_in_row: int = 0
    lr_scale: float = 1.0  # lowered by each rollback
    micro_batches: int = 1  # raised by each out-of-memory
    events: list[str] = field(default_factory=list)
    load_failures: list[dict[str, str]] = field(default_factory=list)


def choose_backend(config: TrainConfig, num_images: int) -> str:
    """ "auto" means the decode cache whenever it fits the disk budget."""
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
    return [Sample(manifest.data_dir / r.path, index[r.label], r.sha256) for r in manifest.usable() if r.split == split]


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
    guard_triton()
    seed_everything(config.seed)
    model = build(
        config.model, num_classes, config.weights if weights is None else weights, image_size=config.image_size
    )
    check_input_size(model, config.model, config.image_size)
    return model


@contextmanager
def _discard_unless_checkpointed(paths: RunPaths, d: distributed.Dist, log: Log) -> Iterator[None]:
    """A new run that fails before its first checkpoint leaves no folder behind.

    The folder was made by this run (``create_run_dir`` never reuses one) and
    holds only what its start wrote; kept, it would block its ``--name`` while
    ``--resume`` had nothing to resume. Once a checkpoint or weights exist the
    folder stays, whatever happens."""
    try:
        yield
    except BaseException:
        if d.main and not paths.last.is_file() and not paths.best.is_file():
            shutil.rmtree(paths.root, ignore_errors=True)
            log(f"removed {paths.root}: the run stopped before its first checkpoint")
        raise


def _versions() -> dict[str, str]:
    import timm

    return {
        "duet": duet.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def _run_info(config: TrainConfig, manifest: Manifest, best: dict[str, Any], precision: Precision) -> dict[str, Any]:
    return {
        "model": config.model,
        "labels": manifest.labels,
        "num_classes": len(manifest.labels),
        "preprocess": config.preprocess().to_dict(),
        "precision": precision.to_dict(),
        "data_dir": str(manifest.data_dir),
        "best": best,
        "versions": _versions(),
    }


def _catch_up_records(
    paths: RunPaths, config: TrainConfig, manifest: Manifest, loop: LoopState, done: int, precision: Precision, log: Log
) -> None:
    """A run killed after its last checkpoint was saved but before run.json was
    rewritten finished training, yet its run.json counts an epoch fewer (and the
    registry refuses to promote it). Bring run.json up to the checkpoint, and write
    the drift profile if the kill came before it."""
    try:
        recorded = int((json.loads(paths.info.read_text(encoding="utf-8")).get("best") or {}).get("epochs_done") or 0)
    except (OSError, ValueError):
        recorded = 0
    if recorded < done:
        write_info(
            paths,
            _run_info(
                config,
                manifest,
                {
                    "epoch": loop.best_epoch,
                    "val_accuracy": loop.best_val_accuracy,
                    "epochs_done": done,
                    "stopped_early": bool(config.patience) and loop.stale_epochs >= config.patience,
                    "events": loop.events,
                    "load_failures": loop.load_failures[:100],
                },
                precision,
            ),
        )
        log(f"run.json recorded {recorded} of {done} finished epochs (interrupted while writing); brought up to date")
    if not (paths.root / "profile" / "profile.json").is_file() and any(r.split == "val" for r in manifest.usable()):
        from duet.monitor.profile import write_profile

        write_profile(paths.root, device=config.device, progress=False, log=log)


def train(config: TrainConfig, *, progress: bool = True, log: Log = print) -> TrainResult:
    """Train a new run from ``config``; returns when all epochs are done.

    Under torchrun, rank 0 scans, creates the run folder and writes every file;
    the other ranks wait for it and read the same manifest."""
    d = distributed.from_env(os.environ, config.device)
    try:
        model = None
        if d.main:
            resolve_device(config.device)  # the cheap checks before a scan that can take minutes
            check_source(config.model, config.weights)
            manifest = prepare_data(config, progress=progress)
            model = prepare_model(config, len(manifest.labels))  # before the folder: see prepare_model
            paths = create_run_dir(config.out, config.name, config.model)
        else:
            paths = RunPaths(Path(_announce(d, "")))
            manifest = read_manifest(paths.manifest, Path(config.data_dir).resolve())
        precision = resolve_precision(config.precision, resolve_device(config.device))
        with _discard_unless_checkpointed(paths, d, log):
            if d.main:
                write_config(paths, config.to_yaml_dict())
                write_manifest(manifest, paths.manifest)
                write_json_atomic(paths.data_report, data_report(manifest))
                write_info(paths, _run_info(config, manifest, {}, precision))
                log(f"run folder: {paths.root}")
                _announce(d, str(paths.root))
            return _fit(
                config,
                manifest,
                paths,
                resume=None,
                dist=d,
                model=model,
                precision=precision,
                progress=progress and d.main,
                log=log if d.main else _silent,
            )
    finally:
        distributed.shutdown(d)


def resume(run_dir: Path, *, epochs: int | None = None, progress: bool = True, log: Log = print) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (mid-epoch included).

    ``epochs``: a new total, more than the epochs already completed; it extends
    a run (a finished one too) or shortens an unfinished one. The warm-up +
    cosine schedule is then re-planned for the new total from the resume point
    (the LR continues as a run planned for that many epochs would have it at
    this step), so a resumed run equals an uninterrupted one only when the
    total is unchanged. The change is written to config.yaml and, as an event,
    to run.json."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise RunError(f"run folder '{paths.root}' does not exist")
    config = config_from_dict(read_config(paths), str(paths.config))
    if not paths.manifest.is_file():
        raise RunError(f"'{paths.root}' has no manifest.csv; it cannot be resumed, start a new run")
    manifest = read_manifest(paths.manifest, Path(config.data_dir))
    state = checkpoint.load_last(paths.last)
    loop = LoopState(**state["loop"])
    done = loop.epoch - 1
    finished = loop.epoch > config.epochs or bool(state.get("finished"))
    precision = resumed_precision(state, resolve_device(config.device))
    d = distributed.from_env(os.environ, config.device)
    if epochs is not None and (epochs != config.epochs or finished):
        config = _replan(paths, config, state, epochs, main=d.main, log=log)
    elif finished:
        if d.main:
            _catch_up_records(paths, config, manifest, loop, done, precision, log)
        raise RunError(
            f"run '{paths.root}' already finished ({done} of {config.epochs} epochs); nothing to resume. "
            f"To train it longer: duet train --resume {paths.root} --epochs N (N > {done})"
        )
    try:
        if d.main:
            log(f"resuming {paths.root} at epoch {loop.epoch}, batch {loop.step_in_epoch}")
        return _fit(
            config,
            manifest,
            paths,
            resume=state,
            dist=d,
            precision=precision,
            progress=progress and d.main,
            log=log if d.main else _silent,
        )
    finally:
        distributed.shutdown(d)


def resumed_precision(state: dict[str, Any], device: torch.device) -> Precision:
    """The precision a run resumes in: the one its checkpoint recorded (a run
    resolved "auto" on its first machine keeps that choice on any other). A
    checkpoint from before precision was a setting trained in bf16 on CUDA only."""
    recorded = state.get("precision")
    if recorded:
        p = Precision.from_dict(recorded)
        return Precision(p.name, p.requested, f"{p.reason} (recorded when the run started; kept on resume)")
    name = "bf16" if device.type == "cuda" else "fp32"
    return Precision(name, name, f"{name}: the run started before precision was a setting; kept on resume")


def _replan(
    paths: RunPaths, config: TrainConfig, state: dict[str, Any], epochs: int, *, main: bool, log: Log
) -> TrainConfig:
    """Give a resumed run a new total of epochs (see ``resume``); records it in
    the checkpoint's events, config.yaml and run.json."""
    done = LoopState(**state["loop"]).epoch - 1
    if epochs <= done:
        raise ConfigError(
            f"--epochs {epochs} is not more than the {done} epochs run '{paths.root}' has already "
            f"completed; give --epochs N with N > {done}, or --resume without --epochs"
        )
    event = (
        f"epochs {config.epochs} -> {epochs} after epoch {done} (--resume --epochs {epochs}): "
        f"the LR schedule was re-planned for {epochs} epochs from here"
    )
    state["loop"]["events"] = [*state["loop"].get("events", []), event]
    config = config.model_copy(update={"epochs": epochs})
    if main:
        write_config(paths, config.to_yaml_dict())
        if paths.info.is_file():
            info = json.loads(paths.info.read_text(encoding="utf-8"))
            best = info.get("best") or {}
            best["events"] = [*best.get("events", []), event]
            info["best"] = best
            write_info(paths, info)
        log(event)
    return config


def _silent(_: str) -> None:
    pass


def _announce(d: distributed.Dist, text: str) -> str:
    """Rank 0 tells the others a short string (the run folder)."""
    if not d.enabled:
        return text
    import torch.distributed as tdist

    box = [text]
    tdist.broadcast_object_list(box, src=0)
    return str(box[0])


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
        os.fsync(f.fileno())


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Loader,
    spec: PreprocessSpec,
    device: torch.device,
    d: distributed.Dist = distributed.Dist(),
    precision: Precision = FP32,
) -> dict[str, float]:
    """Loss and accuracy over the rank's share of the validation split, summed over ranks."""
    was_training = model.training
    model.eval()
    loader.set_epoch(0)
    total_loss, correct, n = 0.0, 0.0, 0.0
    for batch in loader:
        ok = batch.labels >= 0
        if not bool(ok.any()):
            continue
        x = augment.eval_batch(batch.images[ok], spec)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x)
        y = batch.labels[ok]
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += int(y.numel())
    total_loss, correct, n = distributed.all_reduce_sum(d, [total_loss, correct, n], device)
    model.train(was_training)
    return {"val_loss": total_loss / max(n, 1), "val_accuracy": correct / max(n, 1), "val_images": int(n)}


@contextmanager
def _stop_signals() -> Iterator[dict[str, str]]:
    """SIGINT/SIGTERM set a flag the loop checks after every step."""
    flag: dict[str, str] = {}
    handlers = {}

    def handler(signum: int, _frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. called from a server): no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def _class_counts(samples: list[Sample], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for s in samples:
        counts[s.label] += 1
    return counts


def _fit(
    config: TrainConfig,
    manifest: Manifest,
    paths: RunPaths,
    *,
    resume: dict[str, Any] | None,
    dist: distributed.Dist,
    model: torch.nn.Module | None = None,
    precision: Precision,
    progress: bool,
    log: Log,
) -> TrainResult:
    spec = config.preprocess()
    device = distributed.device_for(dist, resolve_device(config.device))
    if model is None:  # resume (weights from the checkpoint) or a rank > 0 (DDP broadcasts rank 0's)
        model = prepare_model(config, len(manifest.labels), weights="none")
    seed_everything(config.seed)
    workers = default_workers() if config.workers < 0 else config.workers
    num_classes = len(manifest.labels)

    # -- data ---------------------------------------------------------------
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
    log(f"precision {precision.reason}")
    if not num_test:
        log(
            "no test split (it needs a test/ folder, or --test-split > 0 and >= 20 images in every class): "
            "the accuracy reported is validation's, which chose the epoch, so it is optimistic"
        )
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
    train_options = replace(common, batch_size=batch_size, shuffle=True, rank=dist.rank, world=dist.world)
    train_loader = make_loader(backend, train_samples, spec, train_options)
    # Every image in every epoch; no batch below half a batch (BatchNorm): contract.plan_sizes.
    sizes = plan_sizes(len(train_samples), batch_size=batch_size, drop_last=False)
    val_share = val_samples[dist.rank :: dist.world]
    val_loader = make_loader(backend, val_share, spec, common) if val_share else None

    # -- model, optimiser, schedule -------------------------------------------
    which = recipe.resolve(config.recipe, config.weights)
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)  # every device: see train/step.py
    groups = recipe.param_groups(
        model, lr=config.lr, weight_decay=config.weight_decay, recipe=which, layer_decay=config.layer_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    state = LoopState()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: state.lr_scale * warmup_cosine(s, total=total_steps, warmup=warmup_steps)
    )
    ema = None
    if config.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay)
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )
    counts = _class_counts(train_samples, num_classes)
    ratio = max(counts) / max(1, min(counts))
    use_weights = config.class_weights == "on" or (config.class_weights == "auto" and ratio >= 3)
    weight = recipe.class_weights(counts).to(device) if use_weights else None
    loss_fn = cross_entropy(config.label_smoothing, weight)
    if use_weights:
        log(f"class imbalance {ratio:.1f}:1 -> class-weighted loss")
    aug_gen = torch.Generator().manual_seed(config.seed)
    net: torch.nn.Module = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=which == "finetune",
        )  # the frozen backbone gets no gradients

    def snapshot(finished: bool = False) -> dict[str, Any]:
        return {
            "model": checkpoint.weights_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": checkpoint.weights_state(ema.module) if ema is not None else None,
            "aug_rng": aug_gen.get_state(),
            "rng": checkpoint.rng_state(),
            "loop": asdict(state),
            "finished": finished,
            "config": config.to_yaml_dict(),
            "labels": manifest.labels,
            "precision": precision.to_dict(),
        }

    def restore(saved: dict[str, Any]) -> None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None and saved.get("ema") is not None:
            ema.module.load_state_dict(saved["ema"])
        aug_gen.set_state(saved["aug_rng"])
        checkpoint.set_rng_state(saved["rng"])
        for k, v in saved["loop"].items():
            setattr(state, k, v)

    def save_last(finished: bool = False) -> None:
        if dist.main:
            checkpoint.save_last(paths.last, snapshot(finished))
        distributed.barrier(dist)

    def reapply_lr() -> None:
        """Set every group's LR from the schedule now (after a rollback lowered lr_scale)."""
        for g, lr in zip(optimizer.param_groups, scheduler.get_lr()):
            g["lr"] = lr

    if resume is not None:
        restore(resume)
        if resume.get("config", {}).get("epochs") != config.epochs:
            reapply_lr()  # --resume --epochs: the schedule's new plan applies from this step
        if dist.main:
            _keep_metrics_until(paths.metrics, state.epoch - 1)
    if which == "finetune":
        log(
            f"recipe finetune: head only for {config.freeze_epochs} epoch(s), then all layers "
            f"(layer decay {config.layer_decay})"
        )

    # -- epochs ----------------------------------------------------------------
    t_run = time.perf_counter()
    trained_images, train_seconds = 0, 0.0
    last_row: dict[str, Any] = {}
    stopped_early = False
    last_save = time.monotonic()
    fired: set[tuple[str, int]] = set()  # injected faults fire once, also after a rollback
    with make_progress(progress) as bar, _stop_signals() as stop:
        while state.epoch <= config.epochs:
            epoch = state.epoch
            recipe.set_backbone_frozen(model, which == "finetune" and epoch <= config.freeze_epochs)
            net.train()
            train_loader.set_epoch(epoch, start_batch=state.step_in_epoch)
            task = bar.add_task(
                f"epoch {epoch}/{config.epochs}", total=steps_per_epoch, completed=state.step_in_epoch, info=""
            )
            t0 = time.perf_counter()
            seen_before = state.seen
            rolled_back = False
            for batch in train_loader:
                ok = batch.labels >= 0
                if not bool(ok.all()):
                    _count_load_failures(state, batch, train_samples, epoch, config, len(train_samples))
                global_size = sizes[state.step_in_epoch]
                x = augment.train_batch(
                    batch.images,
                    spec,
                    scale=config.augment.scale,
                    ratio=config.augment.ratio,
                    hflip=config.augment.hflip,
                    generator=aug_gen,
                    draws=global_size,
                    offset=rank_slice(global_size, dist.rank, dist.world)[0],
                )[ok]
                y = batch.labels[ok]
                if mixup is not None and x.shape[0] % 2 == 0 and x.shape[0] > 1:
                    x, y = mixup(x, y)
                # BatchNorm cannot train on a single image (the plan never makes one; load
                # failures can), and under DDP either every process steps or none does.
                if not distributed.any_rank(dist, x.shape[0] < 2, device):
                    # DDP averages the processes' mean losses; weighting each by its share
                    # of the global batch keeps that the global mean when shares differ.
                    weight = batch.labels.shape[0] * dist.world / global_size
                    result = _step_with_oom_retry(
                        net, optimizer, x, y, _weighted(loss_fn, weight), config, state, fired, log, precision
                    )
                    if result.stepped:
                        state.bad_in_row = 0
                        state.loss_sum += result.loss / weight * x.shape[0]
                        state.seen += x.shape[0]
                        if ema is not None:
                            ema.update(model, step=state.global_step)
                    else:
                        state.bad_steps += 1
                        state.bad_in_row += 1
                        state.epoch_bad_steps += 1
                        if state.bad_steps > config.max_bad_steps:
                            raise TrainingDiverged(
                                f"{state.bad_steps} steps had a non-finite loss (limit {config.max_bad_steps}); "
                                f"stopped at epoch {epoch}. Lower --lr, enable grad_clip, or check the data"
                                + (
                                    f"; the last good checkpoint is {paths.last}"
                                    if paths.last.is_file()
                                    else " (no checkpoint had been written yet)"
                                )
                            )
                        if state.bad_in_row >= config.rollback_after and paths.last.is_file():
                            _rollback(paths, restore, state, config, log)
                            reapply_lr()
                            rolled_back = True
                            break
                scheduler.step()
                state.global_step += 1
                state.step_in_epoch += 1
                bar.update(task, advance=1, info=f"loss {state.loss_sum / max(state.seen, 1):.4f}")
                now = time.monotonic()
                want_save = (config.checkpoint_every and state.step_in_epoch % config.checkpoint_every == 0) or (
                    config.checkpoint_minutes and now - last_save > 60 * config.checkpoint_minutes
                )
                stopping = distributed.any_rank(dist, bool(stop), device)
                if stopping or (want_save and state.step_in_epoch < steps_per_epoch):
                    save_last()
                    last_save = now
                if stopping:
                    bar.remove_task(task)
                    raise Interrupted(
                        f"stopped by {stop.get('signal', 'a signal')} at epoch {epoch}, batch {state.step_in_epoch}; "
                        f"checkpoint saved. Resume with: duet train --resume {paths.root}"
                    )
            bar.remove_task(task)
            if rolled_back:
                continue
            epoch_seconds = time.perf_counter() - t0
            new_images = state.seen - seen_before
            trained_images += new_images
            train_seconds += epoch_seconds
            seen_all = distributed.all_reduce_sum(dist, [state.loss_sum, float(state.seen)], device)

            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": seen_all[0] / max(seen_all[1], 1),
                "lr": max(g["lr"] for g in optimizer.param_groups),
                "train_images": int(seen_all[1]),
                "images_per_s": new_images * dist.world / max(epoch_seconds, 1e-9),
                "epoch_seconds": epoch_seconds,
                "load_failures": state.epoch_failures,
                "bad_steps": state.epoch_bad_steps,
                "micro_batches": state.micro_batches,
            }
            if val_loader is not None or dist.enabled:
                eval_model = ema.module if ema is not None else model
                row.update(
                    validate(eval_model, val_loader, spec, device, dist, precision)
                    if val_loader is not None
                    else validate_empty(dist, device)
                )
            acc = row.get("val_accuracy")
            improved = state.best_val_accuracy is None or acc is None or acc > state.best_val_accuracy
            if improved:
                state.best_val_accuracy, state.best_epoch, state.stale_epochs = acc, epoch, 0
                if dist.main:
                    best_model = ema.module if ema is not None else model
                    checkpoint.save_weights(paths.best, checkpoint.weights_state(best_model))
            else:
                state.stale_epochs += 1
            if dist.main:
                _append_metrics(paths.metrics, row)
            state.epoch += 1
            state.step_in_epoch, state.loss_sum, state.seen = 0, 0.0, 0
            state.epoch_failures = state.epoch_bad_steps = 0
            stopped_early = bool(config.patience) and state.stale_epochs >= config.patience
            finished = state.epoch > config.epochs or stopped_early
            save_last(finished)
            last_save = time.monotonic()
            if dist.main:
                write_info(
                    paths,
                    _run_info(
                        config,
                        manifest,
                        {
                            "epoch": state.best_epoch,
                            "val_accuracy": state.best_val_accuracy,
                            "epochs_done": epoch,
                            "stopped_early": stopped_early,
                            "events": state.events,
                            "load_failures": state.load_failures[:100],
                        },
                        precision,
                    ),
                )
            last_row = row
            log(_epoch_line(row, config.epochs, improved))
            if stopped_early:
                log(f"early stop: no val improvement for {config.patience} epochs (best epoch {state.best_epoch})")
                break

    test = _test_once(
        model if ema is None else ema.module,
        manifest,
        paths,
        backend,
        spec,
        device,
        dist,
        batch_size,
        common,
        precision,
    )
    if test and dist.main:
        write_info(
            paths,
            _run_info(
                config,
                manifest,
                {
                    "epoch": state.best_epoch,
                    "val_accuracy": state.best_val_accuracy,
                    "epochs_done": state.epoch - 1,
                    "stopped_early": stopped_early,
                    "events": state.events,
                    "load_failures": state.load_failures[:100],
                    "selected_on": "val",
                    **test,
                },
                precision,
            ),
        )
        log(
            f"test accuracy {100 * test['test_accuracy']:.2f}% on {test['test_images']} held-out test images "
            f"(epoch {state.best_epoch}, chosen on validation; the test split was measured once, now)"
        )
    if dist.main and val_samples:
        # The reference profile for drift monitoring (duet.monitor): embeddings,
        # confidences and image statistics of held-out images.
        from duet.monitor.profile import write_profile

        write_profile(paths.root, device=config.device, workers=workers, progress=progress, log=log)
    return TrainResult(
        run_dir=paths.root,
        epochs=config.epochs,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_val_accuracy,
        last=last_row,
        seconds=time.perf_counter() - t_run,
        train_images_per_s=trained_images * dist.world / max(train_seconds, 1e-9),
        num_train=len(train_samples),
        num_val=len(val_samples),
        load_failures=state.load_failures,
        stopped_early=stopped_early,
        events=state.events,
        num_test=num_test,
        test=test,
        precision=precision.to_dict(),
    )


def _test_once(
    model: torch.nn.Module,
    manifest: Manifest,
    paths: RunPaths,
    backend: str,
    spec: PreprocessSpec,
    device: torch.device,
    dist: distributed.Dist,
    batch_size: int,
    common: LoaderOptions,
    precision: Precision,
) -> dict[str, Any]:
    """The test split, evaluated once after the last epoch with the best epoch's
    weights (chosen on validation, so this number is not). {} without a test split."""
    test_samples = split_samples(manifest, "test")
    if not test_samples or not paths.best.is_file():
        return {}
    model.load_state_dict(checkpoint.load_weights(paths.best))
    share = test_samples[dist.rank :: dist.world]
    if share:
        loader = make_loader(backend, share, spec, common)
        result = validate(model, loader, spec, device, dist, precision)
    else:
        result = validate_empty(dist, device)
    return {
        "test_accuracy": result["val_accuracy"],
        "test_loss": result["val_loss"],
        "test_images": result["val_images"],
    }


def validate_empty(d: distributed.Dist, device: torch.device) -> dict[str, float]:
    """A rank with no validation images still joins the reduction."""
    total_loss, correct, n = distributed.all_reduce_sum(d, [0.0, 0.0, 0.0], device)
    return {"val_loss": total_loss / max(n, 1), "val_accuracy": correct / max(n, 1), "val_images": int(n)}


def _weighted(loss_fn: Any, weight: float) -> Any:
    if weight == 1.0:
        return loss_fn
    return lambda logits, y: loss_fn(logits, y) * weight


def _count_load_failures(
    state: LoopState, batch: Any, samples: list[Sample], epoch: int, config: TrainConfig, n: int
) -> None:
    for i, err in zip(batch.index.tolist(), batch.errors):
        if err:
            state.load_failures.append({"path": str(samples[i].path), "reason": err, "epoch": str(epoch)})
            state.epoch_failures += 1
    if state.epoch_failures > max(1, config.max_load_failures * n):
        last = state.load_failures[-1]
        raise DataError(
            f"{state.epoch_failures} training images failed to load in epoch {epoch} "
            f"(e.g. {last['path']}: {last['reason']}); the data folder changed after the scan; "
            "fix it and resume"
        )


def _step_with_oom_retry(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Any,
    config: TrainConfig,
    state: LoopState,
    fired: set[tuple[str, int]],
    log: Log,
    precision: Precision,
) -> Any:
    """One step; on out-of-memory halve the micro-batch and try again.

    ``config.inject_faults`` (tests only) makes chosen global steps raise an
    out-of-memory error or see NaN inputs, once each."""
    faults = config.inject_faults
    while True:
        try:
            for kind in ("oom", "nan"):
                key = (kind, state.global_step)
                if state.global_step in faults.get(kind, []) and key not in fired:
                    fired.add(key)
                    if kind == "oom":
                        raise torch.OutOfMemoryError("injected out-of-memory (inject_faults)")
                    x = x * float("nan")
            return train_step(
                net,
                optimizer,
                x,
                y,
                loss_fn=loss_fn,
                micro_batches=state.micro_batches,
                grad_clip=config.grad_clip,
                precision=precision,
            )
        except torch.OutOfMemoryError:
            if state.micro_batches >= x.shape[0]:
                raise
            state.micro_batches *= 2
            msg = (
                f"out of memory at step {state.global_step}: now {state.micro_batches} micro-batches of "
                f"~{-(-x.shape[0] // state.micro_batches)} images (gradients accumulate; same effective batch)"
            )
            state.events.append(msg)
            log(msg)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _rollback(
    paths: RunPaths, restore: Callable[[dict[str, Any]], None], state: LoopState, config: TrainConfig, log: Log
) -> None:
    """Reload the last checkpoint and lower the learning rate, keeping the fault counters."""
    bad, scale, events, micro = state.bad_steps, state.lr_scale, list(state.events), state.micro_batches
    restore(checkpoint.load_last(paths.last))
    state.bad_steps, state.bad_in_row = bad, 0
    state.lr_scale = scale * config.rollback_lr_factor
    state.micro_batches = max(micro, state.micro_batches)
    msg = (
        f"{config.rollback_after} non-finite losses in a row: rolled back to epoch {state.epoch}, "
        f"batch {state.step_in_epoch}, learning rate x{state.lr_scale:g}"
    )
    state.events = events + [msg]
    log(msg)


def _epoch_line(row: dict[str, Any], epochs: int, is_best: bool) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_accuracy" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {100 * row['val_accuracy']:.2f}%"]
    parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.0f} img/s", f"{row['epoch_seconds']:.1f}s"]
    if row["load_failures"]:
        parts.append(f"{row['load_failures']} load failures")
    if row["bad_steps"]:
        parts.append(f"{row['bad_steps']} non-finite steps skipped")
    return "  ".join(parts) + ("  *best" if is_best else "")
