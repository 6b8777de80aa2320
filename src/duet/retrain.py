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
4. **Gate** (:mod:`duet.monitor.gate`). Promote only if the challenger's
   overall accuracy is at least the champion's (minus ``tolerance``, 0 by
   default), it is not significantly worse (exact one-sided McNemar, 5%) by
   more than ``drop_margin`` (2 points) on the champion's own held-out images
   (so a batch of wrongly labelled new data cannot buy its way in by being
   graded on its own labels), and no class's recall drops significantly by
   more than ``class_margin`` (5 points) where a class has enough images to
   test. Each test reports its minimum detectable drop.
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
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.atomic import write_json_atomic, write_text_atomic
from duet.errors import DataError
from duet.monitor.gate import Comparison, GateSettings, compare_predictions, markdown
from duet.registry import Registry, RegistryError

Log = Callable[[str], None]


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
    fresh, same, conflicts = fresh_rows(run_dir, manifest)
    return fresh, manifest, same, conflicts


def fresh_rows(run_dir: Path, manifest: Any) -> tuple[list[Any], int, list[dict[str, str]]]:
    """Usable rows of a scanned ``manifest`` the run has not seen: ``(rows, already known, conflicts)``."""
    known = known_hashes(run_dir)
    fresh, same, conflicts = [], 0, []
    for row in manifest.usable():
        if row.sha256 not in known:
            fresh.append(row)
        elif known[row.sha256] == row.label:
            same += 1
        else:
            conflicts.append({"path": row.path, "label": row.label, "known_as": known[row.sha256]})
    return fresh, same, conflicts


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
    and apply the gate (:func:`duet.monitor.gate.compare_predictions`). Labels are
    compared by name, so a challenger with a new class is graded fairly (the
    champion simply never predicts it)."""
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
    return compare_predictions(true, predicted[0][keep], predicted[1][keep], is_old, gate, split=split)


def _markdown(c: Comparison, *, champion: Path, challenger: Path, merge: MergeSummary, decision: str) -> str:
    lines = markdown(c, champion=champion, challenger=challenger, decision=decision)
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
            "drop_test": {k: c.drop_test.get(k) for k in ("where", "images", "losses", "gains", "drop", "p_value",
                                                          "margin", "refused", "min_detectable_drop", "power")},
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
                           "challenger_accuracy": comparison.challenger["accuracy"],
                           "min_detectable_drop": comparison.drop_test.get("min_detectable_drop"),
                           "reasons": comparison.reasons}
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
    # no_data_folder | no_labelled_images | no_new_images | already_tried | no_live_images
    # | insufficient | no_drift | drift
    state: str = ""
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
    nothing. A ``data_dir`` (or ``live_dir``) that does not exist yet or holds
    no images is waited for, not an error. Every decision is logged and
    appended to ``registry/events.jsonl``, except that a waiting state in which
    nothing was checked (no folder, no labels, nothing new) is announced once
    when the loop enters it, not at every tick.

    Args:
        iterations: stop after this many (None: run until interrupted).
        interval: seconds between iterations.
    """
    from duet.monitor.check import drift_check

    def check(run: Path, source: Path) -> Any:
        return drift_check(run, source, settings=drift_settings, device=device, workers=workers, progress=progress,
                           log=log)

    def retrain_champion(run: Path) -> RetrainResult:
        return retrain(run, Path(data_dir), registry=registry, out=out, epochs=epochs, gate=gate,
                       device=device if device != "auto" else None, workers=workers, progress=progress, log=log)

    # Unbounded, the loop keeps only its last 1000 decisions (the events keep every announced one).
    decisions: deque[WatchDecision] = deque(maxlen=None if iterations is not None else 1000)
    said: tuple[str, str, str] | None = None
    i = 0
    while iterations is None or i < iterations:
        i += 1
        champion = registry.champion()
        if champion is None:
            raise RegistryError(f"registry '{registry.root}' has no champion to watch; "
                                "`duet registry promote RUN` first")
        d = _watch_once(i, champion, Path(data_dir), None if live_dir is None else Path(live_dir), registry,
                        min_new=min_new, check=check, retrain_champion=retrain_champion, progress=progress)
        state = (d.state, d.champion, d.new_data)
        if d.state not in _SAID_ONCE or state != said:
            registry.log("watch", **asdict(d))
            log(d.sentence)
        said = state
        decisions.append(d)
        if iterations is None or i < iterations:
            sleep(interval)
    return list(decisions)


# States in which nothing was checked: announced (logged, and written to the
# events) when the loop enters them, not again at every tick while it waits.
_SAID_ONCE = frozenset({"no_data_folder", "no_labelled_images", "no_new_images", "already_tried",
                        "no_live_images"})


def _labelled(data_dir: Path, progress: bool) -> tuple[Any, str]:
    """``(scan of data_dir, "")``, or ``(None, why there is nothing to scan yet)``:
    a folder that does not exist yet or holds no labelled image is something to
    wait for, not an error (a path that is a file still is one)."""
    from duet.data.scan import scan

    if not data_dir.exists():
        return None, "no_data_folder"
    try:
        return scan(data_dir, progress=progress), ""
    except DataError:
        if not data_dir.is_dir():
            raise
        return None, "no_labelled_images"  # the one error scan has left for an existing folder


def _has_images(folder: Path) -> bool:
    from duet.monitor.check import list_images

    try:
        list_images(folder)
    except DataError:
        return False
    return True


def _watch_once(i: int, champion: Any, data_dir: Path, live_dir: Path | None, registry: Registry, *, min_new: int,
                check: Callable[[Path, Path], Any], retrain_champion: Callable[[Path], RetrainResult],
                progress: bool) -> WatchDecision:
    """One iteration of ``watch``: look, decide, act (retrain at most once)."""
    v = champion.version
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    d = WatchDecision(i, now, v, 0, None, "", "none")
    manifest, waiting = _labelled(data_dir, progress)
    fresh = fresh_rows(champion.run, manifest)[0] if manifest is not None else []
    d.new_images = len(fresh)
    d.new_data = hashlib.sha256("".join(sorted(r.sha256 for r in fresh)).encode()).hexdigest()[:16] if fresh else ""
    tried = fresh and any(e.get("event") == "watch" and e.get("action") == "retrain" and e.get("champion") == v
                          and e.get("new_data") == d.new_data for e in registry.events())
    source: Path | None = None
    if tried:
        d.state = "already_tried"
        d.sentence = (f"{v}: these {len(fresh)} new images were already tried and the challenger was refused; "
                      "waiting for more labelled data")
    elif live_dir is not None:
        source = live_dir if _has_images(live_dir) else None
        d.state = "" if source is not None else "no_live_images"
    elif fresh:
        source = _fresh_folder(fresh, manifest.data_dir, registry.root / "watch" / f"{v}-{d.new_data}")
    if source is None:
        d.state = d.state or waiting or "no_new_images"
        d.action = "wait_for_labels" if waiting else d.action
        d.sentence = d.sentence or _idle_sentence(v, d.state, data_dir, live_dir)
        return d
    result = check(champion.run, source)
    d.drift, d.drift_sentence = result.result.drift, result.result.sentence
    if d.drift is None:  # too few images to judge
        d.state = "insufficient"
        d.sentence = f"{v}: {d.drift_sentence}; waiting for more images in {live_dir or data_dir}"
    elif not d.drift:
        d.state = "no_drift"
        d.sentence = f"{v}: no drift ({d.drift_sentence}); nothing to do"
    elif len(fresh) < min_new:
        d.state, d.action = "drift", "wait_for_labels"
        d.sentence = (f"{v}: drift detected but only {len(fresh)} new labelled images (need {min_new}); "
                      f"label recent images into {data_dir}")
    else:
        d.state, d.action = "drift", "retrain"
        done = retrain_champion(champion.run)
        d.promoted, d.challenger, d.reasons = done.promoted, str(done.challenger_run), done.comparison.reasons
        d.sentence = (f"{v}: drift and {len(fresh)} new labelled images -> retrained {done.challenger_run.name}: "
                      + (f"promoted as {done.challenger_version}" if done.promoted else "kept the champion"))
    return d


def _idle_sentence(version: str, state: str, data_dir: Path, live_dir: Path | None) -> str:
    if state == "no_data_folder":
        return (f"{version}: '{data_dir}' does not exist yet; waiting for labelled images there "
                "(one sub-folder per class)")
    if state == "no_labelled_images":
        return f"{version}: no labelled images in '{data_dir}' yet (one sub-folder per class); waiting for labels"
    if state == "no_live_images":
        return f"{version}: no images in '{live_dir}' yet (missing or empty); waiting for recent traffic"
    return f"{version}: no new images in {data_dir}; nothing to do"


def _fresh_folder(rows: list[Any], data_dir: Path, root: Path) -> Path:
    """A folder of links to just the new images (drift is tested on them, not on all
    of data_dir); named by their fingerprint, so the same images reuse one folder."""
    for r in rows:
        dest = root / r.label / f"{r.sha256[:20]}{Path(r.path).suffix.lower()}"
        if not dest.exists():
            _link(data_dir / r.path, dest)
    return root
