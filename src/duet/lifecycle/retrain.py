"""Retraining behind a champion/challenger gate (`duet retrain`); the loop that runs it is
:mod:`duet.lifecycle.watch`.

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
4. **Gate** (:mod:`duet.lifecycle.gate`). Promote only if the challenger's
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
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from duet.artifacts.registry import Registry, RegistryError
from duet.errors import DataError
from duet.lifecycle.gate import Comparison, GateSettings, compare_predictions, markdown
from duet.lifecycle.merge import MergeSummary, known_hashes, merge_data
from duet.system.atomic import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from duet.training.config import TrainConfig

Log = Callable[[str], None]


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
    and apply the gate (:func:`duet.lifecycle.gate.compare_predictions`). Labels are
    compared by name, so a challenger with a new class is graded fairly (the
    champion simply never predicts it)."""
    from duet.artifacts.run_dir import load_run
    from duet.data.contract import Sample
    from duet.data.scan import read_manifest
    from duet.evaluation.inference import load_model, predict_samples
    from duet.system.device import resolve_device

    champion, challenger = load_run(champion_run), load_run(challenger_run)
    manifest = read_manifest(challenger.paths.manifest, challenger.data_dir)
    usable = manifest.usable()
    split = "test" if any(r.split == "test" for r in usable) else "val"
    rows = [r for r in usable if r.split == split]
    if not rows:
        raise DataError(
            f"the merged data has no {split} images to compare the models on; "
            "the champion was trained with --val-split 0 and the new data has no val/ folder"
        )
    old_hashes = set(known_hashes(champion.paths.root))
    dev = resolve_device(device)
    samples = [Sample(manifest.data_dir / r.path, -1) for r in rows]
    predicted = []
    failed = np.zeros(len(rows), dtype=bool)
    for who, run in (("champion", champion), ("challenger", challenger)):
        preds = predict_samples(
            load_model(run, dev),
            run,
            samples,
            dev,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            description=f"compare: {who}",
        )
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
    lines += [
        "",
        "## Data",
        "",
        f"- merged folder: `{merge.data_dir}`",
        f"- {merge.old_images} images from the champion's data (each on its recorded side of the split)",
        f"- {merge.new_images} new images: " + ", ".join(f"{n} {s}" for s, n in sorted(merge.new_per_split.items())),
        f"- {merge.already_known} already known (same bytes), {len(merge.conflicts)} conflicting labels left out, "
        f"{merge.skipped} unusable files",
    ]
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
            "champion": {
                "run": str(self.champion_run),
                "version": self.champion_version,
                "accuracy": c.champion["accuracy"],
                "accuracy_on_champion_held_out": c.champion["accuracy_on_champion_held_out"],
            },
            "challenger": {
                "run": str(self.challenger_run),
                "version": self.challenger_version,
                "accuracy": c.challenger["accuracy"],
                "accuracy_on_champion_held_out": c.challenger["accuracy_on_champion_held_out"],
            },
            "held_out": {"split": c.split, "images": c.images, "champion_held_out_images": c.old_images},
            "drop_test": {
                k: c.drop_test.get(k)
                for k in (
                    "where",
                    "images",
                    "losses",
                    "gains",
                    "drop",
                    "p_value",
                    "margin",
                    "refused",
                    "min_detectable_drop",
                    "power",
                )
            },
            "data": {
                "merged": str(self.merge.data_dir),
                "old_images": self.merge.old_images,
                "new_images": self.merge.new_images,
                "new_per_split": self.merge.new_per_split,
                "already_known": self.merge.already_known,
                "conflicts": len(self.merge.conflicts),
                "labels_added": self.merge.labels_added,
            },
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
    from duet.artifacts.run_dir import load_run
    from duet.monitor.profile import ensure_profile
    from duet.training.loop import train

    t0 = time.perf_counter()
    champion = load_run(_champion_run(champion_run, registry))
    champion_version = _check_champion(registry, champion.paths.root, log) if registry is not None else None
    out = Path(out)
    name = name or _challenger_name(out, champion.paths.root.name)
    if (out / name).exists():
        raise DataError(f"run '{out / name}' already exists and runs are never overwritten; pick another --name")
    merge = _merge(champion.paths.root, Path(new_data), out / f"{name}.data", progress=progress, log=log)
    overrides = {"epochs": epochs, "lr": lr, "device": device, "workers": workers}
    config = _challenger_config(champion.paths.root, merge, out, name, overrides)
    log(f"training challenger {out / name} warm-started from {champion.paths.best}")
    from duet.tracking import sink_for

    challenger_dir = Path(train(config, progress=progress, log=log, tracker=sink_for(config.track, out)).run_dir)
    run_workers = config.workers if config.workers >= 0 else None
    # Training writes no drift profile; the challenger gets one as any trained run does.
    ensure_profile(challenger_dir, device=config.device, workers=run_workers, progress=progress, log=log)
    comparison = compare_runs(
        champion.paths.root, challenger_dir, gate=gate, device=config.device, workers=run_workers, progress=progress
    )
    challenger_version, blocked = None, ""  # promoted as, or why a passing challenger was not
    if comparison.promote and registry is not None and promote:
        challenger_version, blocked = _register_and_promote(
            registry, champion_version, challenger_dir, comparison, config, progress=progress, log=log
        )
    result = RetrainResult(
        champion_run=champion.paths.root,
        challenger_run=challenger_dir,
        merge=merge,
        comparison=comparison,
        promoted=challenger_version is not None,
        decision=_decision(comparison, challenger_version, blocked, registry),
        champion_version=champion_version,
        challenger_version=challenger_version,
        report={},
        seconds=0.0,
    )
    result.report = _write_report(result, registry)
    log(f"{result.decision}: " + "; ".join(comparison.reasons))
    result.seconds = time.perf_counter() - t0
    return result


def _write_report(result: RetrainResult, registry: Registry | None) -> dict[str, Path]:
    """``<challenger>/retrain/comparison.{json,md}``, written either way; with a
    registry, the decision goes to its event log too."""
    comparison, merge = result.comparison, result.merge
    document = {
        "decision": result.decision,
        "promoted": result.promoted,
        "passed_gate": comparison.promote,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "champion": {"run": str(result.champion_run), "version": result.champion_version},
        "challenger": {"run": str(result.challenger_run), "version": result.challenger_version},
        "comparison": asdict(comparison),
        "merge": {**asdict(merge), "data_dir": str(merge.data_dir)},
    }
    text = _markdown(
        comparison,
        champion=result.champion_run,
        challenger=result.challenger_run,
        merge=merge,
        decision=result.decision,
    )
    report_dir = result.challenger_run / "retrain"
    report = {
        "json": write_json_atomic(report_dir / "comparison.json", document),
        "md": write_text_atomic(report_dir / "comparison.md", text),
    }
    if registry is not None:
        registry.log(
            "retrain",
            decision=result.decision,
            champion=result.champion_version,
            challenger=str(result.challenger_run),
            version=result.challenger_version,
            reasons=comparison.reasons,
            report=str(report["md"]),
        )
    return report


def _champion_run(champion_run: Path | None, registry: Registry | None) -> Path:
    """The run folder given, else the registry's champion."""
    if champion_run is not None:
        return champion_run
    champion = None if registry is None else registry.champion()
    if champion is None:
        raise RegistryError("no RUN given and no champion in the registry; pass the champion's run folder")
    return champion.run


def _merge(champion_dir: Path, new_data: Path, dest: Path, *, progress: bool, log: Log) -> MergeSummary:
    """Merge the champion's data with ``new_data`` into ``dest`` and say what happened."""
    merge = merge_data(champion_dir, new_data, dest, progress=progress)
    log(
        f"merged data: {merge.old_images} champion images + {merge.new_images} new "
        f"({', '.join(f'{n} {s}' for s, n in sorted(merge.new_per_split.items()))}) -> {merge.data_dir}"
    )
    if merge.conflicts:
        first = merge.conflicts[0]
        log(
            f"left out {len(merge.conflicts)} new images whose bytes the champion knows under another label "
            f"(e.g. {first['path']}: '{first['label']}' vs '{first['known_as']}')"
        )
    return merge


def _challenger_config(
    champion_dir: Path, merge: MergeSummary, out: Path, name: str, overrides: dict[str, Any]
) -> TrainConfig:
    """The champion's settings on the merged data, warm-started from its best weights;
    ``overrides`` that are not None replace the champion's values."""
    from duet.artifacts.run_dir import RunPaths, read_config
    from duet.training.config import TrainConfig, config_from_dict

    paths = RunPaths(champion_dir)
    cfg = read_config(paths)
    cfg.update({"data_dir": str(merge.data_dir), "weights": str(paths.best.resolve()), "out": str(out), "name": name})
    if "recipe" in TrainConfig.model_fields and not merge.labels_added:
        # The head already fits these classes: continue training every layer from
        # the first step rather than the head-first fine-tune a weights file implies.
        cfg["recipe"] = "scratch"
    cfg.update({key: value for key, value in overrides.items() if value is not None})
    return config_from_dict(cfg, f"{paths.config} (+ retrain overrides)")


def _register_and_promote(
    registry: Registry,
    champion_version: str | None,
    challenger_dir: Path,
    comparison: Comparison,
    config: TrainConfig,
    *,
    progress: bool,
    log: Log,
) -> tuple[str | None, str]:
    """Register and promote a challenger that passed the gate: ``(its version, "")``,
    or ``(None, why not)`` when it cannot be served (its export failed)."""
    from duet.monitor.profile import profile_dir, write_profile

    workers = config.workers if config.workers >= 0 else None
    if not (profile_dir(challenger_dir) / "profile.json").is_file():
        # No validation split: a served model still needs a reference (test or training images).
        write_profile(challenger_dir, device=config.device, workers=workers, progress=progress, log=log)
    if registry.get(champion_version).export_dir is not None:  # type: ignore[arg-type]
        blocked = _export(challenger_dir, progress=progress, log=log)
        if blocked:
            return None, blocked
    gate_record = {
        "champion": champion_version,
        "split": comparison.split,
        "images": comparison.images,
        "champion_accuracy": comparison.champion["accuracy"],
        "challenger_accuracy": comparison.challenger["accuracy"],
        "min_detectable_drop": comparison.drop_test.get("min_detectable_drop"),
        "reasons": comparison.reasons,
    }
    version = registry.register(
        challenger_dir, parent=champion_version, note="challenger; passed the gate", gate=gate_record
    )
    registry.promote(version.version, reason="; ".join(comparison.reasons))
    from duet.tracking.mirror import mirror_champion

    mirror_champion(registry)  # MLflow's alias `champion` follows, when the challenger was tracked
    return version.version, ""


def _decision(comparison: Comparison, challenger_version: str | None, blocked: str, registry: Registry | None) -> str:
    """One line for the report and the registry log (adds ``blocked`` to the reasons)."""
    if challenger_version is not None:
        return "promoted"
    if blocked:
        comparison.reasons.append(blocked)
        return f"passed the gate, not promoted: {blocked}"
    if comparison.promote:
        return "passed the gate (not promoted: " + ("no registry)" if registry is None else "--no-promote)")
    return "kept champion"


def _export(run_dir: Path, *, progress: bool, log: Log) -> str:
    """Export a challenger the way its champion was (servers load exports); "" when
    it worked, else why it did not (a challenger that cannot be served is not promoted)."""
    from duet.errors import DuetError
    from duet.exporting.exporter import export_run

    try:
        res = export_run(run_dir, progress=progress, log=log)
    except DuetError as e:
        return f"its export failed ({e.message})"
    from duet.tracking.stages import log_export

    log_export(run_dir, res.export_dir)
    return ""
