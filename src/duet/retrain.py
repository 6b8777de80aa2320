"""Retraining behind a champion/challenger gate, and the loop that runs it (`duet watch`).

``retrain(champion_run, new_data)``:

1. **Merge.** The champion's usable files keep the split its manifest records;
   new files get the same rule (``duet.data.split``: content hash + the
   champion's seed and validation fraction), so no old file ever changes side
   and the champion's held-out images stay held out (new files get a test
   split only when the champion has one). Files already known (same
   bytes) are skipped; the same bytes under another label are reported as
   conflicts and left out. The merged set is a folder of links in the
   ``train/ val/`` layout next to the challenger run (``runs/<name>.data/``).
2. **Train a challenger**, warm-started from the champion's
   ``checkpoints/best.safetensors`` with the champion's settings.
3. **Compare** champion and challenger on the same held-out images: the merged
   test split if there is one, else the merged validation split (the
   champion's own held-out images plus the new ones).
4. **Gate.** Promote only if the challenger's overall accuracy is at least the
   champion's (minus ``tolerance``, 0 by default) and no class's recall drops
   by more than ``class_margin`` (5 points) with a significant McNemar test
   (5%, Bonferroni over classes), checked on the whole held-out set and on the
   champion's own held-out images (so a batch of wrongly labelled new data
   cannot buy its way in by being graded on its own labels).
5. **Report** ``<challenger>/retrain/comparison.{json,md}`` either way; with a
   registry, register and promote the challenger when it passes, and log the
   decision in ``registry/events.jsonl`` either way.

``watch(data_dir, registry=...)`` repeats: when the new images drift from the
champion's profile and new labelled images are present, retrain, gate and
promote, logging every decision.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sstats

from duet.atomic import write_json_atomic, write_text_atomic
from duet.errors import ConfigError, DataError
from duet.registry import Registry, RegistryError

Log = Callable[[str], None]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GateSettings:
    """When a challenger may replace the champion.

    tolerance: the challenger's overall accuracy may be at most this far below
        the champion's (0 = at least as good).
    class_margin: the largest allowed drop of one class's recall (0.05 = 5 points).
    significance: a drop beyond the margin counts only when it is also
        significant: an exact one-sided McNemar test on that class's images at
        this level, Bonferroni-corrected over the classes. On a held-out class of
        20 images a two-image swing is noise, not a regression.
    """

    tolerance: float = 0.0
    class_margin: float = 0.05
    significance: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"`tolerance` must be in [0, 1). Received: tolerance={self.tolerance!r}")
        if not 0 <= self.class_margin < 1:
            raise ConfigError(f"`class_margin` must be in [0, 1), e.g. 0.05. Received: class_margin={self.class_margin!r}")
        if not 0 < self.significance < 1:
            raise ConfigError(f"`significance` must be in (0, 1), e.g. 0.05. Received: significance={self.significance!r}")


# --------------------------------------------------------------------------- merge


@dataclass
class MergeSummary:
    data_dir: Path
    old_images: int
    new_images: int
    new_per_split: dict[str, int]
    already_known: int
    conflicts: list[dict[str, str]]
    labels_added: list[str]
    skipped: int


def _link(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.realpath(source), dest)
    except OSError:  # no symlinks (some Windows setups, some filesystems): copy
        shutil.copy2(source, dest)


def known_hashes(run_dir: Path) -> dict[str, str]:
    """``{sha256: label}`` of every usable file of a run's manifest."""
    from duet.data.scan import read_manifest
    from duet.runs import load_run

    run = load_run(run_dir)
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    return {r.sha256: r.label for r in manifest.usable()}


def new_labelled_rows(run_dir: Path, data_dir: Path, *, progress: bool) -> tuple[list[Any], Any, int, list[dict[str, str]]]:
    """Usable rows of ``data_dir`` the run has not seen: ``(rows, manifest, already known, conflicts)``."""
    from duet.data.scan import scan

    manifest = scan(data_dir, progress=progress)
    known = known_hashes(run_dir)
    fresh, same, conflicts = [], 0, []
    for row in manifest.usable():
        if row.sha256 not in known:
            fresh.append(row)
        elif known[row.sha256] == row.label:
            same += 1
        else:
            conflicts.append({"path": row.path, "label": row.label, "known_as": known[row.sha256]})
    return fresh, manifest, same, conflicts


def merge_data(champion_run: Path, new_data: Path, dest: Path, *, progress: bool = True) -> MergeSummary:
    """Build the challenger's data folder (``train/ val/ [test/]`` of links) at ``dest``."""
    from duet.data.scan import read_manifest
    from duet.data.split import assign_splits
    from duet.runs import load_run, read_config

    run = load_run(champion_run)
    config = read_config(run.paths)
    old = read_manifest(run.paths.manifest, run.data_dir)
    fresh, new_manifest, same, conflicts = new_labelled_rows(run.paths.root, Path(new_data), progress=progress)
    if not fresh:
        raise DataError(f"no new images in '{new_data}': all {same + len(conflicts)} usable images are already in "
                        f"the champion's data ({len(conflicts)} under another label); add new labelled images")
    # The champion's rule for new files: hash of content + its seed and validation
    # fraction; a test split only when the champion has one, then at its share
    # (however few the new images: the merged test split must keep growing).
    fresh_ids = {r.path for r in fresh}
    has_test = any(r.split == "test" for r in old.usable())
    split_new = assign_splits(new_manifest, val_fraction=float(config.get("val_split", 0.2)),
                              test_fraction=float(config.get("test_split", 0.1)) if has_test else 0.0,
                              seed=int(config.get("seed", 0)), test_min_per_class=0)
    fresh = [r for r in split_new.usable() if r.path in fresh_ids]
    if dest.exists():
        raise DataError(f"'{dest}' already exists; choose another challenger --name")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    old_rows = old.usable()
    for row in old_rows:
        _link(old.data_dir / row.path, tmp / row.split / row.label / f"{row.sha256[:20]}{Path(row.path).suffix.lower()}")
    per_split: dict[str, int] = {}
    for row in fresh:
        per_split[row.split] = per_split.get(row.split, 0) + 1
        _link(new_manifest.data_dir / row.path,
              tmp / row.split / row.label / f"{row.sha256[:20]}{Path(row.path).suffix.lower()}")
    if not (tmp / "val").is_dir():  # the splits layout needs the folder even when it is empty
        (tmp / "val").mkdir(parents=True)
    os.replace(tmp, dest)
    return MergeSummary(
        data_dir=dest.resolve(),
        old_images=len(old_rows),
        new_images=len(fresh),
        new_per_split=per_split,
        already_known=same,
        conflicts=conflicts,
        labels_added=sorted({r.label for r in fresh} - set(run.labels)),
        skipped=sum(1 for r in new_manifest.rows if r.status != "ok"),
    )


# --------------------------------------------------------------------------- comparison and gate


@dataclass
class Comparison:
    """Both models on the same held-out images, and the gate's decision."""

    split: str
    images: int
    old_images: int
    champion: dict[str, Any]
    challenger: dict[str, Any]
    per_class: list[dict[str, Any]]
    per_class_old: list[dict[str, Any]]
    promote: bool
    reasons: list[str]
    gate: dict[str, float]


def _scores(pred: np.ndarray, true: np.ndarray, labels: list[str]) -> dict[str, Any]:
    correct = pred == true
    per_class = {}
    for label in labels:
        mask = true == label
        if mask.any():
            per_class[label] = {"support": int(mask.sum()), "correct": int(correct[mask].sum()),
                                "recall": float(correct[mask].mean()), "right": correct[mask].tolist()}
    return {"accuracy": float(correct.mean()) if len(true) else None, "images": int(len(true)), "per_class": per_class}


def mcnemar_worse(champion_right: np.ndarray, challenger_right: np.ndarray) -> float:
    """One-sided exact McNemar p-value that the challenger is worse on these
    images: of the images exactly one model gets right, how surprising is it
    that the champion has this many, if both were equally good."""
    b = int(np.sum(champion_right & ~challenger_right))
    c = int(np.sum(~champion_right & challenger_right))
    if b + c == 0:
        return 1.0
    return float(sstats.binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def _class_rows(champ: dict[str, Any], chall: dict[str, Any], margin: float, significance: float) -> list[dict[str, Any]]:
    rows = []
    level = significance / max(len(champ["per_class"]), 1)  # Bonferroni over the classes
    for label, c in champ["per_class"].items():
        d = chall["per_class"][label]
        drop = c["recall"] - d["recall"]
        p = mcnemar_worse(np.array(c["right"]), np.array(d["right"]))
        rows.append({"label": label, "support": c["support"], "champion_recall": c["recall"],
                     "challenger_recall": d["recall"], "change": -drop, "p_value": p,
                     "regressed": bool(drop > margin + 1e-12 and p < level),
                     "champion_correct": c["correct"], "challenger_correct": d["correct"]})
    return rows


def decide(champ: dict[str, Any], chall: dict[str, Any], champ_old: dict[str, Any], chall_old: dict[str, Any],
           gate: GateSettings) -> tuple[bool, list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The gate: ``(promote, reasons, per-class rows, per-class rows on the champion's held-out images)``."""
    reasons = []
    a, b = champ["accuracy"], chall["accuracy"]
    overall_ok = b >= a - gate.tolerance - 1e-12
    reasons.append(
        f"overall accuracy {b:.1%} vs champion {a:.1%} ({100 * (b - a):+.1f} points) on {champ['images']} "
        f"held-out images: {'at least as good' if overall_ok else 'worse'}"
        + (f" (tolerance {gate.tolerance:.1%})" if gate.tolerance else "")
    )
    rows = _class_rows(champ, chall, gate.class_margin, gate.significance)
    rows_old = _class_rows(champ_old, chall_old, gate.class_margin, gate.significance) if champ_old["images"] else []
    regressions = [(r, "held-out images") for r in rows if r["regressed"]]
    regressions += [(r, "the champion's own held-out images") for r in rows_old if r["regressed"]]
    for r, where in regressions:
        reasons.append(
            f"class '{r['label']}' regressed on {where}: recall {r['challenger_recall']:.0%} vs "
            f"{r['champion_recall']:.0%} ({r['challenger_correct']}/{r['support']} vs "
            f"{r['champion_correct']}/{r['support']}; McNemar p = {r['p_value']:.2g}), more than the "
            f"{gate.class_margin:.0%} margin"
        )
    if not regressions:
        reasons.append(f"no class recall dropped significantly by more than {gate.class_margin:.0%} "
                       f"({len(rows)} classes; {len(rows_old)} on the champion's own held-out images)")
    return overall_ok and not regressions, reasons, rows, rows_old


def compare_runs(
    champion_run: Path,
    challenger_run: Path,
    *,
    gate: GateSettings,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> Comparison:
    """Evaluate both runs on the challenger's held-out split (test if any, else val)
    and apply the gate. Labels are compared by name, so a challenger with a
    new class is graded fairly (the champion simply never predicts it)."""
    from duet.data.loaders import Sample
    from duet.data.scan import read_manifest
    from duet.inference import load_model, predict_samples
    from duet.runs import load_run
    from duet.train.loop import resolve_device

    champion, challenger = load_run(champion_run), load_run(challenger_run)
    manifest = read_manifest(challenger.paths.manifest, challenger.data_dir)
    usable = manifest.usable()
    split = "test" if any(r.split == "test" for r in usable) else "val"
    rows = [r for r in usable if r.split == split]
    if not rows:
        raise DataError(f"the merged data has no {split} images to compare the models on; "
                        "the champion was trained with --val-split 0 and the new data has no val/ folder")
    old_hashes = set(known_hashes(champion.paths.root))
    dev = resolve_device(device)
    samples = [Sample(manifest.data_dir / r.path, -1) for r in rows]
    predicted = []
    failed = np.zeros(len(rows), dtype=bool)
    for who, run in (("champion", champion), ("challenger", challenger)):
        preds = predict_samples(load_model(run, dev), run, samples, dev, batch_size=batch_size, workers=workers,
                                progress=progress, description=f"compare: {who}")
        bad = np.array([bool(e) for e in preds.errors])
        failed |= bad
        index = np.where(bad, 0, np.nan_to_num(preds.probs).argmax(1))
        predicted.append(np.array([run.labels[i] for i in index], dtype=object))
    keep = ~failed
    true = np.array([r.label for r in rows], dtype=object)[keep]
    is_old = np.array([r.sha256 in old_hashes for r in rows])[keep]
    champ_pred, chall_pred = predicted[0][keep], predicted[1][keep]
    labels = sorted(set(true))
    champ, chall = _scores(champ_pred, true, labels), _scores(chall_pred, true, labels)
    champ_old = _scores(champ_pred[is_old], true[is_old], labels)
    chall_old = _scores(chall_pred[is_old], true[is_old], labels)
    promote, reasons, class_rows, class_rows_old = decide(champ, chall, champ_old, chall_old, gate)
    for d, old in ((champ, champ_old), (chall, chall_old)):
        d["accuracy_on_champion_held_out"] = old["accuracy"]
        for per in (d["per_class"], old["per_class"]):
            for row in per.values():
                row.pop("right")  # per-image detail: used by the gate, too bulky for the report
    return Comparison(split, int(keep.sum()), int(is_old.sum()), champ, chall, class_rows, class_rows_old,
                      promote, reasons, asdict(gate))


def _markdown(c: Comparison, *, champion: Path, challenger: Path, merge: MergeSummary, decision: str) -> str:
    lines = [f"# Champion vs challenger: {decision}", "",
             "| | champion | challenger |", "|---|---|---|",
             f"| run | `{champion}` | `{challenger}` |",
             f"| accuracy, {c.images} held-out images ({c.split}) | {c.champion['accuracy']:.2%} | "
             f"{c.challenger['accuracy']:.2%} |"]
    if c.old_images:
        lines.append(f"| accuracy, the champion's {c.old_images} held-out images | "
                     f"{c.champion['accuracy_on_champion_held_out']:.2%} | "
                     f"{c.challenger['accuracy_on_champion_held_out']:.2%} |")
    lines += ["", "## Gate", "", f"Settings: tolerance {c.gate['tolerance']:.1%}, class margin "
              f"{c.gate['class_margin']:.0%} (counted when a one-sided McNemar test is significant at "
              f"{c.gate['significance']:.0%}, Bonferroni over classes).", ""]
    lines += [f"- {r}" for r in c.reasons]
    for title, rows in (("Per class, all held-out images", c.per_class),
                        ("Per class, the champion's own held-out images", c.per_class_old)):
        if not rows:
            continue
        lines += ["", f"## {title}", "",
                  "| class | images | champion recall | challenger recall | change | McNemar p | regressed |",
                  "|---|--:|--:|--:|--:|--:|---|"]
        lines += [f"| {r['label']} | {r['support']} | {r['champion_recall']:.1%} | {r['challenger_recall']:.1%} | "
                  f"{100 * r['change']:+.1f} | {r['p_value']:.2g} | {'**yes**' if r['regressed'] else 'no'} |"
                  for r in rows]
    lines += ["", "## Data", "",
              f"- merged folder: `{merge.data_dir}`",
              f"- {merge.old_images} images from the champion's data (each on its recorded side of the split)",
              f"- {merge.new_images} new images: " + ", ".join(f"{n} {s}" for s, n in sorted(merge.new_per_split.items())),
              f"- {merge.already_known} already known (same bytes), {len(merge.conflicts)} conflicting labels left out, "
              f"{merge.skipped} unusable files"]
    if merge.labels_added:
        lines.append(f"- new classes: {', '.join(merge.labels_added)} (the challenger's head was re-initialised)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- retrain


@dataclass
class RetrainResult:
    champion_run: Path
    challenger_run: Path
    merge: MergeSummary
    comparison: Comparison
    promoted: bool
    decision: str
    champion_version: str | None
    challenger_version: str | None
    report: dict[str, Path]
    seconds: float

    def summary(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "promoted": self.promoted,
            "decision": self.decision,
            "reasons": c.reasons,
            "champion": {"run": str(self.champion_run), "version": self.champion_version,
                         "accuracy": c.champion["accuracy"],
                         "accuracy_on_champion_held_out": c.champion["accuracy_on_champion_held_out"]},
            "challenger": {"run": str(self.challenger_run), "version": self.challenger_version,
                           "accuracy": c.challenger["accuracy"],
                           "accuracy_on_champion_held_out": c.challenger["accuracy_on_champion_held_out"]},
            "held_out": {"split": c.split, "images": c.images, "champion_held_out_images": c.old_images},
            "data": {"merged": str(self.merge.data_dir), "old_images": self.merge.old_images,
                     "new_images": self.merge.new_images, "new_per_split": self.merge.new_per_split,
                     "already_known": self.merge.already_known, "conflicts": len(self.merge.conflicts),
                     "labels_added": self.merge.labels_added},
            "report": {k: str(v) for k, v in self.report.items()},
            "seconds": round(self.seconds, 1),
        }


def _challenger_name(out: Path, champion_name: str) -> str:
    base = re.sub(r"-r\d+$", "", champion_name)
    for i in range(1, 10_000):
        name = f"{base}-r{i}"
        if not (out / name).exists() and not (out / f"{name}.data").exists():
            return name
    raise DataError(f"could not find a free challenger name under '{out}'; pass --name")


def _check_champion(registry: Registry, run_dir: Path, log: Log) -> str:
    """The champion's version id, registering and promoting ``run_dir`` if the registry is empty."""
    champion = registry.champion()
    if champion is None:
        version = registry.register(run_dir, note="first champion")
        registry.promote(version.version, reason="first champion (baseline for retraining)")
        log(f"registry {registry.root}: {run_dir} registered as {version.version} and made champion")
        return version.version
    if champion.run != run_dir.resolve():
        raise RegistryError(
            f"'{run_dir}' is not the champion of registry '{registry.root}' ({champion.version} is: {champion.run}); "
            "retrain the champion (omit RUN), or promote RUN first"
        )
    return champion.version


def retrain(
    champion_run: Path | None,
    new_data: Path,
    *,
    registry: Registry | None = None,
    out: Path = Path("runs"),
    name: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    gate: GateSettings = GateSettings(),
    device: str | None = None,
    workers: int | None = None,
    promote: bool = True,
    progress: bool = True,
    log: Log = print,
) -> RetrainResult:
    """Train a challenger on the champion's data plus ``new_data``, compare, gate,
    and (with a registry, unless ``promote=False``) promote it if it passes.

    Args:
        champion_run: the champion's run folder; None = the registry's champion.
        new_data: a folder of labelled images (class sub-folders, or train/ val/).
        registry: where versions and the champion pointer live (optional).
        out, name: where the challenger run goes [default: runs/<champion>-rN].
        epochs, lr: override the champion's settings for the challenger.
        gate: the promotion rule.
        device, workers: override the champion's settings.
    """
    from duet.config import TrainConfig, config_from_dict
    from duet.monitor.profile import profile_dir, write_profile
    from duet.runs import RunPaths, load_run, read_config
    from duet.train.loop import train

    t0 = time.perf_counter()
    if champion_run is None:
        if registry is None or registry.champion() is None:
            raise RegistryError("no RUN given and no champion in the registry; pass the champion's run folder")
        champion_run = registry.champion().run  # type: ignore[union-attr]
    champion = load_run(champion_run)
    champion_version = _check_champion(registry, champion.paths.root, log) if registry is not None else None
    out = Path(out)
    name = name or _challenger_name(out, champion.paths.root.name)
    if (out / name).exists():
        raise DataError(f"run '{out / name}' already exists and runs are never overwritten; pick another --name")
    merge = merge_data(champion.paths.root, Path(new_data), out / f"{name}.data", progress=progress)
    log(f"merged data: {merge.old_images} champion images + {merge.new_images} new "
        f"({', '.join(f'{n} {s}' for s, n in sorted(merge.new_per_split.items()))}) -> {merge.data_dir}")
    if merge.conflicts:
        log(f"left out {len(merge.conflicts)} new images whose bytes the champion knows under another label "
            f"(e.g. {merge.conflicts[0]['path']}: '{merge.conflicts[0]['label']}' vs '{merge.conflicts[0]['known_as']}')")

    cfg = read_config(RunPaths(champion.paths.root))
    cfg.update({"data_dir": str(merge.data_dir), "weights": str(champion.paths.best.resolve()),
                "out": str(out), "name": name})
    if "recipe" in TrainConfig.model_fields and not merge.labels_added:
        # The head already fits these classes: continue training every layer from
        # the first step rather than the head-first fine-tune a weights file implies.
        cfg["recipe"] = "scratch"
    for key, value in (("epochs", epochs), ("lr", lr), ("device", device), ("workers", workers)):
        if value is not None:
            cfg[key] = value
    config = config_from_dict(cfg, f"{champion.paths.config} (+ retrain overrides)")
    log(f"training challenger {out / name} warm-started from {champion.paths.best}")
    trained = train(config, progress=progress, log=log)
    challenger_dir = Path(trained.run_dir)

    comparison = compare_runs(champion.paths.root, challenger_dir, gate=gate, device=config.device,
                              workers=config.workers if config.workers >= 0 else None, progress=progress)
    passed = comparison.promote
    promoted = False
    challenger_version = None
    blocked = ""
    if passed and registry is not None and promote:
        if not (profile_dir(challenger_dir) / "profile.json").is_file():
            write_profile(challenger_dir, device=config.device, workers=config.workers if config.workers >= 0 else None,
                          progress=progress, log=log)
        if registry.get(champion_version).export_dir is not None:  # type: ignore[arg-type]
            blocked = _export(challenger_dir, progress=progress, log=log)
        if not blocked:
            gate_record = {"champion": champion_version, "split": comparison.split, "images": comparison.images,
                           "champion_accuracy": comparison.champion["accuracy"],
                           "challenger_accuracy": comparison.challenger["accuracy"], "reasons": comparison.reasons}
            version = registry.register(challenger_dir, parent=champion_version, note="challenger; passed the gate",
                                        gate=gate_record)
            registry.promote(version.version, reason="; ".join(comparison.reasons))
            challenger_version, promoted = version.version, True
    if promoted:
        decision = "promoted"
    elif blocked:
        decision = f"passed the gate, not promoted: {blocked}"
        comparison.reasons.append(blocked)
    elif passed:
        decision = "passed the gate (not promoted: " + ("no registry)" if registry is None else "--no-promote)")
    else:
        decision = "kept champion"
    report_dir = challenger_dir / "retrain"
    document = {
        "decision": decision,
        "promoted": promoted,
        "passed_gate": passed,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "champion": {"run": str(champion.paths.root), "version": champion_version},
        "challenger": {"run": str(challenger_dir), "version": challenger_version},
        "comparison": asdict(comparison),
        "merge": {**asdict(merge), "data_dir": str(merge.data_dir)},
    }
    report = {
        "json": write_json_atomic(report_dir / "comparison.json", document),
        "md": write_text_atomic(report_dir / "comparison.md", _markdown(
            comparison, champion=champion.paths.root, challenger=challenger_dir, merge=merge, decision=decision)),
    }
    if registry is not None:
        registry.log("retrain", decision=decision, champion=champion_version, challenger=str(challenger_dir),
                     version=challenger_version, reasons=comparison.reasons, report=str(report["md"]))
    log(f"{decision}: " + "; ".join(comparison.reasons))
    return RetrainResult(champion.paths.root, challenger_dir, merge, comparison, promoted, decision, champion_version,
                         challenger_version, report, time.perf_counter() - t0)


def _export(run_dir: Path, *, progress: bool, log: Log) -> str:
    """Export a challenger the way its champion was (servers load exports); "" when
    it worked, else why it did not (a challenger that cannot be served is not promoted)."""
    from duet.errors import DuetError
    from duet.export.exporter import export_run

    try:
        export_run(run_dir, progress=progress, log=log)
    except DuetError as e:
        return f"its export failed ({e.message})"
    return ""


# --------------------------------------------------------------------------- watch


@dataclass
class WatchDecision:
    """One iteration of the loop: what was seen and what was done, in a sentence."""

    iteration: int
    time: str
    champion: str
    new_images: int
    drift: bool | None
    drift_sentence: str
    action: str  # "none" | "wait_for_labels" | "retrain"
    new_data: str = ""  # fingerprint of the new images (sha256 over their sorted hashes)
    promoted: bool | None = None
    challenger: str | None = None
    reasons: list[str] = field(default_factory=list)
    sentence: str = ""


def watch(
    data_dir: Path,
    *,
    registry: Registry,
    live_dir: Path | None = None,
    interval: float = 300.0,
    iterations: int | None = None,
    min_new: int = 1,
    drift_settings: Any = None,
    gate: GateSettings = GateSettings(),
    out: Path = Path("runs"),
    epochs: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = False,
    log: Log = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[WatchDecision]:
    """The closed loop: check, and when drift meets new labels, retrain -> gate -> promote.

    Each iteration reads the registry's champion, counts the images in
    ``data_dir`` (labelled) it has not trained on, and tests for drift the
    images of ``live_dir`` (unlabelled recent traffic) or, without it, those
    new labelled images. Drift and at least ``min_new`` new labelled images ->
    ``retrain``; drift without them -> a request for labels; no drift ->
    nothing. Every decision is logged and appended to ``registry/events.jsonl``.

    Args:
        iterations: stop after this many (None: run until interrupted).
        interval: seconds between iterations.
    """
    from duet.monitor.check import drift_check

    decisions: list[WatchDecision] = []
    i = 0
    while iterations is None or i < iterations:
        i += 1
        champion = registry.champion()
        if champion is None:
            raise RegistryError(f"registry '{registry.root}' has no champion to watch; "
                                "`duet registry promote RUN` first")
        fresh, manifest, _, _ = new_labelled_rows(champion.run, Path(data_dir), progress=progress)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fingerprint = hashlib.sha256("".join(sorted(r.sha256 for r in fresh)).encode()).hexdigest()[:16]
        d = WatchDecision(i, now, champion.version, len(fresh), None, "", "none", fingerprint if fresh else "")
        tried = fresh and any(e.get("event") == "watch" and e.get("action") == "retrain" and
                              e.get("champion") == champion.version and e.get("new_data") == fingerprint
                              for e in registry.events())
        source: Path | None = None
        if tried:
            d.sentence = (f"{champion.version}: these {len(fresh)} new images were already tried and the challenger "
                          "was refused; waiting for more labelled data")
        elif live_dir is not None:
            source = Path(live_dir)
        elif fresh:
            source = _fresh_folder(fresh, manifest.data_dir,
                                   registry.root / "watch" / f"{champion.version}-{i}-{int(time.time())}")
        if source is None:
            d.sentence = d.sentence or f"{champion.version}: no new images in {data_dir}; nothing to do"
        else:
            check = drift_check(champion.run, source, settings=drift_settings, device=device, workers=workers,
                                progress=progress, log=log)
            d.drift, d.drift_sentence = check.result.drift, check.result.sentence
            if not check.result.drift:
                d.sentence = f"{champion.version}: no drift ({check.result.sentence}); nothing to do"
            elif len(fresh) < min_new:
                d.action = "wait_for_labels"
                d.sentence = (f"{champion.version}: drift detected but only {len(fresh)} new labelled images "
                              f"(need {min_new}); label recent images into {data_dir}")
            else:
                d.action = "retrain"
                result = retrain(champion.run, Path(data_dir), registry=registry, out=out, epochs=epochs, gate=gate,
                                 device=device if device != "auto" else None, workers=workers,
                                 progress=progress, log=log)
                d.promoted, d.challenger, d.reasons = result.promoted, str(result.challenger_run), result.comparison.reasons
                d.sentence = (f"{champion.version}: drift and {len(fresh)} new labelled images -> retrained "
                              f"{result.challenger_run.name}: "
                              + (f"promoted as {result.challenger_version}" if result.promoted else "kept the champion"))
        registry.log("watch", **asdict(d))
        log(d.sentence)
        decisions.append(d)
        if iterations is None or i < iterations:
            sleep(interval)
    return decisions


def _fresh_folder(rows: list[Any], data_dir: Path, root: Path) -> Path:
    """A folder of links to just the new images (drift is tested on them, not on all of data_dir)."""
    for r in rows:
        _link(data_dir / r.path, root / r.label / f"{r.sha256[:20]}{Path(r.path).suffix.lower()}")
    return root
