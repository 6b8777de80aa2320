"""`duet predict`: top-k labels for new images (files or folders), with any exported format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from duet.cli.common import FORMAT_OPTION, MODEL_ARG, out, print_json
from duet.errors import DataError


def predict(
    run: Path = MODEL_ARG,
    files: list[Path] = typer.Argument(
        ..., help="Image files, or folders (searched recursively for images), to classify."
    ),
    top: int = typer.Option(3, "--top-k", "-k", min=1, help="How many labels to show per file."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    fmt: str | None = FORMAT_OPTION,
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
    app.command("predict")(predict)
