"""`duet evaluate` and `duet predict`: a trained run measured on labelled images, or asked about new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from duet.cli.common import out, print_json
from duet.errors import ConfigError, DataError

_MODEL = typer.Argument(
    ...,
    help="A run folder made by `duet train` (PyTorch), its export folder (ONNX), or an exported file: model.onnx, model.int8.onnx, model*.tflite, savedmodel/<name>/1. The runtime follows the file.",
)
_FORMAT = typer.Option(
    None,
    "--format",
    help="Run this exported format of the run's (or model folder's) export instead: onnx | onnx-int8 | savedmodel | tflite | tflite-fp16 | tflite-int8.",
)


def evaluate(
    run: Path = _MODEL,
    data: Path | None = typer.Option(
        None, "--data", help="Evaluate on this labelled folder instead of the run's held-out split."
    ),
    split: str | None = typer.Option(None, help="train | val | test. \\[default: test if the run has one, else val]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    fmt: str | None = _FORMAT,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Accuracy, per-class precision/recall/F1 and a confusion matrix, written to RUN/eval/ (an exported format: RUN/eval/FORMAT/)."""
    if split is not None and split not in ("train", "val", "test"):
        raise ConfigError(f"`--split` must be one of train, val, test. Received: --split={split}")
    from duet.api.exported import evaluate as evaluate_target
    from duet.api.exported import resolve_target
    from duet.evaluation.report import format_summary

    res = evaluate_target(
        resolve_target(run, fmt),
        data_dir=data,
        split=split,
        device=device,
        batch_size=batch_size,
        progress=not quiet,
        precision=precision,
    )
    if as_json:
        print_json(
            {
                "split": res.split,
                "split_means": res.split_meaning,
                "data": str(res.data_dir),
                "unreadable": res.num_failed,
                "files": {k: str(v) for k, v in res.files.items()},
                "metrics": res.metrics,
                "precision": res.precision,
                "runtime": res.runtime,
            }
        )
        return
    out.print(f"[bold]evaluation[/] of {run} on {res.split} ({res.metrics['num_images']} images from {res.data_dir})")
    out.print(f"split      {res.split_meaning}", highlight=False)
    out.print(f"runtime    {res.runtime}", highlight=False, markup=False)
    out.print(f"precision  {res.precision}", highlight=False, markup=False)
    out.print(format_summary(res.metrics), highlight=False)
    if res.num_failed:
        out.print(f"{res.num_failed} images could not be read (listed in report.json)")
    out.print(f"report: {res.files['md']}  |  {res.files['json']}  |  {res.files['png']}")


def predict(
    run: Path = _MODEL,
    files: list[Path] = typer.Argument(
        ..., help="Image files, or folders (searched recursively for images), to classify."
    ),
    top: int = typer.Option(3, "--top-k", "-k", min=1, help="How many labels to show per file."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    fmt: str | None = _FORMAT,
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON on stdout."),
) -> None:
    """Top-k labels with probabilities for each FILE (a folder: every image under it, sorted). Exits 3 if any file cannot be read (the others are still shown)."""
    from duet.api.exported import file_predictor, resolve_target
    from duet.data.imageio import DecodeError
    from duet.evaluation.inference import top_k

    target = resolve_target(run, fmt)
    files = _expand_folders(files)
    model = file_predictor(target, device=device, precision=precision)
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            probs = model.probabilities(f)
            results.append({"file": str(f), "top": top_k(probs, model.labels, top), "runtime": model.runtime})
        except DecodeError as e:
            results.append({"file": str(f), "error": e.reason})
        except OSError as e:
            results.append({"file": str(f), "error": e.strerror or str(e)})
    if as_json:
        print_json(results)
    else:
        out.print(f"runtime: {model.runtime}", highlight=False, markup=False)
        for r in results:
            if "error" in r:
                out.print(f"{r['file']}: [red]error[/]: {r['error']}", highlight=False)
            else:
                best = "  ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"])
                out.print(f"{r['file']}: {best}", highlight=False)
    failed = sum("error" in r for r in results)
    if failed:
        raise DataError(
            f"{failed} of {len(results)} files could not be read (each is listed with its reason); "
            "pass readable image files"
        )


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


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
