"""`duet train` and `duet lr-find`: fit a model on a data folder, or sweep its learning rate.

Defaults in the help come from ``TrainConfig`` (duet.cli.common.train_default); a
flag left out is ``None`` and the config file or the model decides. After training
(or ``--resume``) the command writes the run's drift profile itself
(``duet.monitor.profile.ensure_profile``): the training loop does not.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape  # messages may hold "[...]": print them as text
from rich.table import Table

from duet.cli.common import DefaultsFromConfig, out, pct, print_json, stderr_log, train_default
from duet.errors import ConfigError, RunFinished

if TYPE_CHECKING:
    from duet.training.config import TrainConfig
    from duet.training.loop import TrainResult
    from duet.training.state import Log

PRECISION_HELP = (
    "auto | fp32 | bf16. auto = bf16 autocast on CUDA and on CPUs with native bf16 (AMX or AVX-512-BF16), "
    "else fp32; weights stay fp32. "
)


_TRAIN_DATA_DIR = typer.Argument(
    None,
    help="Folder with one sub-folder per class (or train/ and val/ sub-folders). Optional with --config or --resume.",
)
_TRAIN_WEIGHTS = typer.Option(
    None, help="none | imagenet | PATH to a .safetensors/.pth state dict. " + train_default("weights")
)
_TRAIN_LR = typer.Option(None, help="Peak learning rate (AdamW, warm-up then cosine). " + train_default("lr"))
_TRAIN_IMAGE_SIZE = typer.Option(
    None, "--image-size", help="Model input side in pixels. " + train_default("image_size")
)
_TRAIN_VAL_SPLIT = typer.Option(
    None,
    "--val-split",
    help="Fraction of each class held out for validation, which picks the best epoch (ignored with train/ val/ folders). "
    + train_default("val_split"),
)
_TRAIN_TEST_SPLIT = typer.Option(
    None,
    "--test-split",
    help="Fraction of each class held out as a test split, evaluated once after training; only when every class has >= 20 images; 0 = none (ignored with train/ val/ folders). "
    + train_default("test_split"),
)
_TRAIN_WORKERS = typer.Option(
    None, help="Data loading processes; -1 = one per core (max 8). " + train_default("workers")
)
_TRAIN_HFLIP = typer.Option(
    None, "--hflip/--no-hflip", help="Random horizontal flips. " + train_default("augment.hflip")
)
_TRAIN_RECIPE = typer.Option(
    None,
    help="auto | finetune | scratch. finetune = head first, then all layers with layer-wise LRs; auto = finetune with pretrained weights. "
    + train_default("recipe"),
)
_TRAIN_EMA = typer.Option(
    None, "--ema/--no-ema", help="Keep an EMA of the weights; validate and save it. " + train_default("ema")
)
_TRAIN_PATIENCE = typer.Option(
    None, help="Early stopping: epochs without val improvement (0 = off). " + train_default("patience")
)
_TRAIN_DATA_BACKEND = typer.Option(
    None,
    "--data-backend",
    help="auto | cache | torch | tf. auto = decode once into a cache when it fits --cache-max-gb, else torch. "
    + train_default("data_backend"),
)
_TRAIN_DP_EPSILON = typer.Option(
    None,
    "--dp-epsilon",
    min=0.01,
    help="Train with differential privacy (DP-SGD, the dp extra): the total privacy budget ε; noise is calibrated to spend it over the planned epochs. δ and the clip norm: `dp:` in --config (docs/privacy.md).",
)
_TRAIN_TRACK = typer.Option(
    None,
    "--track",
    help="none | mlflow | tensorboard. mlflow: params, per-epoch metrics and files to MLFLOW_TRACKING_URI, else sqlite <out>/mlflow.db (docs/tracking.md); tensorboard: RUN/tensorboard/. "
    + train_default("track"),
)
_TRAIN_TARGET = typer.Option(
    None, "--target", help="Tables: the column holding each row's class (DATA is then a .csv/.tsv/.parquet file)."
)
_TRAIN_VAL_DATA = typer.Option(
    None, "--val-data", help="Tables: a validation table with the same columns; fixes the split (DATA all trains)."
)
_TRAIN_TEXT_COLUMN = typer.Option(
    None,
    "--text-column",
    help="Text: the column holding each row's text (DATA is then a table, with --target). A folder of class folders of .txt files needs no flag (docs/text.md).",
)
_TRAIN_CACHE_DIR = typer.Option(
    None, "--cache-dir", help="Where decoded images are cached. \\[default: $DUET_CACHE_DIR or ~/.cache/duet]"
)


def train(
    data_dir: Path | None = _TRAIN_DATA_DIR,
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of settings; flags override it."),
    model: str | None = typer.Option(None, help="timm model name, or torchvision:NAME. " + train_default("model")),
    weights: str | None = _TRAIN_WEIGHTS,
    epochs: int | None = typer.Option(None, help="Passes over the training images. " + train_default("epochs")),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step. " + train_default("batch_size")),
    lr: float | None = _TRAIN_LR,
    image_size: int | None = _TRAIN_IMAGE_SIZE,
    val_split: float | None = _TRAIN_VAL_SPLIT,
    test_split: float | None = _TRAIN_TEST_SPLIT,
    seed: int | None = typer.Option(None, help="Seed for the split, init and augmentation. " + train_default("seed")),
    device: str | None = typer.Option(None, help="auto | cpu | cuda. " + train_default("device")),
    precision: str | None = typer.Option(None, help=PRECISION_HELP + train_default("precision")),
    workers: int | None = _TRAIN_WORKERS,
    hflip: bool | None = _TRAIN_HFLIP,
    recipe: str | None = _TRAIN_RECIPE,
    ema: bool | None = _TRAIN_EMA,
    patience: int | None = _TRAIN_PATIENCE,
    dp_epsilon: float | None = _TRAIN_DP_EPSILON,
    data_backend: str | None = _TRAIN_DATA_BACKEND,
    track: str | None = _TRAIN_TRACK,
    cache_dir: Path | None = _TRAIN_CACHE_DIR,
    target: str | None = _TRAIN_TARGET,
    val_data: Path | None = _TRAIN_VAL_DATA,
    text_column: str | None = _TRAIN_TEXT_COLUMN,
    out_dir: Path | None = typer.Option(None, "--out", help="Folder that holds runs. " + train_default("out")),
    name: str | None = typer.Option(None, help="Run folder name. \\[default: <date>-<time>-<model>]"),
    resume: Path | None = typer.Option(None, help="Continue an interrupted run folder from its last completed epoch."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines."),
) -> None:
    """Train a classifier on DATA_DIR (images) or a table file, and write a run folder (runs/<name>/).

    Example: duet train photos/ --model resnet18 --weights imagenet --epochs 5

    Tables: duet train data.csv --target label [--model tab_mlp|ft_transformer] (docs/tabular.md).

    Text: duet train corpus/ (class folders of .txt files), or duet train reviews.csv --text-column review
    --target label [--model fasttext|text_transformer] (docs/text.md).

    With --resume RUN only --epochs may be given: a new total that extends the run
    (a finished one too); the LR schedule is re-planned for it from that point.
    """
    # The signature is the command's declaration (one parameter per flag); the body stays short.
    flags = dict(locals())
    log = stderr_log(quiet or as_json)
    if resume is not None and (ignored := _flags_resume_cannot_change(flags)):
        raise ConfigError(
            f"--resume continues '{resume}' with the settings it was started with (its config.yaml); "
            f"only --epochs can change. Remove: {' '.join(ignored)}"
        )
    if _trained_by_another_modality(flags, log):
        return
    _train_images(flags, log)


def _train_images(flags: dict[str, Any], log: Log) -> None:
    """`duet train` of an image folder (or --resume of an image run), its profile and summary."""
    resume, epochs, quiet, device, as_json = (flags[k] for k in ("resume", "epochs", "quiet", "device", "as_json"))
    device_used, workers_used = device or "auto", None
    if resume is not None:
        from duet.tracking import sink_for_run
        from duet.training.loop import resume as resume_run

        try:
            result = resume_run(resume, epochs=epochs, progress=not quiet, log=log, tracker=sink_for_run(resume))
        except RunFinished as finished:
            # A run killed after its last checkpoint may lack its profile: write it, then say "finished".
            if os.environ.get("RANK", "0") == "0":
                from duet.monitor.profile import ensure_profile

                ensure_profile(Path(finished.run_dir), device=device_used, progress=not quiet, log=log)
            raise
    else:
        cfg = _train_config(flags)
        from duet.system.netprobe import start_for_hub_weights

        start_for_hub_weights(cfg.model, cfg.weights)  # answers while torch and timm import (~4 s)
        from duet.tracking import sink_for
        from duet.training.loop import train as train_run

        result = train_run(cfg, progress=not quiet, log=log, tracker=sink_for(cfg.track, cfg.out))
        device_used, workers_used = cfg.device, (None if cfg.workers < 0 else cfg.workers)  # None: one per core
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 writes the profile and reports
    from duet.monitor.profile import ensure_profile

    ensure_profile(result.run_dir, device=device_used, workers=workers_used, progress=not quiet, log=log)
    _report_train(result, as_json)


def _trained_by_another_modality(flags: dict[str, Any], log: Log) -> bool:
    """Tables and text have their own trainers behind this command (``duet.cli.train_table``,
    ``duet.cli.train_text``); True when one ran."""
    from duet.cli.train_table import train_table_command, wants_table
    from duet.cli.train_text import train_text_command, wants_text

    if wants_text(flags):
        train_text_command(flags, log)
        return True
    if wants_table(flags):
        train_table_command(flags, log)
        return True
    return False


_CONFIG_KEYS = [
    "model",
    "weights",
    "epochs",
    "batch_size",
    "lr",
    "image_size",
    "val_split",
    "test_split",
    "seed",
    "device",
    "precision",
    "workers",
    "name",
    "data_backend",
    "cache_dir",
    "recipe",
    "ema",
    "patience",
    "track",
]


def _train_config(flags: dict[str, Any]) -> TrainConfig:
    """The run's TrainConfig from --config and the flags given (a flag left out is None: the file or the model decides)."""
    from duet.training.config import build_config

    if flags["data_dir"] is None and flags["config"] is None:
        raise ConfigError("missing DATA_DIR: pass a folder with one sub-folder per class (see `duet train --help`)")
    overrides = {key: flags[key] for key in _CONFIG_KEYS}
    overrides["data_dir"] = flags["data_dir"]
    overrides["out"] = flags["out_dir"]
    overrides["augment"] = {"hflip": flags["hflip"]} if flags["hflip"] is not None else None
    overrides["dp"] = {"epsilon": flags["dp_epsilon"]} if flags["dp_epsilon"] is not None else None
    return build_config(flags["config"], overrides)


def _report_train(result: TrainResult, as_json: bool) -> None:
    """The one-screen summary of a finished (or resumed) run, or its JSON."""
    from duet.tracking import summary_line

    summary = {
        "run": str(result.run_dir),
        "best_val_accuracy": result.best_val_accuracy,  # chose the epoch: optimistic
        "best_epoch": result.best_epoch,
        "test_accuracy": result.test.get("test_accuracy"),  # held out, measured once after training
        "test_images": result.num_test,
        "epochs": result.epochs,
        "train_images": result.num_train,
        "val_images": result.num_val,
        "train_images_per_s": round(result.train_images_per_s, 1),
        "seconds": round(result.seconds, 1),
        "load_failures": len(result.load_failures),
        "stopped_early": result.stopped_early,
        "events": result.events,
        "last_epoch": result.last,
        "precision": result.precision,
        "privacy": _privacy(result),
        "tracking": summary_line(result.run_dir),
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet train", show_header=False, box=None)
    t.add_row("run", str(result.run_dir))
    t.add_row("images", f"{result.num_train} train / {result.num_val} val / {result.num_test} test")
    t.add_row(
        "best val accuracy",
        f"{pct(result.best_val_accuracy)} (epoch {result.best_epoch}/{result.epochs}; "
        "validation chose the epoch, so this is optimistic)",
    )
    if result.test:
        t.add_row(
            "test accuracy",
            f"[bold]{pct(result.test['test_accuracy'])}[/] on {result.test['test_images']} "
            "held-out test images (measured once, after training)",
        )
    t.add_row("speed", f"{result.train_images_per_s:.0f} train images/s, {result.seconds:.1f}s total")
    if result.precision:
        t.add_row("precision", escape(result.precision["reason"]))
    p = _privacy(result)
    if p:
        t.add_row(
            "privacy",
            f"DP-SGD: ε = {p['epsilon']:.2f} spent (target {p['target_epsilon']:g}), δ = {p['delta']:.1e}; "
            f"noise multiplier {p['noise_multiplier']:.3f}, clip {p['max_grad_norm']:g}, {p['steps']} steps",
        )
    if result.load_failures:
        t.add_row("load failures", f"{len(result.load_failures)} (see run.json / metrics.jsonl)")
    for event in result.events:
        t.add_row("event", event)
    if result.stopped_early:
        t.add_row("early stop", f"no improvement for the patience window; best epoch {result.best_epoch}")
    tracking = summary_line(result.run_dir)
    if tracking:
        t.add_row("tracking", escape(tracking))
    t.add_row("next", f"duet evaluate {result.run_dir}")
    out.print(t)


_RESUME_KEEPS = {"resume", "epochs", "as_json", "quiet"}
_FLAG_NAMES = {"data_dir": "DATA_DIR", "out_dir": "--out", "hflip": "--hflip/--no-hflip", "ema": "--ema/--no-ema"}


def _flags_resume_cannot_change(params: dict[str, Any]) -> list[str]:
    """The options of `duet train` given besides --resume/--epochs (which --resume would otherwise ignore)."""
    return [
        _FLAG_NAMES.get(k, "--" + k.replace("_", "-"))
        for k, v in params.items()
        if k not in _RESUME_KEEPS and v is not None
    ]


def _train_command(data_dir: Path, lr: float, flags: dict[str, Any]) -> str:
    """The `duet train` line that trains with ``lr`` under the settings lr-find measured with."""
    parts = ["duet", "train", str(data_dir)]
    for flag, value in flags.items():
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join([*parts, "--lr", f"{lr:.1e}"])


def lr_find_cmd(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML settings (as for train)."),
    model: str | None = typer.Option(None, help="timm model name, or torchvision:NAME. " + train_default("model")),
    weights: str | None = typer.Option(None, help="none | imagenet | PATH. " + train_default("weights")),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step. " + train_default("batch_size")),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Model input side in pixels. " + train_default("image_size")
    ),
    steps: int = typer.Option(100, help="Batches in the sweep (stops early once the loss diverges)."),
    start: float = typer.Option(1e-7, help="First learning rate."),
    end: float = typer.Option(10.0, help="Last learning rate."),
    out_file: Path = typer.Option(Path("lr_find.png"), "--out", help="Plot to write (a .json of the curve beside it)."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda. " + train_default("device")),
    precision: str | None = typer.Option(None, help=PRECISION_HELP + train_default("precision")),
    workers: int | None = typer.Option(None, help="Data loading processes. " + train_default("workers")),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Learning-rate range test: a plot of loss vs LR and a suggested --lr."""
    if not (0 < start < end):
        raise ConfigError(f"`--start` must be positive and below `--end`. Received: --start={start} --end={end}")
    from duet.training.config import build_config
    from duet.training.lr_find import lr_find

    settings = {"model": model, "weights": weights, "batch_size": batch_size, "image_size": image_size}
    cfg = build_config(
        config, {"data_dir": data_dir, **settings, "device": device, "precision": precision, "workers": workers}
    )
    res = lr_find(cfg, start=start, end=end, steps=steps, out=out_file, progress=not quiet)
    # What the loss curve depends on travels with the suggestion (not --device/--workers).
    nxt = _train_command(
        data_dir, res.suggestion, {"--config": config, **{"--" + k.replace("_", "-"): v for k, v in settings.items()}}
    )
    if as_json:
        print_json(
            {
                "suggestion": res.suggestion,
                "plot": str(res.plot),
                "steps": len(res.lrs),
                "next": nxt,
                "precision": res.precision,
            }
        )
        return
    out.print(
        f"suggested learning rate: [bold]{res.suggestion:.2e}[/]  ({len(res.lrs)} steps; plot: {res.plot}; "
        f"precision {escape(res.precision)})"
    )
    out.print(f"next: {nxt}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("train", cls=DefaultsFromConfig)(train)
    app.command("lr-find", cls=DefaultsFromConfig)(lr_find_cmd)


def _privacy(result: TrainResult) -> dict[str, Any] | None:
    """run.json's DP-SGD record (None for a run without differential privacy)."""
    try:
        return json.loads((Path(result.run_dir) / "run.json").read_text(encoding="utf-8")).get("privacy")
    except (OSError, ValueError):
        return None
