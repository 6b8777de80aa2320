"""`duet scan`: a data folder (or a table file) checked without training (classes, split or
columns, every file or row skipped and why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import DefaultsFromConfig, out, print_json, train_config_default, train_default
from duet.errors import ConfigError


def scan(
    data_dir: Path = typer.Argument(
        ..., help="Folder with one sub-folder per class, or a table file (.csv, .tsv, .parquet) with --target."
    ),
    target: str | None = typer.Option(
        None, "--target", help="A table file's label column (required for a .csv/.tsv/.parquet file)."
    ),
    text_column: str | None = typer.Option(
        None, "--text-column", help="A table file's text column: scan it as a text corpus (with --target)."
    ),
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
    """Check a data folder without training: classes, split, and every file skipped and why.

    A table file (.csv, .tsv, .parquet) is checked per column instead: inferred kind,
    missing rate, cardinality, what will be done; warnings for ID-like and constant
    columns, leakage, duplicates and conflicting labels; every row skipped and why
    (--val-split, --test-split and --seed apply to folders only)."""
    from duet.data.tabular.read import is_table_file
    from duet.data.text.read import is_text_folder

    if text_column is not None or (target is None and is_text_folder(data_dir)):
        _scan_text(data_dir, text_column, target, as_json)
        return
    if is_table_file(data_dir):
        if target is None:
            raise ConfigError(f"--target is required for a table file: duet scan {data_dir} --target <label column>")
        _scan_table(data_dir, target, as_json)
        return
    if target is not None:
        raise ConfigError(
            "--target is for a table file (.csv, .tsv, .parquet); a data folder's classes are its folders"
        )
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


SHOWN_COLUMNS = 40
SHOWN_ROWS = 20


def _scan_table(path: Path, target: str, as_json: bool) -> None:
    """`duet scan data.csv --target label`: the table report, then an error if it cannot be trained on."""
    from duet.data.tabular.checks import require_trainable_table, table_report
    from duet.data.tabular.read import read_table

    data = read_table(path, target)
    report = table_report(data)
    if as_json:
        print_json(report)
    else:
        _print_table_report(report)
    require_trainable_table(data)


def _print_table_report(report: dict[str, Any]) -> None:
    from duet.data.tabular.checks import counted

    counts = ", ".join(f"{k}: {v}" for k, v in report["class_counts"].items())
    t = Table(title=f"{report['source']} (target '{report['target']}': {counts})")
    t.add_column("column")
    t.add_column("kind")
    t.add_column("missing", justify="right")
    t.add_column("distinct", justify="right")
    t.add_column("what will be done", overflow="fold")
    for c in report["columns"][:SHOWN_COLUMNS]:
        t.add_row(c["name"], c["kind"], f"{100 * c['missing_rate']:.1f}%", str(c["distinct"]), c["action"])
    out.print(t)
    more = len(report["columns"]) - SHOWN_COLUMNS
    if more > 0:
        out.print(f"... and {more} more columns (use --json)")
    unit = report["unit"]
    out.print(
        f"{report['num_rows']} usable of {counted(report['num_records'], 'row')}, "
        f"{counted(report['num_features'], 'feature column')}; "
        f"{counted(len(report['skipped']), unit)} skipped, {report['duplicates']['count']} duplicates, "
        f"{report['conflicts']['count']} conflicts"
    )
    _print_capped([f"warning: {w['message']}" for w in report["warnings"]])
    _print_capped([f"  skipped {unit} {s['line']}: {s['reason']}" for s in report["skipped"]])
    dups, conflicts = report["duplicates"], report["conflicts"]
    _print_capped([f"  {unit} {d['line']} repeats {unit} {d['same_as']}" for d in dups["shown"]], dups["count"])
    _print_capped(
        [
            f"  {unit}s {', '.join(map(str, c['lines']))}: same features, targets {', '.join(c['labels'])}"
            for c in conflicts["shown"]
        ],
        conflicts["count"],
    )


def _print_capped(lines: list[str], total: int | None = None) -> None:
    """The first SHOWN_ROWS of ``lines``, then how many more there are (``total``: the whole count)."""
    total = len(lines) if total is None else total
    for line in lines[:SHOWN_ROWS]:
        out.print(line, highlight=False, markup=False)
    if total > SHOWN_ROWS:
        out.print(f"  ... and {total - SHOWN_ROWS} more (use --json)")


def _scan_text(path: Path, text_column: str | None, target: str | None, as_json: bool) -> None:
    """`duet scan corpus/` (class folders of .txt files) or `duet scan reviews.csv --text-column review --target label`."""
    from duet.data.text.checks import require_trainable_corpus, text_report
    from duet.data.text.read import read_corpus

    corpus = read_corpus(path, text_column=text_column, target=target)
    report = text_report(corpus)
    if as_json:
        print_json(report)
    else:
        _print_text_report(report)
    require_trainable_corpus(corpus)


def _print_text_report(report: dict[str, Any]) -> None:
    t = Table(title=f"{report['source']} (text, {report['layout']} layout)")
    for col in ("class", "documents", "chars p50/p95", "tokens p50/p95/max", "empty"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for label, c in report["per_class"].items():
        chars, toks = c["chars"], c["tokens"]
        t.add_row(
            label,
            str(c["count"]),
            f"{chars['p50']:.0f}/{chars['p95']:.0f}",
            f"{toks['p50']:.0f}/{toks['p95']:.0f}/{toks['p100']:.0f}",
            str(c["empty"]),
        )
    out.print(t)
    dups = report["duplicates"]
    out.print(
        f"{report['num_documents']} documents in {len(report['classes'])} classes; "
        f"{len(report['skipped'])} skipped, {report['replaced']['count']} decoded with replacement, "
        f"{report['empty']['count']} empty, {dups['exact']['count']} exact and {dups['normalised']['count']} "
        f"normalised duplicates, {report['conflicts']['count']} conflicts"
    )
    _print_capped([f"warning: {w}" for w in report["warnings"]])
    _print_capped([f"  skipped {s['origin']}: {s['reason']}" for s in report["skipped"]])
    replaced = report["replaced"]
    _print_capped(
        [f"  {r['origin']}: {r['bytes']} bytes not UTF-8, replaced by U+FFFD" for r in replaced["shown"]],
        replaced["count"],
    )
    for kind in ("exact", "normalised"):
        shown = dups[kind]["shown"]
        _print_capped([f"  {d['origin']} repeats {d['same_as']} ({kind})" for d in shown], dups[kind]["count"])
    conflicts = report["conflicts"]
    _print_capped(
        [f"  {', '.join(c['origins'])}: one text, labels {', '.join(c['labels'])}" for c in conflicts["shown"]],
        conflicts["count"],
    )


def register(app: typer.Typer) -> None:
    app.command("scan", cls=DefaultsFromConfig)(scan)
