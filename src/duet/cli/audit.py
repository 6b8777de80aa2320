"""`duet audit privacy RUN`: a membership-inference audit of a trained run (``duet.audit.privacy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import out, print_json

audit_app = typer.Typer(
    help="Audit a trained run: how much its weights reveal about its training images.",
    no_args_is_help=True,
)

_RUN = typer.Argument(..., help="A run folder made by `duet train` (DP-SGD or not).")
_SHADOW = typer.Option(
    0,
    "--shadow",
    help="Shadow models for the offline LiRA attack (trained with the run's config, DP-SGD included, on "
    "halves of its held-out images; 0 = the loss attack only, else at least 2). Each costs about a fifth "
    "of the run's training: 4 took 2 min for the digits demo run on 2 cores; DP shadows are several times slower.",
)
_SHADOW_EPOCHS = typer.Option(
    None, "--shadow-epochs", min=1, help="Epochs of each shadow model. \\[default: the run's epochs]"
)
_MAX_IMAGES = typer.Option(
    None,
    "--max-images",
    min=1,
    help="At most N members and N non-members (seeded subsample). \\[default: as many as the smaller set]",
)


@audit_app.command("privacy")
def privacy_cmd(
    run: Path = _RUN,
    shadow: int = _SHADOW,
    shadow_epochs: int | None = _SHADOW_EPOCHS,
    max_images: int | None = _MAX_IMAGES,
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample and the shadows' halves."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the report (privacy.json) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Membership inference on RUN: its training images (members) against its val/test images (non-members).

    Reports ROC AUC, TPR at 1 % FPR and the empirical ε lower bound of each attack
    (loss threshold; offline LiRA with --shadow K) in RUN/audit/privacy.json,
    privacy.md and roc.png."""
    from duet.audit.privacy import audit_privacy

    result = audit_privacy(
        run,
        shadow=shadow,
        shadow_epochs=shadow_epochs,
        max_images=max_images,
        seed=seed,
        device=device,
        batch_size=batch_size,
        progress=not quiet and not as_json,
    )
    if as_json:
        print_json({**result.report, "files": {k: str(v) for k, v in result.files.items()}})
        return
    _print_summary(result.report, result.files)


def _print_summary(report: dict[str, Any], files: dict[str, Path]) -> None:
    from duet.audit.report import attack_rows

    members, non = report["members"], report["non_members"]
    out.print(f"[bold]privacy audit[/] of {report['run']} ({report['model']})", highlight=False)
    out.print(
        f"members      {members['count']} training images (of {members['available']})\n"
        f"non-members  {non['count']} val/test images (of {non['available']}; validation chose the epoch)",
        highlight=False,
    )
    table = Table(show_edge=False, pad_edge=False)
    for column in ("attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "ε lower bound"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in attack_rows(report, short=True):
        table.add_row(*row)
    out.print(table)
    guarantee = report["guarantee"]
    if guarantee:
        out.print(f"guaranteed   ε = {guarantee['epsilon']} at δ = {guarantee['delta']:g} (DP-SGD)", highlight=False)
    else:
        out.print("guaranteed   none: the run trained without DP-SGD", highlight=False)
    out.print(f"δ = {report['delta']:g} ({report['delta_source']}); {report['epsilon_note']}", highlight=False)
    if report["shadow"].get("models"):
        s = report["shadow"]
        out.print(f"shadows      {s['models']} models, {s['epochs']} epochs, {s['seconds']} s; DP: {s['dp']}")
    out.print(f"report: {files['md']}  |  {files['json']}  |  {files['png']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `duet audit privacy`."""
    app.add_typer(audit_app, name="audit")
