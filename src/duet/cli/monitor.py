"""`duet drift | profile | registry | retrain | watch`: monitoring and the retraining loop.

Thin: parse, call the stage function, print. Heavy imports happen inside the
commands, so `duet --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from duet.cli.common import pct, print_json, stderr_log
from duet.errors import ConfigError

out = Console()  # results on stdout; progress and logs on stderr
REGISTRY_HELP = "Registry folder (versions + champion pointer)."


_log = stderr_log
_print_json = print_json
_pct = pct


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _drift_settings(alpha: float, embedding_test: str, permutations: int, min_images: int):
    from duet.monitor.drift import DriftSettings

    return DriftSettings(alpha=alpha, embedding_test=embedding_test, permutations=permutations, min_images=min_images)


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


def drift_cmd(
    run: Path = typer.Argument(
        ..., help="A run folder made by `duet train` (its profile is written first if missing)."
    ),
    data: Path = typer.Option(..., "--data", help="Folder of new images, any layout (labels are not needed)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Report folder. \\[default: RUN/drift/<folder name>]"),
    max_images: int = typer.Option(
        1000, "--max-images", help="Compare a seeded random sample of at most this many images."
    ),
    alpha: float = typer.Option(
        0.04, help="Bound on the verdict's false-alarm rate when nothing changed (measured: ~3%)."
    ),
    embedding_test: str = typer.Option(
        "mmd", "--embedding-test", help="mmd (kernel MMD, permutation test) | ks (KS per PCA component, Bonferroni)."
    ),
    permutations: int = typer.Option(500, help="Permutations of the MMD test."),
    min_images: int = typer.Option(30, "--min-images", help="Detectors do not run on fewer images."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int | None = typer.Option(None, help="Image loading processes. \\[default: one per core, max 8]"),
    fail_on_drift: bool = typer.Option(
        False,
        "--fail-on-drift",
        help="Exit with status 1 when drift is detected, or when there are too few images to decide (for scripts and CI).",
    ),
    allow_insufficient: bool = typer.Option(
        False, "--allow-insufficient", help="With --fail-on-drift: exit 0 when there are too few images to decide."
    ),
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

    Example: duet drift runs/digits --data incoming/2024-06-01/
    """
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
        log=_log(quiet or as_json),
    )
    if as_json:
        _print_json(
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
    if fail_on_drift and res.result.status == "drift":
        raise typer.Exit(1)
    if fail_on_drift and res.result.status == "insufficient" and not allow_insufficient:
        _log(False)(
            f"--fail-on-drift: {len(res.paths)} images are too few to decide (each detector needs "
            f"{settings.min_images}); failing. Add images, lower --min-images, or pass "
            "--allow-insufficient"
        )
        raise typer.Exit(1)


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
    """
    from duet.monitor.profile import write_profile

    p = write_profile(
        run,
        components=components,
        max_reference=max_reference,
        max_fit=max_fit,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=not quiet,
        log=_log(quiet or as_json),
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
        _print_json(summary)
        return
    t = Table(title="duet profile", show_header=False, box=None)
    t.add_row("profile", summary["profile"])
    t.add_row(
        "reference",
        f"{p.n_reference} {summary['reference_split']} images "
        f"(accuracy {_pct(summary['reference_accuracy'])}, median confidence {summary['median_confidence']:.2f})",
    )
    t.add_row(
        "embeddings",
        f"{p.feature_dim}-d features -> {p.n_components} PCA components "
        f"({100 * summary['explained_variance']:.0f}% of variance), fitted on {summary['fit_images']} images",
    )
    t.add_row("next", f"duet drift {run} --data NEW_IMAGES/")
    out.print(t)


# --------------------------------------------------------------------------- registry


registry_app = typer.Typer(
    help="Model versions and the champion pointer (a folder; switched atomically).", no_args_is_help=True
)


def _registry(path: Path):
    from duet.lifecycle.registry import Registry

    return Registry(path)


@registry_app.command("list")
def registry_list(
    registry: Path = typer.Option(Path("registry"), "--registry", envvar="DUET_REGISTRY", help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print versions and the champion as JSON on stdout."),
) -> None:
    """Every version, which one is champion, and the champion's history."""
    reg = _registry(registry)
    versions = reg.versions()
    pointer = reg.champion_pointer()
    if as_json:
        _print_json(
            {
                "registry": str(reg.root),
                "champion": None
                if pointer is None
                else {
                    "version": pointer.version,
                    "seq": pointer.seq,
                    "since": pointer.since,
                    "reason": pointer.reason,
                    "history": list(pointer.history),
                },
                "versions": [v.record for v in versions],
            }
        )
        return
    if not versions:
        out.print(f"registry '{registry}' is empty; add a run with `duet registry promote runs/<name>`")
        return
    t = Table(title=f"registry {registry}")
    for col in ("", "version", "run", "model", "val accuracy", "gate (vs parent, same held-out)", "created"):
        t.add_column(col)
    for v in versions:
        mark = "[bold green]*[/]" if pointer and pointer.version == v.version else ""
        gate = v.record.get("gate")
        vs = (
            f"{_pct(gate['challenger_accuracy'])} vs {_pct(gate['champion_accuracy'])} ({gate['champion']})"
            if gate
            else ""
        )
        t.add_row(mark, v.version, v.run.name, v.record.get("model", ""), _pct(v.accuracy), vs, v.created[:19])
    out.print(t)
    if pointer:
        out.print(
            f"champion: {pointer.version} since {pointer.since} ({pointer.reason})"
            + (f"; before: {', '.join(reversed(pointer.history))}" if pointer.history else ""),
            highlight=False,
        )


@registry_app.command("promote")
def registry_promote(
    ref: str = typer.Argument(..., help="A version (v3) or a run folder (registered first if new)."),
    registry: Path = typer.Option(Path("registry"), "--registry", envvar="DUET_REGISTRY", help=REGISTRY_HELP),
    reason: str = typer.Option("", help="Why, for the event log."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Promote a run that did not finish training (killed, crashed); the events say it was forced.",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make a version the champion (servers following the registry swap to it).

    A run that did not finish training is refused unless --force.
    """
    reg = _registry(registry)
    pointer = reg.promote(ref, reason=reason or "promoted by hand", force=force)
    version = reg.get(pointer.version)
    if version.unfinished:
        _log(False)(
            f"warning: {version.version} did not finish training ({version.unfinished}); "
            "promoted because of --force (recorded in the events)"
        )
    if as_json:
        _print_json(
            {"champion": pointer.version, "seq": pointer.seq, "run": str(version.run), "history": list(pointer.history)}
        )
        return
    previous = f" (was {pointer.history[-1]})" if pointer.history else ""
    out.print(f"champion: {pointer.version}{previous} -> {version.run}", highlight=False)


@registry_app.command("rollback")
def registry_rollback(
    to: str | None = typer.Option(None, "--to", help="An earlier champion to return to. \\[default: the previous one]"),
    registry: Path = typer.Option(Path("registry"), "--registry", envvar="DUET_REGISTRY", help=REGISTRY_HELP),
    reason: str = typer.Option("", help="Why, for the event log."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Return the champion pointer to the previous champion."""
    reg = _registry(registry)
    before = reg.champion_pointer()
    pointer = reg.rollback(to=to, reason=reason)
    version = reg.get(pointer.version)
    if as_json:
        _print_json(
            {
                "champion": pointer.version,
                "seq": pointer.seq,
                "run": str(version.run),
                "rolled_back_from": before.version if before else None,
                "history": list(pointer.history),
            }
        )
        return
    out.print(
        f"champion: {pointer.version} (rolled back from {before.version if before else '?'}) -> {version.run}",
        highlight=False,
    )


# --------------------------------------------------------------------------- retrain / watch


def _gate(margin: float, tolerance: float, drop_margin: float = 0.02):
    from duet.lifecycle.gate import GateSettings

    return GateSettings(tolerance=tolerance, drop_margin=drop_margin, class_margin=margin)


def retrain_cmd(
    run: Path | None = typer.Argument(None, help="The champion's run folder. \\[default: the registry's champion]"),
    data: Path = typer.Option(..., "--data", help="New labelled images: class sub-folders (or train/ val/)."),
    registry: Path = typer.Option(Path("registry"), "--registry", envvar="DUET_REGISTRY", help=REGISTRY_HELP),
    no_registry: bool = typer.Option(False, "--no-registry", help="Compare and report only; touch no registry."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Register nothing even if the challenger passes."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Folder for the challenger run and its merged data."),
    name: str | None = typer.Option(None, help="Challenger run name. \\[default: <champion>-rN]"),
    epochs: int | None = typer.Option(None, min=1, help="Challenger epochs. \\[default: the champion's]"),
    lr: float | None = typer.Option(None, help="Challenger peak learning rate. \\[default: the champion's]"),
    margin: float = typer.Option(
        0.05,
        help="Largest allowed drop of any class's recall (0.05 = 5 points), counted when significant (McNemar, 5%, Bonferroni over the classes with enough images to test).",
    ),
    tolerance: float = typer.Option(
        0.0, help="How far the challenger's overall accuracy may fall below the champion's."
    ),
    drop_margin: float = typer.Option(
        0.02,
        "--drop-margin",
        help="On the champion's own held-out images, refuse a drop larger than this (0.02 = 2 points) when it is significant (exact McNemar, 5%).",
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda. \\[default: the champion's]"),
    workers: int | None = typer.Option(None, help="Data loading processes. \\[default: the champion's]"),
    as_json: bool = typer.Option(False, "--json", help="Print the decision and both models' scores as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a challenger on the champion's data + new data; promote it only if it is better.

    The challenger is warm-started from the champion; old files keep their side of
    the split. Both models are scored on the same held-out images; the challenger
    is promoted only if its accuracy is at least the champion's, it is not
    significantly worse by more than --drop-margin on the champion's own held-out
    images, and no class's recall drops significantly by more than --margin. The
    gate prints the smallest drop it could detect. A comparison report is written
    either way.

    Example: duet retrain runs/digits --data labelled/2024-06/
    """
    from duet.lifecycle.retrain import retrain

    reg = None if no_registry else _registry(registry)
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"`--device` must be one of auto, cpu, cuda. Received: --device={device}")
    result = retrain(
        run,
        data,
        registry=reg,
        out=out_dir,
        name=name,
        epochs=epochs,
        lr=lr,
        gate=_gate(margin, tolerance, drop_margin),
        device=device,
        workers=workers,
        promote=not no_promote,
        progress=not quiet,
        log=_log(quiet or as_json),
    )
    s = result.summary()
    if as_json:
        _print_json(s)
        return
    colour = "green" if result.promoted else "yellow"
    out.print(f"[bold {colour}]{s['decision'].upper()}[/]", highlight=False, markup=True)
    t = s["drop_test"]
    mdd = (
        "no drop"
        if t["min_detectable_drop"] is None
        else f"drops of {100 * t['min_detectable_drop']:.1f} points or more"
    )
    out.print(
        f"the gate could detect {mdd} on {t['where']} ({t['images']} images, {t['power']:.0%} power)", highlight=False
    )
    t = Table(show_header=True, box=None)
    for col in ("", "champion", "challenger"):
        t.add_column(col)
    t.add_row("run", s["champion"]["run"], s["challenger"]["run"])
    t.add_row(
        f"accuracy ({s['held_out']['images']} held-out)",
        _pct(s["champion"]["accuracy"]),
        _pct(s["challenger"]["accuracy"]),
    )
    t.add_row(
        f"on the champion's {s['held_out']['champion_held_out_images']} held-out",
        _pct(s["champion"]["accuracy_on_champion_held_out"]),
        _pct(s["challenger"]["accuracy_on_champion_held_out"]),
    )
    out.print(t)
    for r in s["reasons"]:
        out.print(f"- {r}", highlight=False)
    out.print(f"report: {s['report']['md']}", highlight=False)


def watch_cmd(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Folder where new labelled images arrive (class sub-folders); watched even while it is missing or empty.",
    ),
    live: Path | None = typer.Option(
        None,
        "--live",
        help="Folder of recent unlabelled traffic to test for drift (watched even while missing or empty). \\[default: the new labelled images]",
    ),
    registry: Path = typer.Option(Path("registry"), "--registry", envvar="DUET_REGISTRY", help=REGISTRY_HELP),
    interval: float = typer.Option(300.0, min=0, help="Seconds between checks."),
    iterations: int | None = typer.Option(
        None, min=1, help="Stop after this many checks. \\[default: run until interrupted]"
    ),
    min_new: int = typer.Option(1, "--min-new", min=1, help="New labelled images needed before retraining."),
    margin: float = typer.Option(0.05, help="Gate: largest allowed drop of any class's recall."),
    tolerance: float = typer.Option(0.0, help="Gate: how far overall accuracy may fall below the champion's."),
    drop_margin: float = typer.Option(
        0.02,
        "--drop-margin",
        help="Gate: on the champion's own held-out images, refuse a drop larger than this when it is significant (exact McNemar, 5%).",
    ),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Folder for challenger runs."),
    epochs: int | None = typer.Option(None, min=1, help="Challenger epochs. \\[default: the champion's]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    workers: int | None = typer.Option(None, help="Data loading processes."),
    as_json: bool = typer.Option(False, "--json", help="Print every decision as JSON on stdout at the end."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The closed loop: drift + new labels -> retrain -> gate -> promote, logging every decision.

    Each check reads the registry's champion, counts the images in --data it has not
    trained on, and tests for drift (on --live, or on those new images). Decisions go
    to stderr and to REGISTRY/events.jsonl; while it waits (--data missing or empty,
    nothing new) it says so once, not at every check.

    Example: duet watch --data labelled/ --live traffic/ --interval 3600
    """
    from duet.lifecycle.watch import watch

    decisions = watch(
        data,
        registry=_registry(registry),
        live_dir=live,
        interval=interval,
        iterations=iterations,
        min_new=min_new,
        gate=_gate(margin, tolerance, drop_margin),
        out=out_dir,
        epochs=epochs,
        device=device,
        workers=workers,
        progress=not quiet and not as_json,
        log=_log(quiet or as_json),
    )
    if as_json:
        from dataclasses import asdict

        _print_json([asdict(d) for d in decisions])
        return
    for d in decisions:
        out.print(f"[{d.iteration}] {d.sentence}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("drift")(drift_cmd)
    app.command("profile")(profile_cmd)
    app.add_typer(registry_app, name="registry")
    app.command("retrain")(retrain_cmd)
    app.command("watch")(watch_cmd)
