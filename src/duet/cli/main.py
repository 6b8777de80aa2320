"""The `duet` command: parse, call a stage function, print. Nothing else lives here.

User mistakes (``DuetError``) print one line and exit non-zero; ``--debug``
shows the traceback. Progress bars and logs go to stderr, results to stdout
(JSON with ``--json``).
"""

from __future__ import annotations

import os
import shlex

from duet.system.process import tune_process

tune_process()  # before anything imports torch: see duet/system/process.py
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape  # messages may hold "[...]" (e.g. duet[train]): print them as text
from rich.table import Table

import duet
from duet.cli.common import pct, print_json, stderr_log
from duet.errors import ConfigError, DataError, DuetError
from duet.system.progress import console

if TYPE_CHECKING:
    from duet.train.loop import TrainResult

app = typer.Typer(
    name="duet",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state: dict[str, bool] = {"debug": False}
out = console.__class__()  # stdout console for results


def _version(value: bool) -> None:
    if value:
        print(f"duet {duet.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    """duet: a folder of labelled images -> a trained, evaluated, served model. Start with `duet demo`.

    \b
    DATA_DIR/
      cat/  001.jpg 002.png ...
      dog/  003.jpg ...
    (or DATA_DIR/train/<class>/..., DATA_DIR/val/<class>/... to fix the split yourself)
    """
    _state["debug"] = debug


_log = stderr_log
_print_json = print_json
_pct = pct


@app.command()
def train(
    data_dir: Path | None = typer.Argument(
        None,
        help="Folder with one sub-folder per class (or train/ and val/ sub-folders). Optional with --config or --resume.",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of settings; flags override it."),
    model: str | None = typer.Option(None, help="timm model name, or torchvision:NAME. \\[default: resnet18]"),
    weights: str | None = typer.Option(
        None, help="none | imagenet | PATH to a .safetensors/.pth state dict. \\[default: none]"
    ),
    epochs: int | None = typer.Option(None, help="Passes over the training images. \\[default: 10]"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step. \\[default: 64]"),
    lr: float | None = typer.Option(None, help="Peak learning rate (AdamW, warm-up then cosine). \\[default: 1e-3]"),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input side in pixels. \\[default: 224]"),
    val_split: float | None = typer.Option(
        None,
        "--val-split",
        help="Fraction of each class held out for validation, which picks the best epoch (ignored with train/ val/ folders). \\[default: 0.2]",
    ),
    test_split: float | None = typer.Option(
        None,
        "--test-split",
        help="Fraction of each class held out as a test split, evaluated once after training; only when every class has >= 20 images; 0 = none (ignored with train/ val/ folders). \\[default: 0.1]",
    ),
    seed: int | None = typer.Option(None, help="Seed for the split, init and augmentation. \\[default: 0]"),
    device: str | None = typer.Option(None, help="auto | cpu | cuda. \\[default: auto]"),
    precision: str | None = typer.Option(
        None,
        help="auto | fp32 | bf16. auto = bf16 autocast on CUDA and on CPUs with native bf16 (AMX or AVX-512-BF16), else fp32; weights stay fp32. \\[default: auto]",
    ),
    workers: int | None = typer.Option(None, help="Data loading processes; -1 = one per core (max 8). \\[default: -1]"),
    hflip: bool | None = typer.Option(None, "--hflip/--no-hflip", help="Random horizontal flips. \\[default: on]"),
    recipe: str | None = typer.Option(
        None,
        help="auto | finetune | scratch. finetune = head first, then all layers with layer-wise LRs; auto = finetune with pretrained weights. \\[default: auto]",
    ),
    ema: bool | None = typer.Option(
        None, "--ema/--no-ema", help="Keep an EMA of the weights; validate and save it. \\[default: off]"
    ),
    patience: int | None = typer.Option(
        None, help="Early stopping: epochs without val improvement (0 = off). \\[default: 0]"
    ),
    data_backend: str | None = typer.Option(
        None,
        "--data-backend",
        help="auto | cache | torch | tf. auto = decode once into a cache when it fits --cache-max-gb, else torch. \\[default: auto]",
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Where decoded images are cached. \\[default: $DUET_CACHE_DIR or ~/.cache/duet]"
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder that holds runs. \\[default: runs]"),
    name: str | None = typer.Option(None, help="Run folder name. \\[default: <date>-<time>-<model>]"),
    resume: Path | None = typer.Option(None, help="Continue an interrupted run folder from its last completed epoch."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines."),
) -> None:
    """Train a classifier on DATA_DIR and write a run folder (runs/<name>/).

    Example: duet train photos/ --model resnet18 --weights imagenet --epochs 5

    With --resume RUN only --epochs may be given: a new total that extends the run
    (a finished one too); the LR schedule is re-planned for it from that point.
    """
    ignored = _flags_resume_cannot_change(dict(locals()))
    from duet.train.config import build_config

    log = _log(quiet or as_json)
    if resume is not None:
        if ignored:
            raise ConfigError(
                f"--resume continues '{resume}' with the settings it was started with (its config.yaml); "
                f"only --epochs can change. Remove: {' '.join(ignored)}"
            )
        from duet.train.loop import resume as resume_run

        result = resume_run(resume, epochs=epochs, progress=not quiet, log=log)
    else:
        if data_dir is None and config is None:
            raise DuetError("missing DATA_DIR: pass a folder with one sub-folder per class (see `duet train --help`)")
        augment = {"hflip": hflip} if hflip is not None else None
        cfg = build_config(
            config,
            {
                "data_dir": data_dir,
                "model": model,
                "weights": weights,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "image_size": image_size,
                "val_split": val_split,
                "test_split": test_split,
                "seed": seed,
                "device": device,
                "precision": precision,
                "workers": workers,
                "out": out_dir,
                "name": name,
                "augment": augment,
                "data_backend": data_backend,
                "cache_dir": cache_dir,
                "recipe": recipe,
                "ema": ema,
                "patience": patience,
            },
        )
        from duet.system.netprobe import start_for_hub_weights

        start_for_hub_weights(cfg.model, cfg.weights)  # answers while torch and timm import (~4 s)
        from duet.train.loop import train as train_run

        result = train_run(cfg, progress=not quiet, log=log)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    _report_train(result, as_json)


def _report_train(result: TrainResult, as_json: bool) -> None:
    """The one-screen summary of a finished (or resumed) run, or its JSON."""
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
    }
    if as_json:
        _print_json(summary)
        return
    t = Table(title="duet train", show_header=False, box=None)
    t.add_row("run", str(result.run_dir))
    t.add_row("images", f"{result.num_train} train / {result.num_val} val / {result.num_test} test")
    t.add_row(
        "best val accuracy",
        f"{_pct(result.best_val_accuracy)} (epoch {result.best_epoch}/{result.epochs}; "
        "validation chose the epoch, so this is optimistic)",
    )
    if result.test:
        t.add_row(
            "test accuracy",
            f"[bold]{_pct(result.test['test_accuracy'])}[/] on {result.test['test_images']} "
            "held-out test images (measured once, after training)",
        )
    t.add_row("speed", f"{result.train_images_per_s:.0f} train images/s, {result.seconds:.1f}s total")
    if result.precision:
        t.add_row("precision", escape(result.precision["reason"]))
    if result.load_failures:
        t.add_row("load failures", f"{len(result.load_failures)} (see run.json / metrics.jsonl)")
    for event in result.events:
        t.add_row("event", event)
    if result.stopped_early:
        t.add_row("early stop", f"no improvement for the patience window; best epoch {result.best_epoch}")
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


@app.command("lr-find")
def lr_find_cmd(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML settings (as for train)."),
    model: str | None = typer.Option(None, help="timm model name, or torchvision:NAME. \\[default: resnet18]"),
    weights: str | None = typer.Option(None, help="none | imagenet | PATH. \\[default: none]"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    image_size: int | None = typer.Option(None, "--image-size"),
    steps: int = typer.Option(100, help="Batches in the sweep (stops early once the loss diverges)."),
    start: float = typer.Option(1e-7, help="First learning rate."),
    end: float = typer.Option(10.0, help="Last learning rate."),
    out_file: Path = typer.Option(Path("lr_find.png"), "--out", help="Plot to write (a .json of the curve beside it)."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None,
        help="auto | fp32 | bf16. auto = bf16 autocast on CUDA and on CPUs with native bf16 (AMX or AVX-512-BF16), else fp32; weights stay fp32. \\[default: auto]",
    ),
    workers: int | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Learning-rate range test: a plot of loss vs LR and a suggested --lr."""
    from duet.train.config import build_config
    from duet.train.lr_find import lr_find

    if not (0 < start < end):
        raise DuetError(f"`--start` must be positive and below `--end`. Received: --start={start} --end={end}")
    cfg = build_config(
        config,
        {
            "data_dir": data_dir,
            "model": model,
            "weights": weights,
            "batch_size": batch_size,
            "image_size": image_size,
            "device": device,
            "precision": precision,
            "workers": workers,
        },
    )
    res = lr_find(cfg, start=start, end=end, steps=steps, out=out_file, progress=not quiet)
    # What the loss curve depends on travels with the suggestion (not --device/--workers).
    nxt = _train_command(
        data_dir,
        res.suggestion,
        {
            "--config": config,
            "--model": model,
            "--weights": weights,
            "--batch-size": batch_size,
            "--image-size": image_size,
        },
    )
    if as_json:
        _print_json(
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


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run folder made by `duet train`."),
    data: Path | None = typer.Option(
        None, "--data", help="Evaluate on this labelled folder instead of the run's held-out split."
    ),
    split: str | None = typer.Option(None, help="train | val | test. \\[default: test if the run has one, else val]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Accuracy, per-class precision/recall/F1 and a confusion matrix, written to RUN/eval/."""
    from duet.evaluation.evaluate import evaluate as evaluate_run
    from duet.evaluation.report import format_summary

    if split is not None and split not in ("train", "val", "test"):
        raise DuetError(f"`--split` must be one of train, val, test. Received: --split={split}")
    res = evaluate_run(
        run, data_dir=data, split=split, device=device, batch_size=batch_size, progress=not quiet, precision=precision
    )
    if as_json:
        _print_json(
            {
                "split": res.split,
                "split_means": res.split_meaning,
                "data": str(res.data_dir),
                "unreadable": res.num_failed,
                "files": {k: str(v) for k, v in res.files.items()},
                "metrics": res.metrics,
                "precision": res.precision,
            }
        )
        return
    out.print(f"[bold]evaluation[/] of {run} on {res.split} ({res.metrics['num_images']} images from {res.data_dir})")
    out.print(f"split      {res.split_meaning}", highlight=False)
    out.print(f"precision  {res.precision}", highlight=False, markup=False)
    out.print(format_summary(res.metrics), highlight=False)
    if res.num_failed:
        out.print(f"{res.num_failed} images could not be read (listed in report.json)")
    out.print(f"report: {res.files['md']}  |  {res.files['json']}  |  {res.files['png']}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run folder made by `duet train`."),
    files: list[Path] = typer.Argument(
        ..., help="Image files, or folders (searched recursively for images), to classify."
    ),
    top: int = typer.Option(3, "--top-k", "-k", min=1, help="How many labels to show per file."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
) -> None:
    """Top-k labels with probabilities for each FILE (a folder: every image under it, sorted). Exits 1 if any file cannot be read."""
    from duet.artifacts.run_dir import load_run
    from duet.data.imageio import DEFAULT_MAX_PIXELS, DecodeError
    from duet.evaluation.inference import load_model, predict_file, top_k
    from duet.system.device import resolve_device
    from duet.train.precision import recorded_or

    files = _expand_folders(files)
    info = load_run(run)
    dev = resolve_device(device)
    model = load_model(info, dev)
    chosen = recorded_or(precision, info.precision, dev)
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            probs = predict_file(model, info, f, dev, DEFAULT_MAX_PIXELS, precision=chosen)
            results.append({"file": str(f), "top": top_k(probs, info.labels, top)})
        except DecodeError as e:
            results.append({"file": str(f), "error": e.reason})
        except OSError as e:
            results.append({"file": str(f), "error": e.strerror or str(e)})
    if as_json:
        _print_json(results)
    else:
        for r in results:
            if "error" in r:
                out.print(f"{r['file']}: [red]error[/]: {r['error']}", highlight=False)
            else:
                best = "  ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"])
                out.print(f"{r['file']}: {best}", highlight=False)
    if any("error" in r for r in results):
        raise typer.Exit(1)


def _expand_folders(paths: list[Path]) -> list[Path]:
    """Files stay as given; a folder becomes the images under it (recursively,
    by extension, hidden entries skipped, sorted). A folder without any is an error."""
    from duet.data.imageio import IMAGE_EXTENSIONS

    files: list[Path] = []
    for p in paths:
        if not p.is_dir():
            files.append(p)
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS
            and f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not found:
            raise DataError(
                f"folder '{p}' holds no images (searched it recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); pass image files or a folder of images"
            )
        files += found
    return files


@app.command()
def scan(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class."),
    val_split: float = typer.Option(0.2, "--val-split", help="As for train."),
    test_split: float = typer.Option(
        0.1, "--test-split", help="As for train (only when every class has >= 20 images)."
    ),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print the data report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Check a data folder without training: classes, split, and every file skipped and why."""
    from duet.data.scan import data_report, require_trainable
    from duet.data.scan import scan as scan_dir
    from duet.data.split import TEST_MIN_PER_CLASS, assign_splits

    manifest = assign_splits(
        scan_dir(data_dir, progress=not quiet), val_fraction=val_split, test_fraction=test_split, seed=seed
    )
    report = data_report(manifest)
    if as_json:
        _print_json(report)
    else:
        t = Table(title=f"{data_dir} ({report['layout']} layout)")
        for col in ("class", "train", "val", "test", "total"):
            t.add_column(col, justify="right" if col != "class" else "left")
        for label, c in report["counts"].items():
            t.add_row(label, *(str(c.get(k, 0)) for k in ("train", "val", "test", "total")))
        out.print(t)
        if not report["splits"]["test"] and test_split > 0 and report["layout"] == "classes":
            out.print(f"no test split: it needs >= {TEST_MIN_PER_CLASS} images in every class")
        out.print(
            f"{report['num_usable']} usable of {report['num_files']} files; "
            f"{len(report['skipped'])} skipped, {len(report['duplicates'])} duplicates, "
            f"{len(report['conflicts'])} conflicts"
        )
        for s in report["skipped"][:20]:
            out.print(f"  skipped {s['path']}: {s['reason']}", highlight=False, markup=False)
        if len(report["skipped"]) > 20:
            out.print(f"  ... and {len(report['skipped']) - 20} more (use --json)")
    require_trainable(manifest)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), "--dir", help="Working folder for the data and runs."),
    epochs: int | None = typer.Option(None, help="Override the demo's epoch count."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 (as for train)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run the whole pipeline on bundled real data (1,797 handwritten digits): scan, split,
    train, evaluate, predict. About 70 s on 2 CPU cores (README: measured)."""
    from duet.api.demo import run_demo

    res = run_demo(
        workdir, epochs=epochs, device=device, precision=precision, progress=not quiet, log=_log(quiet or as_json)
    )
    m = res.evaluation.metrics
    summary = {
        "data": str(res.data_dir),
        "run": str(res.train.run_dir),
        "accuracy": m["accuracy"],
        "accuracy_split": res.evaluation.split,
        "macro_f1": m["macro"]["f1"],
        "train_images_per_s": round(res.train.train_images_per_s, 1),
        "precision": res.train.precision,
        "seconds": round(res.seconds, 1),
        "report": str(res.evaluation.files["md"]),
        "predictions": res.predictions,
    }
    if as_json:
        _print_json(summary)
        return
    t = Table(title="duet demo: handwritten digits", show_header=False, box=None)
    t.add_row(
        "data",
        f"{res.data_dir}  ({res.train.num_train} train / {res.train.num_val} val / "
        f"{res.train.num_test} test images, 10 classes)",
    )
    t.add_row(
        "model",
        f"resnet18 from scratch, {res.train.epochs} epochs, {res.train.train_images_per_s:.0f} img/s, "
        f"{escape(res.train.precision.get('reason', ''))}",
    )
    t.add_row(
        f"{res.evaluation.split} accuracy",
        f"[bold]{_pct(m['accuracy'])}[/]  (macro F1 {m['macro']['f1']:.4f}; {res.evaluation.split_meaning})",
    )
    t.add_row("wall time", f"{res.seconds:.0f}s")
    t.add_row("report", str(res.evaluation.files["md"]))
    for p in res.predictions:
        best = p["top"][0]
        t.add_row(
            f"predict {Path(p['file']).parent.name}/{Path(p['file']).name}",
            f"{best['label']} ({100 * best['probability']:.1f}%)",
        )
    t.add_row("try", f"duet predict {res.train.run_dir} {res.predictions[0]['file']}")
    out.print(t)


def _register_stage_commands() -> None:
    """Commands of later stages live in their own modules (each registers itself
    on ``app`` with lazy imports, so `duet --help` stays fast)."""
    from duet.cli import bench, monitor, serve

    for module in (serve, bench, monitor):
        module.register(app)


_register_stage_commands()


def main() -> None:
    try:
        # standalone_mode=False lets us format DuetError ourselves; click then
        # returns typer.Exit codes instead of exiting, so pass them on.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except DuetError as e:
        if _state["debug"]:
            traceback.print_exc()
        console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(1)
    except ModuleNotFoundError as e:  # a lean install (duet[serve]) has no torch: say which extra to add
        from duet.system.extras import missing_extra

        error = missing_extra(e)
        if error is None or _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(error.exit_code)
    except Exception as e:
        # Usage errors (bad flag values...): typer vendors its own click, so
        # recognise them by shape rather than by class.
        show = getattr(e, "show", None)
        if callable(show) and isinstance(getattr(e, "exit_code", None), int):
            show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
