"""`duet audit privacy RUN`: can an attacker tell the run's training images from
images it never trained on? A membership-inference audit of any run, DP or not.

```
RUN/audit/
  privacy.json   per attack: ROC AUC, TPR at 1 % (0.1 %) FPR, the empirical ε lower bound, the ROC
  privacy.md     the same for people, next to the run's guaranteed ε when it trained with DP-SGD
  roc.png        the ROC of each attack, log-log (the low-FPR regime that matters) and linear
```

Members are the run's training split; non-members its validation and test
splits (never trained on; validation chose the epoch, which leaks at most one
number about them). The larger set is subsampled (seeded) to the size of the
smaller, so an AUC of 0.5 means "no better than a coin". Every image is scored
with the evaluation preprocessing (the centre crop, no augmentation) in fp32.

Attacks (``duet.audit.membership``): the loss threshold, always; with
``shadow=K`` the offline LiRA, whose K shadow models train with the run's own
config (including its DP-SGD settings, if any) on stratified halves of the
non-member pool, so no shadow ever saw a member and each non-member is OUT of
one of each complementary pair; every audited image, member or not, is compared
with as many OUT shadows. The shadows live in a temporary folder under RUN/audit/
that is removed afterwards.

The ε it reports is a *lower bound from this audit*: what these attacks prove
the model leaks at 95 % confidence, never the model's true ε (a stronger attack
may prove more; a DP guarantee is the upper bound).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.run_dir import RunInfo, load_run, read_config
from duet.audit import membership
from duet.audit.report import write_outputs
from duet.data.contract import Sample
from duet.data.scan import read_manifest
from duet.errors import ConfigError, DataError, RunError
from duet.evaluation.inference import load_model, predict_samples
from duet.system.device import resolve_device
from duet.system.progress import make_progress
from duet.training.config import TrainConfig, config_from_dict
from duet.training.loop import train
from duet.training.precision import FP32
from duet.training.state import silent

DEFAULT_DELTA = 1e-5  # δ for a run without DP-SGD (the usual value for a data set of this size)
NON_MEMBER_NOTE = (
    "never trained on; validation chose the best epoch (one number about them, not their pixels), "
    "which is fine for an audit"
)


@dataclass(frozen=True)
class AuditSet:
    """The audited images: members first, then as many non-members."""

    samples: list[Sample]
    member: np.ndarray  # bool (N,)
    pool: list[Sample]  # every non-member of the run, what shadows train on
    available: dict[str, int]  # members / non_members before balancing


@dataclass
class AuditResult:
    report: dict[str, Any]
    files: dict[str, Path]


def audit_privacy(
    run_dir: Path,
    *,
    shadow: int = 0,
    shadow_epochs: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit ``run_dir`` and write RUN/audit/privacy.json, privacy.md and roc.png.

    ``shadow``: shadow models for the offline LiRA (0 = the loss attack only; else >= 2);
    ``shadow_epochs``: their epochs (default: the run's); ``max_images``: at most this
    many members and as many non-members; ``seed``: the subsample and the shadows' halves."""
    if shadow == 1 or shadow < 0:
        raise ConfigError(f"`--shadow` must be 0 (loss attack only) or at least 2. Received: --shadow={shadow}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"`--max-images` must be at least 1. Received: --max-images={max_images}")
    run = load_run(run_dir)
    audit_set = _audit_set(run, max_images, seed)
    dev = resolve_device(device)
    model = load_model(run, dev)
    probs = _probs(model, run, audit_set.samples, dev, batch_size, workers, progress, "score target")
    labels = np.array([s.label for s in audit_set.samples], dtype=np.int64)
    delta = float((run.privacy or {}).get("delta") or DEFAULT_DELTA)
    m = audit_set.member
    loss = membership.loss_scores(probs, labels)
    attacks = {
        "loss": {"name": "loss threshold (Yeom et al. 2018)", **membership.attack_metrics(loss[m], loss[~m], delta)}
    }
    shadow_info: dict[str, Any] = {"models": 0}
    if shadow:
        target_conf = membership.logit_confidence(probs, labels)
        confs, out, shadow_info = _shadows(run, audit_set, shadow, shadow_epochs, seed, device, workers, progress)
        lira = membership.offline_lira_scores(target_conf, confs, out)
        attacks["lira_offline"] = {
            "name": f"offline LiRA (Carlini et al. 2022), {shadow} shadow models",
            **membership.attack_metrics(lira[m], lira[~m], delta),
        }
    report = _report(run, audit_set, attacks, shadow_info, delta, seed)
    return AuditResult(report, write_outputs(report, run.paths.root / "audit"))


def _audit_set(run: RunInfo, max_images: int | None, seed: int) -> AuditSet:
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    index = {label: i for i, label in enumerate(run.labels)}
    rows = manifest.usable()
    by_split = {
        name: [Sample(manifest.data_dir / r.path, index[r.label], r.sha256) for r in rows if r.split in splits]
        for name, splits in (("members", ("train",)), ("non_members", ("val", "test")))
    }
    members, pool = by_split["members"], by_split["non_members"]
    if not members:
        raise RunError(f"run '{run.paths.root}' has no training images in its manifest.csv; nothing to audit")
    if not pool:
        raise RunError(
            f"run '{run.paths.root}' has no validation or test images (trained with --val-split 0 --test-split 0?): "
            "the audit needs held-out images the model never trained on"
        )
    _check_files(members + pool, manifest.data_dir)
    n = min(len(members), len(pool), max_images or len(members))
    rng = np.random.default_rng(seed)
    chosen_in = [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    chosen_out = [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
    member = np.array([True] * n + [False] * n)
    return AuditSet(chosen_in + chosen_out, member, pool, {"members": len(members), "non_members": len(pool)})


def _check_files(samples: list[Sample], data_dir: Path) -> None:
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the run's {len(samples)} training/held-out images are missing "
            f"(first: '{missing[0]}'); the audit needs the data the run trained on, in '{data_dir}'"
        )


def _probs(
    model: torch.nn.Module,
    run: RunInfo,
    samples: list[Sample],
    dev: torch.device,
    batch_size: int,
    workers: int | None,
    progress: bool,
    description: str,
) -> np.ndarray:
    """Probabilities of every sample (fp32: scores need the small probabilities exact)."""
    preds = predict_samples(
        model,
        run,
        samples,
        dev,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        description=description,
        precision=FP32,
    )
    failed = [i for i, e in enumerate(preds.errors) if e]
    if failed:
        first = failed[0]
        raise DataError(
            f"{len(failed)} audited image(s) could not be read (first: '{samples[first].path}': "
            f"{preds.errors[first]}); the run's data changed since it trained"
        )
    return preds.probs


def _shadows(
    run: RunInfo,
    audit_set: AuditSet,
    k: int,
    epochs: int | None,
    seed: int,
    device: str,
    workers: int | None,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train ``k`` shadows on stratified halves of the non-member pool and return
    their confidences on the audited images (K, N), the OUT mask (K, N) and what was done."""
    base = config_from_dict(read_config(run.paths), str(run.paths.config))
    halves = _halves(audit_set.pool, k, seed)
    out = _out_mask(halves, audit_set, seed)
    confs = np.zeros((k, len(audit_set.samples)))
    labels = np.array([s.label for s in audit_set.samples], dtype=np.int64)
    audit_dir = run.paths.root / "audit"
    audit_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shadows-", dir=audit_dir) as tmp, make_progress(progress) as bar:
        task = bar.add_task("shadow models", total=k, info="")
        for i, half in enumerate(halves):
            bar.update(task, info=f"training {i + 1}/{k} on {len(half)} images")
            shadow_run = _train_shadow(base, run, half, Path(tmp) / f"s{i}", epochs, seed + 1000 + i, device, workers)
            model = load_model(shadow_run, resolve_device(device))
            probs = _probs(model, shadow_run, audit_set.samples, resolve_device(device), 64, workers, False, "")
            confs[i] = membership.logit_confidence(_reorder(probs, shadow_run.labels, run.labels), labels)
            shutil.rmtree(Path(tmp) / f"s{i}", ignore_errors=True)
            bar.advance(task)
    info = {
        "models": k,
        "epochs": epochs or base.epochs,
        "images_each": [len(h) for h in halves],
        "trained_on": "stratified halves of the non-member pool (val + test), complementary in pairs: "
        "no shadow saw a member; every image is scored against one shadow of each pair that never saw it",
        "dp": _shadow_dp(base),
        "seconds": round(time.perf_counter() - start, 1),
        "out_per_example": {"min": int(out.sum(0).min()), "max": int(out.sum(0).max())},
    }
    return confs, out, info


def _out_mask(halves: list[list[Sample]], audit_set: AuditSet, seed: int) -> np.ndarray:
    """(K, N): True where shadow k is an OUT reference for audited image n.

    A non-member is OUT of the half of each complementary pair it is not in; a
    member is OUT of every shadow, but takes one of each pair, drawn at random,
    so both kinds are compared with as many shadows (a Gaussian fitted to more
    samples would treat members differently from non-members). An odd last
    shadow serves half of each kind, at random for members."""
    k, n = len(halves), len(audit_set.samples)
    rng = np.random.default_rng(seed + 7)
    out = np.ones((k, n), dtype=bool)
    position = {s.path: i for i, s in enumerate(audit_set.samples)}
    for i, half in enumerate(halves):
        for s in half:
            if s.path in position:
                out[i, position[s.path]] = False
    members = np.flatnonzero(audit_set.member)
    for first in range(0, k - 1, 2):
        pick = rng.integers(0, 2, len(members))
        out[first + 1 - pick, members] = False  # the other one of the pair is not used
    if k % 2:
        out[k - 1, members[rng.random(len(members)) < 0.5]] = False
    return out


def _shadow_dp(base: TrainConfig) -> str:
    if base.dp is None:
        return "none (the run trained without DP-SGD)"
    return f"the run's own DP-SGD settings (target ε={base.dp.epsilon:g}, C={base.dp.max_grad_norm:g})"


def _halves(pool: list[Sample], k: int, seed: int) -> list[list[Sample]]:
    """``k`` training sets from ``pool``: pairs of complementary halves, each class
    split in two, so every shadow has every class and every example is OUT of half."""
    by_class: dict[int, list[Sample]] = {}
    for s in pool:
        by_class.setdefault(s.label, []).append(s)
    small = [c for c, items in by_class.items() if len(items) < 2]
    if small:
        raise RunError(
            f"shadow models need at least 2 held-out images of every class; class index {small[0]} has fewer "
            "(train the run with a larger --val-split, or audit with --shadow 0)"
        )
    rng = np.random.default_rng(seed)
    sets: list[list[Sample]] = []
    for pair in range((k + 1) // 2):
        first: list[Sample] = []
        second: list[Sample] = []
        for items in by_class.values():
            order = rng.permutation(len(items))
            cut = len(items) // 2 + (pair % 2) * (len(items) % 2)  # odd classes alternate which half is larger
            first += [items[j] for j in order[:cut]]
            second += [items[j] for j in order[cut:]]
        sets += [first, second]
    return sets[:k]


def _train_shadow(
    base: TrainConfig,
    run: RunInfo,
    samples: list[Sample],
    folder: Path,
    epochs: int | None,
    seed: int,
    device: str,
    workers: int | None,
) -> RunInfo:
    """One shadow: the run's config on a folder of links to ``samples``, no held-out split."""
    data = folder / "data"
    for i, s in enumerate(samples):
        target = data / run.labels[s.label] / f"{i:06d}{s.path.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(s.path.resolve(), target)
        except OSError:  # no symlinks here (some Windows setups): copy
            shutil.copyfile(s.path, target)
    update: dict[str, Any] = {
        "data_dir": data,
        "out": folder / "runs",
        "name": "shadow",
        "val_split": 0.0,
        "test_split": 0.0,
        "seed": seed,
        "device": device,
        "cache_dir": folder / "cache",
        "patience": 0,
        "epochs": epochs or base.epochs,
    }
    if workers is not None:
        update["workers"] = workers
    config = base.model_copy(update=update)
    result = train(config, progress=False, log=silent)
    return load_run(result.run_dir)


def _reorder(probs: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    """Columns of ``probs`` (in ``have``'s label order) in ``want``'s order."""
    if have == want:
        return probs
    return probs[:, [have.index(label) for label in want]]


def _report(
    run: RunInfo,
    audit_set: AuditSet,
    attacks: dict[str, Any],
    shadow_info: dict[str, Any],
    delta: float,
    seed: int,
) -> dict[str, Any]:
    n = int(audit_set.member.sum())
    privacy = run.privacy
    return {
        "schema": "duet.audit.privacy/1",
        "run": str(run.paths.root),
        "model": run.model,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "members": {"count": n, "available": audit_set.available["members"], "source": "the train split"},
        "non_members": {
            "count": len(audit_set.samples) - n,
            "available": audit_set.available["non_members"],
            "source": "the val and test splits",
            "note": NON_MEMBER_NOTE,
        },
        "seed": seed,
        "delta": delta,
        "delta_source": "the run's DP-SGD δ" if privacy else "the default: the run has no DP-SGD δ",
        "guarantee": (
            {"epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"), "accountant": privacy.get("accountant")}
            if privacy
            else None
        ),
        "preprocessing": "evaluation: load square, centre crop, no augmentation; fp32",
        "attacks": attacks,
        "shadow": shadow_info,
        "epsilon_note": "ε_lb is a lower bound from this audit (95 % Clopper-Pearson, best threshold), "
        "not the model's true ε: stronger attacks may prove more; a DP guarantee is the upper bound",
    }
