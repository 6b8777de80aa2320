"""`duet scan`: a data folder checked without training (classes, split, every file skipped and why)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from duet.cli.common import DefaultsFromConfig, out, print_json, train_config_default, train_default


def scan(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class."),
    val_split: float | None = typer.Option(None, "--val-split", help="As for train. " + train_default("val_split")),
    test_split: float | None = typer.Option(
        None,
        "--test-split",
        help="As for train (only when every class has >= 20 images). " + train_default("test_split"),
    ),
    seed: int | None = typer.Option(None, help="Seed for the split. " + train_default("seed")),
    as_json: bool = typer.Option(False, "--json", help="Print the data report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Check a data folder without training: classes, split, and every file skipped and why."""
    from duet.data.scan import data_report, require_trainable
    from duet.data.scan import scan as scan_dir
    from duet.data.split import TEST_MIN_PER_CLASS, assign_splits

    val_split = train_config_default("val_split") if val_split is None else val_split
    test_split = train_config_default("test_split") if test_split is None else test_split
    seed = train_config_default("seed") if seed is None else seed
    manifest = assign_splits(
        scan_dir(data_dir, progress=not quiet), val_fraction=val_split, test_fraction=test_split, seed=seed
    )
    report = data_report(manifest)
    if as_json:
        print_json(report)
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


def register(app: typer.Typer) -> None:
    app.command("scan", cls=DefaultsFromConfig)(scan)
