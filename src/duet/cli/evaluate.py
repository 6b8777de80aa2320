"""`duet evaluate`: a trained run (or an exported format of it) measured on labelled images."""

from __future__ import annotations

from pathlib import Path

import typer

from duet.cli.common import FORMAT_OPTION, MODEL_ARG, out, print_json
from duet.errors import ConfigError


def evaluate(
    run: Path = MODEL_ARG,
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Evaluate on this labelled folder (a tabular run: a labelled table file) instead of the run's held-out split.",
    ),
    split: str | None = typer.Option(None, help="train | val | test. \\[default: test if the run has one, else val]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    fmt: str | None = FORMAT_OPTION,
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
    from duet.tracking.stages import log_evaluation

    log_evaluation(res.files, res.metrics, res.split)  # into the run's MLflow run, when it was tracked
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
                **({"baseline": res.baseline} if res.baseline is not None else {}),
            }
        )
        return
    out.print(
        f"[bold]evaluation[/] of {run} on {res.split} ({res.metrics['num_images']} {res.unit} from {res.data_dir})"
    )
    out.print(f"split      {res.split_meaning}", highlight=False)
    out.print(f"runtime    {res.runtime}", highlight=False, markup=False)
    out.print(f"precision  {res.precision}", highlight=False, markup=False)
    out.print(format_summary(res.metrics), highlight=False)
    if res.baseline is not None and res.baseline["accuracy"] is not None:
        out.print(f"baseline   {res.baseline['model']}: accuracy {res.baseline['accuracy']:.2%}", highlight=False)
    if res.num_failed:
        what = (
            "rows were skipped (see `duet scan`)"
            if res.unit == "rows"
            else "images could not be read (listed in report.json)"
        )
        out.print(f"{res.num_failed} {what}")
    out.print(f"report: {res.files['md']}  |  {res.files['json']}  |  {res.files['png']}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
