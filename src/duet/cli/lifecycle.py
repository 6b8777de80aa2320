"""`duet registry | retrain | watch`: model versions, the champion pointer and the retraining loop.

Thin: parse, call the lifecycle function, print. Heavy imports happen inside the
commands, so `duet --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import out, pct, print_json, stderr_log
from duet.errors import ConfigError

REGISTRY_HELP = "Registry folder (versions + champion pointer)."


# --------------------------------------------------------------------------- registry


registry_app = typer.Typer(
    help="Model versions and the champion pointer (a folder; switched atomically).", no_args_is_help=True
)


def _registry(path: Path):
    from duet.artifacts.registry import Registry

    return Registry(path)


def _mirror(reg: Any) -> None:
    """The MLflow Model Registry follows the champion (alias `champion`) when it was tracked."""
    from duet.tracking.mirror import mirror_champion

    mirror_champion(reg)


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
        print_json(
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
            f"{pct(gate['challenger_accuracy'])} vs {pct(gate['champion_accuracy'])} ({gate['champion']})"
            if gate
            else ""
        )
        t.add_row(mark, v.version, v.run.name, v.record.get("model", ""), pct(v.accuracy), vs, v.created[:19])
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
    _mirror(reg)
    version = reg.get(pointer.version)
    if version.unfinished:
        stderr_log(False)(
            f"warning: {version.version} did not finish training ({version.unfinished}); "
            "promoted because of --force (recorded in the events)"
        )
    if as_json:
        print_json(
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
    _mirror(reg)
    version = reg.get(pointer.version)
    if as_json:
        print_json(
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


_RETRAIN_CMD_MARGIN = typer.Option(
    0.05,
    help="Largest allowed drop of any class's recall (0.05 = 5 points), counted when significant (McNemar, 5%, Bonferroni over the classes with enough images to test).",
)
_RETRAIN_CMD_TOLERANCE = typer.Option(
    0.0, help="How far the challenger's overall accuracy may fall below the champion's."
)
_RETRAIN_CMD_DROP_MARGIN = typer.Option(
    0.02,
    "--drop-margin",
    help="On the champion's own held-out images, refuse a drop larger than this (0.02 = 2 points) when it is significant (exact McNemar, 5%).",
)


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
    margin: float = _RETRAIN_CMD_MARGIN,
    tolerance: float = _RETRAIN_CMD_TOLERANCE,
    drop_margin: float = _RETRAIN_CMD_DROP_MARGIN,
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
        log=stderr_log(quiet or as_json),
    )
    s = result.summary()
    if as_json:
        print_json(s)
        return
    _print_retrain(s, result.promoted)


def _print_retrain(s: dict[str, Any], promoted: bool) -> None:
    """The one-screen summary of `duet retrain`: the decision, what the gate could detect, both models."""
    colour = "green" if promoted else "yellow"
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
        pct(s["champion"]["accuracy"]),
        pct(s["challenger"]["accuracy"]),
    )
    t.add_row(
        f"on the champion's {s['held_out']['champion_held_out_images']} held-out",
        pct(s["champion"]["accuracy_on_champion_held_out"]),
        pct(s["challenger"]["accuracy_on_champion_held_out"]),
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
        log=stderr_log(quiet or as_json),
    )
    if as_json:
        from dataclasses import asdict

        print_json([asdict(d) for d in decisions])
        return
    for d in decisions:
        out.print(f"[{d.iteration}] {d.sentence}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.command("retrain")(retrain_cmd)
    app.command("watch")(watch_cmd)
