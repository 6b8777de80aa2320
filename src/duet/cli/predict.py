"""`duet predict`: top-k labels for new images (files or folders), with any exported format.

The batching, streaming, resuming and sharding live in ``duet.api.batch_predict``;
this module parses the flags and prints."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from duet.cli.common import FORMAT_OPTION, MODEL_ARG, stderr_log

if TYPE_CHECKING:
    from rich.progress import Progress

    from duet.api.batch_predict import Item, Result

PROGRESS_FROM = 20  # files: fewer get no progress bar
OUTPUT_OPTION = typer.Option(
    None,
    "--output",
    "-o",
    help="Append JSON lines to this file (implies --json); an interrupted run given the same file "
    "skips the files already in it.",
)
SHARD_OPTION = typer.Option(
    None,
    "--shard",
    help="I/N: only job I's share of N (0-based), split by a hash of each file's path under its folder "
    "(docs/batch_inference.md).",
)


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
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per file on stdout (JSON lines), as it is done."
    ),
    output: Path | None = OUTPUT_OPTION,
    shard: str | None = SHARD_OPTION,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr."),
) -> None:
    """Top-k labels with probabilities for each FILE (a folder: every image under it, sorted), in
    batches. Exits 3 if any file cannot be read (the others are still answered)."""
    from duet.api import batch_predict as bp
    from duet.api.exported import resolve_target
    from duet.errors import DataError

    chosen = bp.parse_shard(shard) if shard is not None else None
    target = resolve_target(run, fmt)
    items = bp.list_files(files, chosen)
    done = bp.read_done(output) if output is not None else {}
    model = bp.batch_model(target, device=device, precision=precision)
    stdout = sys.stdout  # taken before a progress bar may redirect sys.stdout to stderr
    with ExitStack() as stack:
        if output is not None:
            appender = bp.JsonlAppender(output)
            stack.callback(appender.close)
            emit: Callable[[list[Result]], None] = appender
        else:
            emit = _json_writer(stdout) if as_json else _text_writer(stdout, model.runtime)
        # Readable lines on a terminal are their own progress (a bar would be drawn through them).
        lines_on_tty = output is None and not as_json and stdout.isatty()
        bar = stack.enter_context(_progress(not quiet and not lines_on_tty and len(items) >= PROGRESS_FROM))
        task = bar.add_task("predict", total=len(items), completed=len(items) - _todo(items, done), info="")
        summary = bp.predict_files(
            model, items, emit, top=top, done=done, batch_size=batch_size, on_batch=lambda n: bar.advance(task, n)
        )
    if output is not None:
        stderr_log(quiet)(
            f"{output}: {summary.predicted} results appended, {summary.skipped} files already there "
            f"({summary.total} files{'' if chosen is None else f' in shard {shard}'})"
        )
    if summary.failed:
        where = f" in '{output}'" if output is not None else ""
        raise DataError(
            f"{summary.failed} of {summary.total} files could not be read (each is listed with its reason{where}); "
            "pass readable image files"
        )


def _todo(items: list[Item], done: dict[str, Result]) -> int:
    return sum(str(i.path) not in done for i in items)


def _progress(enabled: bool) -> Progress:
    from duet.system.progress import make_progress

    return make_progress(enabled)


def _json_writer(stream: TextIO) -> Callable[[list[Result]], None]:
    from duet.api.batch_predict import json_line

    def emit(results: list[Result]) -> None:
        stream.write("".join(json_line(r) for r in results))
        stream.flush()

    return emit


def _text_writer(stream: TextIO, runtime: str) -> Callable[[list[Result]], None]:
    """One line per file (errors in red), after a line naming the runtime."""
    console = Console(file=stream, highlight=False, soft_wrap=True)
    console.print(f"runtime: {runtime}", markup=False)

    def emit(results: list[Result]) -> None:
        for r in results:
            if "error" in r:
                console.print(f"{escape(r['file'])}: [red]error[/]: {escape(r['error'])}")
            else:
                best = "  ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"])
                console.print(f"{r['file']}: {best}", markup=False)

    return emit


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
