"""`duet drift | profile`: is new data still like the data a run was validated on?

Thin: parse, call the stage function, print. Heavy imports happen inside the
commands, so `duet --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import DefaultsFromConfig, drift_default, out, pct, print_json, stderr_log
from duet.errors import ConfigError, DriftGateFailed


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _drift_settings(
    alpha: float | None, embedding_test: str | None, permutations: int | None, min_images: int | None
) -> Any:
    """``DriftSettings`` with the options given; the others keep the dataclass's defaults (stated once)."""
    from duet.monitor.drift import DriftSettings

    given: dict[str, Any] = {
        "alpha": alpha,
        "embedding_test": embedding_test,
        "permutations": permutations,
        "min_images": min_images,
    }
    return DriftSettings(**{k: v for k, v in given.items() if v is not None})


VERDICT_STYLE = {
    "drift": ("red", "DRIFT"),
    "no_drift": ("green", "NO DRIFT"),
    "insufficient": ("yellow", "NOT ENOUGH DATA"),
}


def _print_verdict(result: Any) -> None:
    colour, word = VERDICT_STYLE[result.status]
    out.print(f"[bold {colour}]{word}[/] {result.sentence}", highlight=False)
    if result.accuracy is not None and result.accuracy["accuracy"] is not None:
        a = result.accuracy
        out.print(
            f"estimated accuracy without labels: {a['accuracy']:.1%} (95% interval {a['low']:.1%}–{a['high']:.1%}, "
            f"{a['n']} images) vs {a['reference_accuracy']:.1%} on the labelled reference ({a['method']})",
            highlight=False,
        )
        if a.get("caution"):
            out.print(f"[yellow]caution:[/] {a['caution']}", highlight=False)
    t = Table(show_header=True, box=None, pad_edge=False)
    for col in ("detector", "statistic", "p-value", "threshold", "drift", "finding"):
        t.add_column(col, overflow="fold")
    for d in result.detectors:
        stat = "–" if d.statistic is None else f"{d.statistic_name} {d.statistic:.4g}"
        if d.statistic_name == "MMD²" and d.statistic is not None and d.statistic < 0:
            stat = "MMD² ≈ 0"  # the unbiased estimate dips below 0 on alike samples; --json keeps it raw
        flag = "skipped" if d.skipped else ("[bold red]yes[/]" if d.drift else "no")
        t.add_row(
            d.detector, stat, _p(d.p_value), "–" if d.threshold is None else f"{d.threshold:.4g}", flag, d.sentence
        )
    out.print(t)


# --------------------------------------------------------------------------- drift / profile


_DRIFT_CMD_RUN = typer.Argument(
    ..., help="A run folder made by `duet train` (its profile is written first if missing)."
)
_DRIFT_CMD_MAX_IMAGES = typer.Option(
    1000, "--max-images", help="Compare a seeded random sample of at most this many images."
)
_DRIFT_CMD_ALPHA = typer.Option(
    None,
    help="Bound on the verdict's false-alarm rate when nothing changed (measured: ~3%). " + drift_default("alpha"),
)
_DRIFT_CMD_EMBEDDING_TEST = typer.Option(
    None,
    "--embedding-test",
    help="mmd (kernel MMD, permutation test) | ks (KS per PCA component, Bonferroni). "
    + drift_default("embedding_test"),
)
_DRIFT_CMD_PERMUTATIONS = typer.Option(None, help="Permutations of the MMD test. " + drift_default("permutations"))
_DRIFT_CMD_MIN_IMAGES = typer.Option(
    None, "--min-images", help="Detectors do not run on fewer images. " + drift_default("min_images")
)
_DRIFT_CMD_FAIL_ON_DRIFT = typer.Option(
    False,
    "--fail-on-drift",
    help="Exit with status 1 when drift is detected, or when there are too few images to decide (for scripts and CI; see the exit codes in README.md).",
)
_DRIFT_CMD_ALLOW_INSUFFICIENT = typer.Option(
    False, "--allow-insufficient", help="With --fail-on-drift: exit 0 when there are too few images to decide."
)


def _other_modality_drift(run: Path) -> Any:
    """``_drift_table`` for a tabular run, ``_drift_text`` for a text run, None for an image run."""
    from duet.training.tabular_run import is_tabular_run
    from duet.training.text_run import is_text_run

    if is_tabular_run(run):
        return _drift_table
    return _drift_text if is_text_run(run) else None


def drift_cmd(
    run: Path = _DRIFT_CMD_RUN,
    data: Path = typer.Option(
        ...,
        "--data",
        help="Folder of new images, any layout; a tabular run: a CSV/Parquet file of new rows; a text run: a folder "
        "of .txt files or a CSV/Parquet file with the text column (labels are not needed).",
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Report folder. \\[default: RUN/drift/<folder name>]"),
    max_images: int = _DRIFT_CMD_MAX_IMAGES,
    alpha: float | None = _DRIFT_CMD_ALPHA,
    embedding_test: str | None = _DRIFT_CMD_EMBEDDING_TEST,
    permutations: int | None = _DRIFT_CMD_PERMUTATIONS,
    min_images: int | None = _DRIFT_CMD_MIN_IMAGES,
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int | None = typer.Option(None, help="Image loading processes. \\[default: one per core, max 8]"),
    fail_on_drift: bool = _DRIFT_CMD_FAIL_ON_DRIFT,
    allow_insufficient: bool = _DRIFT_CMD_ALLOW_INSUFFICIENT,
    as_json: bool = typer.Option(False, "--json", help="Print the verdict and every detector as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines."),
) -> None:
    """Is a folder of new images still like the data RUN was validated on?

    Five detectors compare the images with RUN's reference profile: embeddings (MMD),
    predicted classes (chi-square, PSI), top-1 confidence (KS), image statistics
    (size, aspect ratio, brightness, contrast, saturation; KS) and the share of
    individually foreign images (outlier rate). The verdict's false-alarm rate on
    unchanged data is at most --alpha. Fewer images than --min-images give the
    verdict "not enough data" (JSON: "status": "insufficient", "drift": null). Writes report.html
    (plots, per-class shift, the most atypical images) and report.json.

    A tabular run: each column and the model's outputs, tested and Holm-corrected
    (docs/tabular.md, "Monitor"); --data is a CSV/Parquet file; writes report.html and report.json.

    A text run: OOV rate, document length, predicted class, confidence and the
    pooled features (MMD), Holm-corrected (docs/text.md, "Monitor"); writes report.json.

    Example: duet drift runs/digits --data incoming/2024-06-01/
    """
    other = _other_modality_drift(run)  # a tabular or text run: its own checks, the same gate
    if other is not None:
        options = (alpha, min_images, embedding_test, permutations)
        other(run, data, out_dir, max_images, options, (fail_on_drift, allow_insufficient), as_json, quiet)
        return
    from duet.monitor.check import drift_check

    settings = _drift_settings(alpha, embedding_test, permutations, min_images)
    res = drift_check(
        run,
        data,
        out_dir=out_dir,
        max_images=max_images,
        settings=settings,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=not quiet,
        log=stderr_log(quiet or as_json),
    )
    if as_json:
        print_json(
            {
                **res.result.to_dict(),
                "images": len(res.paths),
                "images_in_folder": res.total_images,
                "unreadable": res.failed,
                "report": {k: str(v) for k, v in res.files.items()},
            }
        )
    else:
        _print_verdict(res.result)
        if res.failed:
            out.print(f"{len(res.failed)} files could not be read (listed in report.json)")
        out.print(f"report: {res.files['html']}", highlight=False)
    if fail_on_drift:
        needs = f"each detector needs {settings.min_images}"
        _gate(res.result.status, allow_insufficient, data, res.files["html"], (len(res.paths), "images", needs))


def _gate(status: str, allow_insufficient: bool, data: Path, report: Path, counted: tuple[int, str, str]) -> None:
    """--fail-on-drift: DriftGateFailed (exit 1) on drift, and on too few rows/images
    unless --allow-insufficient. ``counted``: (how many, "images" | "rows", what is needed)."""
    n, unit, needs = counted
    if status == "drift":
        raise DriftGateFailed(f"--fail-on-drift: drift found in {data}; see {report}")
    if status == "insufficient" and not allow_insufficient:
        raise DriftGateFailed(
            f"--fail-on-drift: {n} {unit} are too few to decide ({needs}); failing. "
            f"Add {unit}, lower --min-images, or pass --allow-insufficient"
        )


def _drift_table(
    run: Path,
    data: Path,
    out_dir: Path | None,
    max_rows: int,
    options: tuple[float | None, int | None, str | None, int | None],
    gate: tuple[bool, bool],
    as_json: bool,
    quiet: bool,
) -> None:
    """`duet drift` of a tabular run: compare, print the one-screen summary or the JSON, gate.

    ``options``: --alpha, --min-images (rows here), and the image-only --embedding-test,
    --permutations (refused); ``gate``: --fail-on-drift, --allow-insufficient."""
    from duet.monitor.tabular_check import table_drift_check
    from duet.monitor.tabular_profile import TabularDriftSettings

    alpha, min_rows, embedding_test, permutations = options
    if embedding_test is not None or permutations is not None:
        raise ConfigError("--embedding-test and --permutations are image settings, not used for a table; remove them")
    d = TabularDriftSettings()  # the defaults, which every profile records
    settings = TabularDriftSettings(
        alpha=d.alpha if alpha is None else alpha, min_rows=d.min_rows if min_rows is None else min_rows
    )
    res = table_drift_check(
        run, data, out_dir=out_dir, max_rows=max_rows, settings=settings, log=stderr_log(quiet or as_json)
    )
    if as_json:
        print_json(
            {
                **res.result.to_dict(),
                "rows": res.rows,
                "rows_in_file": res.rows_in_file,
                "skipped_rows": len(res.skipped),
                "report": {k: str(v) for k, v in res.files.items()},
            }
        )
    else:
        _print_table_verdict(res.result)
        if res.skipped:
            out.print(f"{len(res.skipped)} rows could not be read (listed in report.json)")
        out.print(f"report: {res.files['html']}", highlight=False)
    if gate[0]:
        needs = f"the verdict needs {settings.min_rows}"
        _gate(res.result.status, gate[1], data, res.files["html"], (res.rows, "rows", needs))


def _drift_text(
    run: Path,
    data: Path,
    out_dir: Path | None,
    max_documents: int,
    options: tuple[float | None, int | None, str | None, int | None],
    gate: tuple[bool, bool],
    as_json: bool,
    quiet: bool,
) -> None:
    """`duet drift` of a text run (docs/text.md, "Monitor"): compare, print the tests or the JSON, gate.

    ``options``: --alpha, --min-images (documents here), --embedding-test (refused: text uses MMD)
    and --permutations; ``gate``: --fail-on-drift, --allow-insufficient."""
    from duet.monitor.text_check import text_drift_check
    from duet.monitor.text_profile import TextDriftSettings

    alpha, min_rows, embedding_test, permutations = options
    if embedding_test is not None:
        raise ConfigError("--embedding-test is an image setting; a text run's embedding test is MMD. Remove it")
    d = TextDriftSettings()
    settings = TextDriftSettings(
        alpha=d.alpha if alpha is None else alpha,
        min_rows=d.min_rows if min_rows is None else min_rows,
        permutations=d.permutations if permutations is None else permutations,
    )
    res = text_drift_check(
        run, data, out_dir=out_dir, max_documents=max_documents, settings=settings, log=stderr_log(quiet or as_json)
    )
    counts = {"documents": res.documents, "documents_read": res.documents_read, "skipped_documents": len(res.skipped)}
    if as_json:
        print_json({**res.result.to_dict(), **counts, "report": {k: str(v) for k, v in res.files.items()}})
    else:
        _print_table_verdict(res.result)
        if res.skipped:
            out.print(f"{len(res.skipped)} documents could not be read (listed in report.json)")
        out.print(f"report: {res.files['json']}", highlight=False)
    if gate[0]:
        needs = f"the verdict needs {settings.min_rows}"
        _gate(res.result.status, gate[1], data, res.files["json"], (res.documents, "documents", needs))


TABLE_ROWS_SHOWN = 15


def _print_table_verdict(result: Any) -> None:
    """The verdict line, then one line per column and output: the drifted first, then the
    closest to drifting, at most TABLE_ROWS_SHOWN (every one is in --json and report.json)."""
    colour, word = VERDICT_STYLE[result.status]
    out.print(f"[bold {colour}]{word}[/] {result.sentence}", highlight=False)
    if result.status == "insufficient":
        return
    t = Table(show_header=True, box=None, pad_edge=False)
    for col in ("column", "kind", "score", "p (Holm)", "missing", "drift", "finding"):
        t.add_column(col, overflow="fold", no_wrap=col in ("column", "score", "missing"))
    ranked = sorted(result.columns, key=lambda c: (not c.drift, c.adjusted_p if c.adjusted_p is not None else 2.0))
    for c in ranked[:TABLE_ROWS_SHOWN]:
        score = "–" if c.statistic is None else f"{c.statistic_name} {c.statistic:.3g}"
        missing = (
            "–"
            if "current_missing" not in c.details
            else (f"{c.details['reference_missing']:.0%} → {c.details['current_missing']:.0%}")
        )
        finding = c.sentence.split(": ", 1)[-1] if c.drift else "as in the reference"
        flag = "[bold red]yes[/]" if c.drift else "no"
        t.add_row(c.column, c.kind, score, _p(c.adjusted_p), missing, flag, finding)
    out.print(t)
    if len(ranked) > TABLE_ROWS_SHOWN:
        out.print(f"{len(ranked) - TABLE_ROWS_SHOWN} more columns without drift (all of them: --json, report.json)")


def profile_cmd(
    run: Path = typer.Argument(..., help="A run folder made by `duet train`."),
    components: int = typer.Option(32, min=1, help="PCA components kept of the penultimate-layer features."),
    max_reference: int = typer.Option(1000, "--max-reference", min=2, help="Held-out images in the reference sample."),
    max_fit: int = typer.Option(
        1000, "--max-fit", min=2, help="Training images the PCA and the kernel bandwidth are fitted on."
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(
        None, help="auto | fp32 | bf16. \\[default: the precision the run was trained in]"
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int | None = typer.Option(None, help="Image loading processes. \\[default: one per core, max 8]"),
    as_json: bool = typer.Option(False, "--json", help="Print the profile summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write RUN/profile/: the reference statistics drift is measured against.

    A sample of the run's held-out images: their penultimate-layer embeddings
    (reduced by PCA, projection saved), predicted classes, top-1 confidences and
    image statistics. `duet drift` and the server read it; no pickles.

    A text run: RUN/profile/text.json (docs/text.md, "Monitor").
    """
    from duet.monitor.profile import write_profile
    from duet.training.text_run import is_text_run

    if is_text_run(run):
        _profile_text(run, components, max_reference, max_fit, as_json, quiet)
        return
    p = write_profile(
        run,
        components=components,
        max_reference=max_reference,
        max_fit=max_fit,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=not quiet,
        log=stderr_log(quiet or as_json),
        precision=precision,
    )
    summary = {
        "profile": str(p.root),
        "reference_images": p.n_reference,
        "reference_split": p.meta.get("reference", {}).get("split"),
        "reference_accuracy": p.meta.get("reference", {}).get("accuracy"),
        "fit_images": p.meta.get("fit", {}).get("images"),
        "components": p.n_components,
        "feature_dim": p.feature_dim,
        "explained_variance": float(p.explained_variance_ratio.sum()),
        "median_confidence": float(sorted(p.confidences)[len(p.confidences) // 2]),
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet profile", show_header=False, box=None)
    t.add_row("profile", summary["profile"])
    t.add_row(
        "reference",
        f"{p.n_reference} {summary['reference_split']} images "
        f"(accuracy {pct(summary['reference_accuracy'])}, median confidence {summary['median_confidence']:.2f})",
    )
    t.add_row(
        "embeddings",
        f"{p.feature_dim}-d features -> {p.n_components} PCA components "
        f"({100 * summary['explained_variance']:.0f}% of variance), fitted on {summary['fit_images']} images",
    )
    t.add_row("next", f"duet drift {run} --data NEW_IMAGES/")
    out.print(t)


def _profile_text(run: Path, components: int, max_reference: int, max_fit: int, as_json: bool, quiet: bool) -> None:
    """`duet profile` of a text run: write RUN/profile/text.json and say what it holds."""
    from duet.monitor.text_profile import profile_path, write_text_profile

    p = write_text_profile(
        run, max_reference=max_reference, max_fit=max_fit, components=components, log=stderr_log(quiet or as_json)
    )
    reference = p.meta.get("reference", {})
    summary = {
        "profile": str(profile_path(run)),
        "reference_documents": p.rows,
        "reference_split": reference.get("split"),
        "oov_rate": float(p.docs.oov.sum() / max(int(p.docs.tokens.sum()), 1)),
        "median_words": float(sorted(p.docs.lengths.tolist())[p.rows // 2]),
        "median_confidence": float(sorted(p.confidences.tolist())[p.rows // 2]),
        "components": None if p.embedding is None else int(p.embedding.pca_components.shape[0]),
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet profile (text)", show_header=False, box=None)
    t.add_row("profile", summary["profile"])
    t.add_row(
        "reference",
        f"{p.rows} {summary['reference_split']} documents: OOV rate {summary['oov_rate']:.1%}, "
        f"median {summary['median_words']:g} words, median confidence {summary['median_confidence']:.2f}",
    )
    t.add_row("embeddings", f"pooled features -> {summary['components']} PCA components")
    t.add_row("next", f"duet drift {run} --data NEW_TEXTS/")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("drift", cls=DefaultsFromConfig)(drift_cmd)
    app.command("profile")(profile_cmd)
