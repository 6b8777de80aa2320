"""The epochs of one run: the pieces it trains with, and the loop over them.

``Trainer(...)`` builds the pieces in a fixed order (the seeded model, the
loaders, optimiser, warm-up + cosine schedule, EMA, mixup, loss) — the order is
part of what makes a run repeatable for a seed, so keep it. ``fit`` is the loop:

    for each epoch left:  train its batches (``_train_epoch``: one ``_step`` per
                          batch, a checkpoint every ``checkpoint_every`` steps /
                          ``checkpoint_minutes``, a stop request ends the run);
                          then validate, keep the best weights, write the
                          checkpoint, metrics.jsonl and run.json (``_end_epoch``)
    then the test split, once, with the best epoch's weights (``_test_once``)

What goes wrong on the way (non-finite losses, out-of-memory, signals, files that
stop loading) is handled in ``duet.training.faults``. Everything a resume needs is
``LoopState`` plus the state dicts of ``snapshot``, saved in checkpoints/last.pt.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from duet.artifacts.run_dir import RunPaths, write_info
from duet.data import augment, contract
from duet.data.contract import Batch, rank_slice
from duet.data.scan import Manifest
from duet.errors import Interrupted
from duet.system.device import resolve_device
from duet.system.progress import make_progress
from duet.training import checkpoint, distributed, faults, privacy, recipe
from duet.training.bf16_convs import keep_fp32_where_bf16_breaks
from duet.training.config import TrainConfig
from duet.training.curves import write_curves
from duet.training.precision import Precision
from duet.training.prepare import (
    build_data,
    class_counts,
    make_test_loader,
    prepare_model,
    seed_everything,
    split_samples,
)
from duet.training.records import append_metrics, best_record, epoch_line, keep_metrics_until, run_info
from duet.training.schedule import warmup_cosine
from duet.training.state import Log, LoopState, Tracker, TrainResult
from duet.training.step import LossFn, StepResult, cross_entropy, train_step
from duet.training.validation import validate, validate_empty


class Trainer:
    """One run's model, data, optimiser and counters (``state``), and ``fit``."""

    def __init__(
        self,
        config: TrainConfig,
        manifest: Manifest,
        paths: RunPaths,
        *,
        dist: distributed.Dist,
        precision: Precision,
        progress: bool,
        log: Log,
        model: torch.nn.Module | None = None,
        fault_plan: faults.FaultPlan | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.config, self.manifest, self.paths = config, manifest, paths
        self.tracker, self.resumed = tracker, False  # rank 0 reports to the tracker (duet.tracking)
        self.dist, self.precision, self.progress, self.log = dist, precision, progress, log
        self.spec = config.preprocess()
        self.device = distributed.device_for(dist, resolve_device(config.device))
        if model is None:  # resume (weights from the checkpoint) or a rank > 0 (DDP broadcasts rank 0's)
            model = prepare_model(config, len(manifest.labels), weights="none")
        seed_everything(config.seed)
        self.data = build_data(config, manifest, dist, self.device, progress=progress, log=log)
        log(f"precision {precision.reason}")
        if not self.data.num_test:
            log(
                "no test split (it needs a test/ folder, or --test-split > 0 and >= 20 images in every class): "
                "the accuracy reported is validation's, which chose the epoch, so it is optimistic"
            )
        self.state = LoopState()  # the schedule below reads state.lr_scale: never replace this object
        self._build_model(model)
        self.inject = faults.Injector(fault_plan or faults.FaultPlan())
        self.trained_images, self.train_seconds = 0, 0.0
        self.last_row: dict[str, Any] = {}
        self.stopped_early = False
        self.last_save = time.monotonic()

    def _build_model(self, model: torch.nn.Module) -> None:
        """Model on the device, optimiser, schedule, EMA, mixup, loss; in this order."""
        config, state = self.config, self.state
        self.recipe = recipe.resolve(config.recipe, config.weights)
        model = model.to(self.device)
        fp32_convs = keep_fp32_where_bf16_breaks(model, self.spec.image_size, self.precision, self.device)
        if fp32_convs:
            self.log(
                f"bf16: {len(fp32_convs)} conv(s) whose input is smaller than their stride run in fp32 "
                f"({', '.join(fp32_convs)}): oneDNN's bf16 gradient for them is not repeatable"
            )
        self.model = model.to(memory_format=torch.channels_last)  # every device: see train/step.py
        groups = recipe.param_groups(
            self.model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            recipe=self.recipe,
            layer_decay=config.layer_decay,
        )
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        self.steps_per_epoch = len(self.data.train_loader)
        total_steps = self.steps_per_epoch * config.epochs
        warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: state.lr_scale * warmup_cosine(s, total=total_steps, warmup=warmup_steps)
        )
        self.ema = None
        if config.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=config.ema_decay)
        self.mixup = None
        if config.mixup > 0 or config.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=config.label_smoothing,
                num_classes=len(self.manifest.labels),
            )
        self.loss_fn = self._loss()
        self.aug_gen = torch.Generator().manual_seed(config.seed)
        self.net: torch.nn.Module = self.model
        self.private: privacy.Private | None = None
        if config.dp is not None:
            self.private = privacy.make_private(
                self.model,
                self.optimizer,
                config.dp,
                n_train=len(self.data.train_samples),
                batch_size=self.data.batch_size,
                planned_steps=total_steps,
            )
            self.optimizer, self.net = self.private.optimizer, self.private.module
            p = self.private
            self.log(
                f"DP-SGD: ε={p.target_epsilon:g}, δ={p.delta:.1e} over {total_steps} Poisson steps "
                f"(q={p.sample_rate:.4f}) -> noise multiplier {p.noise_multiplier:.3f}, clip {p.max_grad_norm:g}; "
                "model norm: group"
            )
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.recipe == "finetune",
            )  # the frozen backbone gets no gradients

    def _loss(self) -> LossFn:
        """Cross-entropy, class-weighted when asked or when the classes are imbalanced."""
        config = self.config
        counts = class_counts(self.data.train_samples, len(self.manifest.labels))
        ratio = max(counts) / max(1, min(counts))
        use_weights = config.class_weights == "on" or (
            config.class_weights == "auto" and ratio >= 3 and config.dp is None  # counting classes reads the data
        )
        weight = recipe.class_weights(counts).to(self.device) if use_weights else None
        if use_weights:
            self.log(f"class imbalance {ratio:.1f}:1 -> class-weighted loss")
        return cross_entropy(config.label_smoothing, weight)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated, tested and saved as best: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints ---------------------------------------------------------------

    def snapshot(self, finished: bool = False) -> dict[str, Any]:
        """checkpoints/last.pt: everything ``--resume`` needs, as plain state dicts."""
        return {
            "model": checkpoint.weights_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": checkpoint.weights_state(self.ema.module) if self.ema is not None else None,
            "aug_rng": self.aug_gen.get_state(),
            "rng": checkpoint.rng_state(),
            "loop": asdict(self.state),
            "finished": finished,
            "config": self.config.to_yaml_dict(),
            "labels": self.manifest.labels,
            "precision": self.precision.to_dict(),
            "privacy": self.private.state_dict() if self.private is not None else None,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.module.load_state_dict(saved["ema"])
        self.aug_gen.set_state(saved["aug_rng"])
        checkpoint.set_rng_state(saved["rng"])
        for k, v in saved["loop"].items():
            setattr(self.state, k, v)
        if self.private is not None:
            self.private.load_state_dict(saved.get("privacy") or {})

    def resume_from(self, saved: dict[str, Any]) -> None:
        """Continue from a last.pt (mid-epoch included); drops metrics of epochs it will redo."""
        self.restore(saved)
        self.resumed = True
        if saved.get("config", {}).get("epochs") != self.config.epochs:
            self.reapply_lr()  # --resume --epochs: the schedule's new plan applies from this step
        if self.dist.main:
            keep_metrics_until(self.paths.metrics, self.state.epoch - 1)

    def save_last(self, finished: bool = False) -> None:
        if self.dist.main:
            checkpoint.save_last(self.paths.last, self.snapshot(finished))
        distributed.barrier(self.dist)

    def reapply_lr(self) -> None:
        """Set every group's LR from the schedule now (after a rollback lowered lr_scale)."""
        for g, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
            g["lr"] = lr

    # -- the loop ------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """The epochs left, then the test split once."""
        config, state = self.config, self.state
        if self.recipe == "finetune":
            self.log(
                f"recipe finetune: head only for {config.freeze_epochs} epoch(s), then all layers "
                f"(layer decay {config.layer_decay})"
            )
        if self.tracker is not None and self.dist.main:
            self.tracker.start(self.paths.root, self.config.to_yaml_dict(), self.resumed)
        t_run = time.perf_counter()
        try:
            with make_progress(self.progress) as bar, faults.stop_signals() as stop:
                while state.epoch <= config.epochs:
                    trained = self._train_epoch(bar, stop)
                    if trained is None:
                        continue  # rolled back: carry on from the restored checkpoint
                    if self._end_epoch(*trained):
                        break  # early stop
        except BaseException as e:
            if self.tracker is not None and self.dist.main:
                self.tracker.stopped("KILLED" if isinstance(e, Interrupted | KeyboardInterrupt) else "FAILED")
            raise
        test = self._test_once()
        if self.dist.main:
            write_curves(self.paths.root)  # eval/curves.png from metrics.jsonl
        result = self._result(test, time.perf_counter() - t_run)
        if self.tracker is not None and self.dist.main:
            self.tracker.end(result)
        return result

    def _train_epoch(self, bar: Any, stop: dict[str, str]) -> tuple[float, int] | None:
        """The rest of the current epoch's batches. Returns (seconds, images trained),
        or None when a rollback restored an earlier point. A stop request writes a
        checkpoint and raises ``Interrupted``."""
        config, state = self.config, self.state
        epoch = state.epoch
        recipe.set_backbone_frozen(self.model, self.recipe == "finetune" and epoch <= config.freeze_epochs)
        self.net.train()
        self.data.train_loader.set_epoch(epoch, start_batch=state.step_in_epoch)
        task = bar.add_task(
            f"epoch {epoch}/{config.epochs}", total=self.steps_per_epoch, completed=state.step_in_epoch, info=""
        )
        t0, seen_before = time.perf_counter(), state.seen
        for batch in self.data.train_loader:
            if not self._step(batch):
                bar.remove_task(task)
                return None
            bar.update(task, advance=1, info=f"loss {state.loss_sum / max(state.seen, 1):.4f}")
            if self._checkpoint_if_due(stop):
                bar.remove_task(task)
                raise faults.interrupted(stop, state, self.paths.root)
        bar.remove_task(task)
        return time.perf_counter() - t0, state.seen - seen_before

    def _step(self, batch: Batch) -> bool:
        """Train on one batch; False when a run of non-finite losses rolled the run back."""
        config, state, dist = self.config, self.state, self.dist
        ok = batch.labels >= 0
        if not bool(ok.all()):
            faults.count_load_failures(state, batch.index.tolist(), batch.errors, self.data.train_samples, config)
        # Poisson batches (DP-SGD, one process) vary in size: the batch is the global batch
        global_size = batch.labels.shape[0] if self.private is not None else self.data.sizes[state.step_in_epoch]
        x = augment.train_batch(
            batch.images,
            self.spec,
            scale=config.augment.scale,
            ratio=config.augment.ratio,
            hflip=config.augment.hflip,
            generator=self.aug_gen,
            draws=global_size,
            offset=rank_slice(global_size, dist.rank, dist.world)[0],
        )[ok]
        y = batch.labels[ok]
        if self.mixup is not None and x.shape[0] % 2 == 0 and x.shape[0] > 1:
            x, y = self.mixup(x, y)
        # BatchNorm cannot train on a single image (the plan never makes one; load
        # failures can), and under DDP either every process steps or none does.
        # DP-SGD (GroupNorm) trains on one image: skipping a 1-image Poisson step would not count it.
        if not distributed.any_rank(dist, x.shape[0] < (1 if self.private is not None else 2), self.device):
            # DDP averages the processes' mean losses; weighting each by its share
            # of the global batch keeps that the global mean when shares differ.
            share = batch.labels.shape[0] * dist.world / global_size
            loss_fn = _weighted(self.loss_fn, share)

            def step(xs: torch.Tensor, micro_batches: int) -> StepResult:
                return train_step(
                    self.net,
                    self.optimizer,
                    xs,
                    y,
                    loss_fn=loss_fn,
                    micro_batches=micro_batches,
                    grad_clip=config.grad_clip,
                    precision=self.precision,
                )

            result = faults.step_with_oom_retry(step, x, state, self.inject, self.log)
            if result.stepped:
                state.bad_in_row = 0
                state.loss_sum += result.loss / share * x.shape[0]
                state.seen += x.shape[0]
                if self.ema is not None:
                    self.ema.update(self.model, step=state.global_step)
            elif faults.count_bad_step(state, config, self.paths.last):
                faults.rollback(self.paths.last, self.restore, state, config, self.log)
                self.reapply_lr()
                return False
        self.scheduler.step()
        state.global_step += 1
        state.step_in_epoch += 1
        return True

    def _checkpoint_if_due(self, stop: dict[str, str]) -> bool:
        """Write last.pt when a mid-epoch checkpoint is due or a stop was requested
        (on any rank); True when the run must stop."""
        config, state = self.config, self.state
        now = time.monotonic()
        want_save = (config.checkpoint_every and state.step_in_epoch % config.checkpoint_every == 0) or (
            config.checkpoint_minutes and now - self.last_save > 60 * config.checkpoint_minutes
        )
        stopping = distributed.any_rank(self.dist, bool(stop), self.device)
        if stopping or (want_save and state.step_in_epoch < self.steps_per_epoch):
            self.save_last()
            self.last_save = now
        return stopping

    def _end_epoch(self, seconds: float, new_images: int) -> bool:
        """Validate, keep the best weights, checkpoint and record the epoch; True on an early stop."""
        config, state, dist = self.config, self.state, self.dist
        epoch = state.epoch
        self.trained_images += new_images
        self.train_seconds += seconds
        row = self._epoch_row(seconds, new_images)
        improved = self._track_best(row.get("val_accuracy"))
        if dist.main:
            append_metrics(self.paths.metrics, row)
            if self.tracker is not None:
                self.tracker.epoch(row)
        state.epoch += 1
        state.step_in_epoch, state.loss_sum, state.seen = 0, 0.0, 0
        state.epoch_failures = state.epoch_bad_steps = 0
        self.stopped_early = bool(config.patience) and state.stale_epochs >= config.patience
        self.save_last(finished=state.epoch > config.epochs or self.stopped_early)
        self.last_save = time.monotonic()
        if dist.main:
            best = best_record(state, epochs_done=epoch, stopped_early=self.stopped_early)
            write_info(self.paths, run_info(config, self.manifest, best, self.precision, self._privacy()))
        self.last_row = row
        self.log(epoch_line(row, config.epochs, improved))
        if self.stopped_early:
            self.log(f"early stop: no val improvement for {config.patience} epochs (best epoch {state.best_epoch})")
        return self.stopped_early

    def _privacy(self) -> dict[str, Any] | None:
        return self.private.record() if self.private is not None else None

    def _epoch_row(self, seconds: float, new_images: int) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl (training numbers summed over ranks, then validation's)."""
        state, dist = self.state, self.dist
        seen_all = distributed.all_reduce_sum(dist, [state.loss_sum, float(state.seen)], self.device)
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": seen_all[0] / max(seen_all[1], 1),
            "lr": max(g["lr"] for g in self.optimizer.param_groups),
            "train_images": int(seen_all[1]),
            "images_per_s": new_images * dist.world / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            "load_failures": state.epoch_failures,
            "bad_steps": state.epoch_bad_steps,
            "micro_batches": state.micro_batches,
        }
        if self.private is not None:
            empty = contract.poisson_plan(
                len(self.data.train_samples), batch_size=self.data.batch_size, seed=self.config.seed, epoch=state.epoch
            )
            self.private.count_empty_steps(sum(1 for b in empty if not b))
            row["epsilon"] = self.private.epsilon()
        val_loader = self.data.val_loader
        if val_loader is not None:
            row.update(validate(self.eval_model, val_loader, self.spec, self.device, dist, self.precision))
        elif dist.enabled:
            row.update(validate_empty(dist, self.device))
        return row

    def _track_best(self, acc: float | None) -> bool:
        """Early stopping's bookkeeping; saves best.safetensors when validation improved."""
        state = self.state
        improved = state.best_val_accuracy is None or acc is None or acc > state.best_val_accuracy
        if improved:
            state.best_val_accuracy, state.best_epoch, state.stale_epochs = acc, state.epoch, 0
            if self.dist.main:
                checkpoint.save_weights(self.paths.best, checkpoint.weights_state(self.eval_model))
        else:
            state.stale_epochs += 1
        return improved

    def _test_once(self) -> dict[str, Any]:
        """The test split, evaluated once after the last epoch with the best epoch's
        weights (chosen on validation, so this number is not). {} without a test split."""
        test_samples = split_samples(self.manifest, "test")
        if not test_samples or not self.paths.best.is_file():
            return {}
        model = self.eval_model
        model.load_state_dict(checkpoint.load_weights(self.paths.best))
        loader = make_test_loader(self.data, test_samples, self.spec, self.dist)
        if loader is not None:
            result = validate(model, loader, self.spec, self.device, self.dist, self.precision)
        else:
            result = validate_empty(self.dist, self.device)
        test = {
            "test_accuracy": result["val_accuracy"],
            "test_loss": result["val_loss"],
            "test_images": result["val_images"],
        }
        if self.dist.main:
            state = self.state
            best = best_record(state, epochs_done=state.epoch - 1, stopped_early=self.stopped_early)
            best.update(selected_on="val", **test)
            write_info(self.paths, run_info(self.config, self.manifest, best, self.precision, self._privacy()))
            self.log(
                f"test accuracy {100 * test['test_accuracy']:.2f}% on {test['test_images']} held-out test images "
                f"(epoch {state.best_epoch}, chosen on validation; the test split was measured once, now)"
            )
        return test

    def _result(self, test: dict[str, Any], seconds: float) -> TrainResult:
        state = self.state
        return TrainResult(
            run_dir=self.paths.root,
            epochs=self.config.epochs,
            best_epoch=state.best_epoch,
            best_val_accuracy=state.best_val_accuracy,
            last=self.last_row,
            seconds=seconds,
            train_images_per_s=self.trained_images * self.dist.world / max(self.train_seconds, 1e-9),
            num_train=len(self.data.train_samples),
            num_val=len(self.data.val_samples),
            load_failures=state.load_failures,
            stopped_early=self.stopped_early,
            events=state.events,
            num_test=self.data.num_test,
            test=test,
            precision=self.precision.to_dict(),
        )


def _weighted(loss_fn: LossFn, weight: float) -> LossFn:
    if weight == 1.0:
        return loss_fn
    return lambda logits, y: loss_fn(logits, y) * weight
