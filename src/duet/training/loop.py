"""The training run, top to bottom: ``train`` starts a run, ``resume`` continues one.

Read it as the story of a run. ``train`` first does everything that can fail
cheaply (the device, the model name, the data scan, the weights and one image at
the input size: ``duet.training.prepare``), so a run that cannot start leaves no
folder; then it creates the run folder (config.yaml, manifest.csv,
data_report.json, run.json), and a run that fails before its first checkpoint
removes it again. ``resume`` reads the folder back and continues from
checkpoints/last.pt. Both hand the epochs to ``duet.training.trainer.Trainer``; its
``fit`` trains, validates, checkpoints and finally measures the test split once
(validation chose the epoch; test never took part). Every forward pass runs in
the run's precision (``duet.training.precision``: resolved once at the start,
recorded in run.json and the checkpoint, kept by a resume).

Resilience (``duet.training.faults``): checkpoints at every epoch end and every
``checkpoint_every`` steps / ``checkpoint_minutes``, written atomically, never
with non-finite weights; a resume continues from the exact batch (same seed =>
same result); SIGINT/SIGTERM checkpoint and exit with the command that resumes;
non-finite losses are skipped, rolled back, and stop the run past a limit (exit
6); out-of-memory halves the micro-batch; files that stop loading are counted.

The drift profile is not written here: the callers (``duet train``, the Python
API, retraining) call ``duet.monitor.profile.ensure_profile`` once a run is done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from duet.artifacts.run_dir import RunPaths, create_run_dir, read_config, write_config, write_info
from duet.data.scan import data_report, read_manifest, write_manifest
from duet.errors import ConfigError, RunError, RunFinished
from duet.system.atomic import write_json_atomic
from duet.system.device import resolve_device
from duet.training import checkpoint, distributed, privacy
from duet.training.config import TrainConfig, config_from_dict
from duet.training.faults import FaultPlan
from duet.training.models import check_source
from duet.training.precision import Precision, resolve_precision
from duet.training.prepare import prepare_data, prepare_model
from duet.training.records import catch_up_run_info, run_info
from duet.training.state import Log, LoopState, Tracker, TrainResult, silent
from duet.training.trainer import Trainer

__all__ = ["FaultPlan", "Log", "LoopState", "Tracker", "TrainResult", "resume", "resumed_precision", "train"]


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    log: Log = print,
    faults: FaultPlan | None = None,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Train a new run from ``config``; returns when all epochs are done.

    ``faults``: for tests only, steps at which to inject NaN inputs or an
    out-of-memory error (``duet.training.faults``). ``tracker``: where rank 0
    reports the run as it trains (``duet.tracking.sink_for``; None = nowhere).

    Under torchrun, rank 0 scans, creates the run folder and writes every file;
    the other ranks wait for it and read the same manifest."""
    d = distributed.from_env(os.environ, config.device)
    privacy.check(config, d.world)  # DP-SGD: Opacus installed, no setting that breaks the guarantee
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
        if config.dp is not None:  # per-sample gradients in fp32 (an explicit bf16 is refused by privacy.check)
            precision = Precision("fp32", config.precision, "fp32: differentially private training (DP-SGD)")
        else:
            precision = resolve_precision(config.precision, resolve_device(config.device))
        with discard_unless_checkpointed(paths, d, log):
            if d.main:
                write_config(paths, config.to_yaml_dict())
                write_manifest(manifest, paths.manifest)
                write_json_atomic(paths.data_report, data_report(manifest))
                write_info(paths, run_info(config, manifest, {}, precision))
                log(f"run folder: {paths.root}")
                _announce(d, str(paths.root))
            trainer = Trainer(
                config,
                manifest,
                paths,
                dist=d,
                model=model,
                precision=precision,
                progress=progress and d.main,
                log=log if d.main else silent,
                fault_plan=faults,
                tracker=tracker,
            )
            return trainer.fit()
    finally:
        distributed.shutdown(d)


def resume(
    run_dir: Path,
    *,
    epochs: int | None = None,
    progress: bool = True,
    log: Log = print,
    faults: FaultPlan | None = None,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (mid-epoch included).

    ``epochs``: a new total, more than the epochs already completed; it extends
    a run (a finished one too) or shortens an unfinished one. The warm-up +
    cosine schedule is then re-planned for the new total from the resume point
    (the LR continues as a run planned for that many epochs would have it at
    this step), so a resumed run equals an uninterrupted one only when the
    total is unchanged. The change is written to config.yaml and, as an event,
    to run.json. ``faults``, ``tracker``: as for ``train`` (a tracker continues the run's
    own tracked run)."""
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
            catch_up_run_info(paths, config, manifest, loop, precision, log)
        raise RunFinished(
            f"run '{paths.root}' already finished ({done} of {config.epochs} epochs); nothing to resume. "
            f"To train it longer: duet train --resume {paths.root} --epochs N (N > {done})",
            str(paths.root),
        )
    try:
        if d.main:
            log(f"resuming {paths.root} at epoch {loop.epoch}, batch {loop.step_in_epoch}")
        trainer = Trainer(
            config,
            manifest,
            paths,
            dist=d,
            precision=precision,
            progress=progress and d.main,
            log=log if d.main else silent,
            fault_plan=faults,
            tracker=tracker,
        )
        trainer.resume_from(state)
        return trainer.fit()
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


@contextmanager
def discard_unless_checkpointed(paths: RunPaths, d: distributed.Dist, log: Log) -> Iterator[None]:
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


def _replan(
    paths: RunPaths, config: TrainConfig, state: dict[str, Any], epochs: int, *, main: bool, log: Log
) -> TrainConfig:
    """Give a resumed run a new total of epochs (see ``resume``); records it in
    the checkpoint's events, config.yaml and run.json."""
    done = LoopState(**state["loop"]).epoch - 1
    if config.dp is not None:
        raise ConfigError(
            f"run '{paths.root}' is differentially private: its noise was calibrated to spend ε={config.dp.epsilon:g} "
            f"over {config.epochs} epochs, and more epochs would spend more; start a new run with the epochs "
            "(and the ε) you want"
        )
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


def _announce(d: distributed.Dist, text: str) -> str:
    """Rank 0 tells the others a short string (the run folder)."""
    if not d.enabled:
        return text
    import torch.distributed as tdist

    box = [text]
    tdist.broadcast_object_list(box, src=0)
    return str(box[0])
