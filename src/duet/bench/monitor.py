"""``duet bench monitor``: how the drift monitor and the label-free accuracy
estimate do on shifts they were not built for, measured against true labels.

The digits setup (the one in tests/test_drift.py, which imports
``digits_champion`` from here): scikit-learn's 1,797 handwritten digits at
16 x 16 px; a seeded random 500 train the champion (test_resnet,
``--val-split 0.3``: ~150 held-out images become the reference profile), the
other 1,297 are the unseen pool. ``--run RUN --pool DIR`` measures any run
instead (DIR: class sub-folders named like the run's labels).

Each pool is observed once (``prepare``): the clean pool, each image shift of
:mod:`duet.bench.shifts` applied to it, and as many photo crops (an unrelated
domain), each through ``observe_files`` (what ``duet drift`` computes) and
``embed_files`` (the class probabilities the estimators need). Windows are
then resampled from the observed rows, seeded (``measure``):

- ``clean``: unchanged unseen images (every alarm is false);
- one scenario per shift and ``photo``: the whole window shifted;
- ``prior``: clean images, the first three classes drawn 4x as often;
- ``mix10_photo`` ... ``mix25_scale``: 10 % or 25 % of the window replaced
  by photo crops or scaled digits.

Per scenario and window size the result holds the share of windows flagged by
the verdict and by each detector the monitor ran (whatever ``result.detectors``
names), the windows' mean true accuracy (a photo crop counts as wrong), and per
estimator of :mod:`duet.monitor.estimate` (fitted on the reference sample) the
mean and largest |estimated - true accuracy| and the mean signed error.
``summarise`` makes the JSON result, ``markdown`` its tables; ``bench_monitor``
does all of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.errors import ConfigError, DataError, RunError
from duet.monitor.drift import DriftSettings, Observations, compare
from duet.monitor.estimate import METHODS, AccuracyEstimator
from duet.monitor.profile import ReferenceProfile

TRAIN_IMAGES = 500
DIGITS_SIZE = 16
CHAMPION_ARGS = [
    "--model",
    "test_resnet",
    "--image-size",
    str(DIGITS_SIZE),
    "--batch-size",
    "32",
    "--workers",
    "0",
    "--epochs",
    "6",
    "--lr",
    "0.005",
    "--val-split",
    "0.3",
    "--test-split",
    "0",
    "--no-hflip",
    "--quiet",
]
# --test-split 0: the ~150 held-out images stay one validation split (the reference
# profile), and test_retrain's gate grades on ~15 of the champion's own per class.
WINDOWS = (30, 100, 300)
TRIALS = 100
MIX_FRACTIONS = (0.10, 0.25)
MIX_KINDS = ("photo", "scale")
PRIOR_CLASSES = 3  # the prior-shift windows draw the first PRIOR_CLASSES labels ...
PRIOR_BOOST = 4.0  # ... this many times as often as the others
NO_LABEL = -1  # true label of a photo crop: every prediction on it is wrong


def _duet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "duet", *args], env=env, capture_output=True, text=True)


def digits_champion(base: Path, *, seed: int = 0, log: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """``(run folder, pool folder)``: the champion trained on 500 random digits and
    profiled, and the 1,297 digits it never saw (class sub-folders). Built once
    under ``base`` (``base/ready`` marks it done) and reused afterwards. ``seed``
    picks the 500 digits and seeds ``duet train`` (split, init, augmentation);
    0 is the champion of the tests."""
    run, pool, done = base / "runs" / "champ", base / "pool", base / "ready"
    if done.is_file():
        return run, pool
    from duet.data.digits import write_digits

    say = log or (lambda _m: None)
    shutil.rmtree(base, ignore_errors=True)
    write_digits(base / "all", size=DIGITS_SIZE, progress=False)
    files = sorted((base / "all").rglob("*.png"))
    order = np.random.default_rng(seed).permutation(len(files))
    for rank, i in enumerate(order):
        f = files[i]
        dest = base / ("train" if rank < TRAIN_IMAGES else "pool") / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.rename(dest)
    say(f"training the digits champion on {TRAIN_IMAGES} images under {base}")
    for args in (
        (
            "train",
            str(base / "train"),
            *CHAMPION_ARGS,
            "--seed",
            str(seed),
            "--out",
            str(base / "runs"),
            "--name",
            "champ",
        ),
        ("profile", str(run), "--workers", "0", "--quiet", "--json"),
    ):
        proc = _duet(*args)
        if proc.returncode != 0:
            raise RunError(
                f"`duet {args[0]}` failed while building the digits champion under {base}: {proc.stderr.strip()[-500:]}"
            )
    done.write_text("ok")
    return run, pool


# --------------------------------------------------------------------------- observed pools


@dataclass
class Pool:
    """A folder's images as the monitor sees them: observations (what the drift
    detectors compare), class probabilities (what the estimators use) and the
    true label index of each row (``NO_LABEL`` for none)."""

    observations: Observations
    probabilities: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def concat(parts: Sequence[Observations]) -> Observations:
    """Rows of several observations, in order (a field absent from one is dropped)."""
    kw: dict[str, Any] = {}
    for f in fields(Observations):
        values = [getattr(p, f.name) for p in parts]
        kw[f.name] = None if any(v is None for v in values) else np.concatenate(values)
    return Observations(**kw)


def observe_pool(
    run_dir: Path, paths: Sequence[Path], labels: np.ndarray, profile: ReferenceProfile, model: Any, device: Any
) -> Pool:
    """One forward pass for the drift observations (``observe_files``, exactly what
    ``duet drift`` computes) and one for the probabilities (``embed_files``)."""
    from duet.artifacts.run_dir import load_run
    from duet.monitor.check import observe_files
    from duet.monitor.embed import embed_files

    obs, _kept, failed = observe_files(
        run_dir, paths, profile, device=str(device), workers=0, progress=False, model=model
    )
    if failed:
        raise DataError(
            f"{len(failed)} pool images could not be read (e.g. {failed[0]['path']}: {failed[0]['reason']})"
        )
    got = embed_files(model, load_run(run_dir), list(paths), device, workers=0, progress=False)
    return Pool(obs, got.probabilities, np.asarray(labels, dtype=np.int64))


def reference_sample(
    run_dir: Path, profile: ReferenceProfile, model: Any, device: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, labels)`` of the profile's reference images (the estimators' fit sample)."""
    from duet.artifacts.run_dir import load_run
    from duet.monitor.embed import embed_files

    root = Path(profile.meta["data_dir"])
    got = embed_files(model, load_run(run_dir), [root / f for f in profile.files], device, workers=0, progress=False)
    if not got.ok.all():
        raise DataError(f"reference images of the profile could not be read under {root}; did the data folder move?")
    return got.probabilities, profile.true_labels


def pool_labels(paths: Sequence[Path], root: Path, labels: Sequence[str]) -> np.ndarray:
    """Label index of each file from its class folder (the first folder under ``root``)."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({Path(p).relative_to(root).parts[0] for p in paths} - set(index))
    if unknown or any(len(Path(p).relative_to(root).parts) < 2 for p in paths):
        raise DataError(
            f"the pool's images must sit in class folders named like the run's labels "
            f"({', '.join(labels)}); found {', '.join(unknown) or 'images outside class folders'} "
            f"in {root}"
        )
    return np.array([index[Path(p).relative_to(root).parts[0]] for p in paths], dtype=np.int64)


def build_pools(
    run_dir: Path,
    pool_dir: Path,
    work_dir: Path,
    profile: ReferenceProfile,
    model: Any,
    device: Any,
    *,
    max_images: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Pool]:
    """``{"clean": ..., <each shift>: ..., "photo": ...}``, each observed once
    (at most ``max_images`` pool images, a seeded sample). Shifted images are
    written under ``work_dir`` (replaced on each call)."""
    from duet.bench.shifts import SHIFTS, write_photos, write_shifted
    from duet.monitor.check import list_images

    say = log or (lambda _m: None)
    paths = list_images(pool_dir)
    if max_images is not None and len(paths) > max_images:
        paths = [paths[i] for i in np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))]
    labels = pool_labels(paths, Path(pool_dir).expanduser(), profile.labels)
    shutil.rmtree(work_dir, ignore_errors=True)
    say(f"observing {len(paths)} pool images, clean and under {len(SHIFTS)} shifts, and {len(paths)} photo crops")
    pools = {"clean": observe_pool(run_dir, paths, labels, profile, model, device)}
    for k, name in enumerate(SHIFTS):
        shifted = write_shifted(paths, Path(pool_dir).expanduser(), work_dir / name, name, seed=seed + k)
        pools[name] = observe_pool(run_dir, shifted, labels, profile, model, device)
    from PIL import Image

    with Image.open(paths[0]) as first:
        size = first.width
    photos = write_photos(work_dir / "photo", len(paths), size, seed=seed)
    pools["photo"] = observe_pool(run_dir, photos, np.full(len(photos), NO_LABEL), profile, model, device)
    return pools


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Scenario:
    """How a window is drawn: ``fraction`` of its rows from pool ``source``, the
    rest clean; ``prior``: the clean rows under the class-prior shift."""

    name: str
    source: str = "clean"
    fraction: float = 1.0
    prior: bool = False


def scenarios(shifts: Sequence[str]) -> list[Scenario]:
    """clean, each shift and photo in full, the prior shift, then the mixtures."""
    return [
        Scenario("clean"),
        *(Scenario(s, s) for s in (*shifts, "photo")),
        Scenario("prior", prior=True),
        *(Scenario(f"mix{round(100 * f)}_{k}", k, f) for f in MIX_FRACTIONS for k in MIX_KINDS),
    ]


def _choose(n: int, k: int, rng: np.random.Generator, p: np.ndarray | None = None) -> np.ndarray:
    return rng.choice(n, k, replace=k > n, p=p)


def draw_window(
    scenario: Scenario, pools: dict[str, Pool], size: int, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """The window's rows as ``[(pool name, row indices), ...]``."""
    clean = pools["clean"]
    shifted = size if scenario.source == "clean" else round(scenario.fraction * size)
    weights = None
    if scenario.prior:
        w = np.where(clean.labels < PRIOR_CLASSES, PRIOR_BOOST, 1.0)
        weights = w / w.sum()
    parts = [(scenario.source, _choose(len(pools[scenario.source]), shifted, rng, weights))]
    if size > shifted:
        parts.append(("clean", _choose(len(clean), size - shifted, rng)))
    return parts


def measure_cell(
    scenario: Scenario,
    size: int,
    pools: dict[str, Pool],
    profile: ReferenceProfile,
    estimators: dict[str, AccuracyEstimator],
    scores: dict[str, dict[str, np.ndarray]],
    *,
    trials: int,
    settings: DriftSettings,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """``trials`` windows of ``size`` rows: detection shares, true accuracy and estimate errors."""
    verdict = insufficient = 0
    flagged: dict[str, int] = {}
    true_acc: list[float] = []
    est: dict[str, list[float]] = {m: [] for m in estimators}
    for t in range(trials):
        parts = draw_window(scenario, pools, size, rng)
        obs = concat([pools[name].observations.take(idx) for name, idx in parts])
        result = compare(profile, obs, replace(settings, seed=settings.seed + t))
        verdict += result.drift is True
        insufficient += result.drift is None
        for d in result.detectors:
            flagged[d.detector] = flagged.get(d.detector, 0) + (d.drift is True)
        probs = np.concatenate([pools[name].probabilities[idx] for name, idx in parts])
        labels = np.concatenate([pools[name].labels[idx] for name, idx in parts])
        true_acc.append(float(np.mean(probs.argmax(1) == labels)))
        for m, e in estimators.items():
            est[m].append(e.estimate(np.concatenate([scores[m][name][idx] for name, idx in parts]))["accuracy"])
    truth = np.array(true_acc)
    return {
        "scenario": scenario.name,
        "window": size,
        "trials": trials,
        "verdict": verdict / trials,
        "insufficient": insufficient / trials,
        "detectors": {k: v / trials for k, v in flagged.items()},
        "true_accuracy": float(truth.mean()),
        "estimates": {
            m: {
                "mean_estimate": float(np.mean(v)),
                "bias": float(np.mean(v) - truth.mean()),
                "mean_abs_error": float(np.mean(np.abs(np.array(v) - truth))),
                "max_abs_error": float(np.max(np.abs(np.array(v) - truth))),
            }
            for m, v in est.items()
        },
    }


# --------------------------------------------------------------------------- the bench


def _check_args(
    run_dir: Path | None, pool_dir: Path | None, windows: Sequence[int], trials: int, max_images: int | None
) -> None:
    if (run_dir is None) != (pool_dir is None):
        raise ConfigError(
            "`--run` and `--pool` come together (a run and a folder of labelled images it never saw); "
            f"received run={run_dir}, pool={pool_dir}. Pass both, or neither for the digits setup"
        )
    if not windows or min(windows) < 2:
        raise ConfigError(f"`windows` must be sizes of at least 2, e.g. 30,100,300. Received: windows={list(windows)}")
    if trials < 1:
        raise ConfigError(f"`trials` must be at least 1. Received: trials={trials}")
    if max_images is not None and max_images < 2:
        raise ConfigError(f"`max_images` must be at least 2. Received: max_images={max_images}")


@dataclass
class Prepared:
    """Everything the windows are drawn from: the run's profile, the observed pools
    and the estimators fitted on the profile's reference sample."""

    run_dir: Path
    pool_dir: Path
    profile: ReferenceProfile
    pools: dict[str, Pool]
    estimators: dict[str, AccuracyEstimator]
    setup_seed: int | None  # None: a run passed in, not the digits setup
    environment: dict[str, str]


def prepare(
    run_dir: Path | None = None,
    pool_dir: Path | None = None,
    *,
    work_dir: Path,
    max_images: int | None = None,
    seed: int = 0,
    setup_seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> Prepared:
    """Train the digits champion if no run is given, fit the estimators, observe the pools."""
    from duet.artifacts.run_dir import load_run
    from duet.bench.data import environment
    from duet.evaluation.inference import load_model
    from duet.monitor.profile import ensure_profile, write_profile
    from duet.system.device import resolve_device

    say = log or (lambda _m: None)
    given = run_dir is not None
    if run_dir is None or pool_dir is None:
        name = "digits-champion" + (f"-seed{setup_seed}" if setup_seed else "")
        run_dir, pool_dir = digits_champion(Path(work_dir) / name, seed=setup_seed, log=say)
    dev = resolve_device(device)
    run = load_run(run_dir)
    profile = ensure_profile(run.paths.root, device=device, workers=0, progress=False, log=say)
    if profile is None:  # a run without validation images: a reference of test or training images
        profile = write_profile(run.paths.root, device=device, workers=0, progress=False, log=say)
    model = load_model(run, dev)
    ref_p, ref_y = reference_sample(run.paths.root, profile, model, dev)
    estimators = {m: AccuracyEstimator.fit(ref_p, ref_y, m) for m in METHODS}
    pools = build_pools(
        run.paths.root,
        Path(pool_dir),
        Path(work_dir) / "shifted",
        profile,
        model,
        dev,
        max_images=max_images,
        seed=seed,
        log=say,
    )
    return Prepared(
        run.paths.root,
        Path(pool_dir).resolve(),
        profile,
        pools,
        estimators,
        None if given else setup_seed,
        environment(dev),
    )


def measure(
    prepared: Prepared,
    *,
    windows: Sequence[int] = WINDOWS,
    trials: int = TRIALS,
    seed: int = 0,
    settings: DriftSettings | None = None,
    only: Sequence[Scenario] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per scenario (every one, or ``only``) and window size (``measure_cell``)."""
    from duet.bench.shifts import SHIFTS

    say = log or (lambda _m: None)
    settings = settings or DriftSettings()
    p = prepared
    scores = {m: {name: e.score(pool.probabilities) for name, pool in p.pools.items()} for m, e in p.estimators.items()}
    rows = []
    for k, scenario in enumerate(scenarios(list(SHIFTS))):
        if only is not None and scenario not in only:
            continue
        say(f"windows: {scenario.name}")
        for size in windows:
            rng = np.random.default_rng([seed, k, size])
            rows.append(
                measure_cell(
                    scenario, size, p.pools, p.profile, p.estimators, scores, trials=trials, settings=settings, rng=rng
                )
            )
    return rows


def summarise(
    prepared: Prepared, rows: list[dict[str, Any]], *, trials: int, seed: int, settings: DriftSettings | None = None
) -> dict[str, Any]:
    """The JSON-able result: environment, setup, the fitted estimators and the rows."""
    p = prepared
    return {
        "environment": {**p.environment, "time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
        "setup": {
            "run": str(p.run_dir),
            "pool": str(p.pool_dir),
            "pool_images": len(p.pools["clean"]),
            "reference_images": p.profile.n_reference,
            "reference_accuracy": next(iter(p.estimators.values())).reference_accuracy,
            "windows": sorted({r["window"] for r in rows}),
            "trials": trials,
            "seed": seed,
            "setup_seed": p.setup_seed,
            "settings": asdict(settings or DriftSettings()),
        },
        "estimators": {m: e.to_dict() for m, e in p.estimators.items()},
        "rows": rows,
    }


def bench_monitor(
    run_dir: Path | None = None,
    pool_dir: Path | None = None,
    *,
    work_dir: Path,
    windows: Sequence[int] = WINDOWS,
    trials: int = TRIALS,
    max_images: int | None = None,
    seed: int = 0,
    setup_seed: int = 0,
    settings: DriftSettings | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the monitor on every scenario x window size (see the module docstring).

    Args:
        run_dir, pool_dir: a run and labelled images it never saw; both None: the
            digits setup, trained once under ``work_dir/digits-champion[-seed<setup_seed>]``.
        work_dir: where the champion and the shifted images are written.
        windows: window sizes; trials: windows drawn per scenario and size.
        max_images: observe at most this many pool images (a seeded sample) [default: all].
        seed: seeds the shifts, the photo crops and the windows.
        setup_seed: ``digits_champion``'s seed (another champion on other digits).
        settings: drift detector settings [default: the calibrated defaults].
    """
    _check_args(run_dir, pool_dir, windows, trials, max_images)
    prepared = prepare(
        run_dir,
        pool_dir,
        work_dir=work_dir,
        max_images=max_images,
        seed=seed,
        setup_seed=setup_seed,
        device=device,
        log=log,
    )
    rows = measure(prepared, windows=windows, trials=trials, seed=seed, settings=settings, log=log)
    return summarise(prepared, rows, trials=trials, seed=seed, settings=settings)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(result: dict[str, Any]) -> str:
    """The detection table (every window size) and the estimate table (largest window)."""
    rows = result["rows"]
    detectors = list(dict.fromkeys(d for r in rows for d in r["detectors"]))
    lines = [
        "Detection: share of windows flagged (clean: false alarms)",
        "",
        "| scenario | window | true acc | verdict | " + " | ".join(detectors) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(detectors),
    ]
    for r in rows:
        cells = [_pct(r["detectors"][d]) if d in r["detectors"] else "-" for d in detectors]
        verdict = _pct(r["verdict"]) + (f" ({_pct(r['insufficient'])} insufficient)" if r["insufficient"] else "")
        lines.append(
            f"| {r['scenario']} | {r['window']} | {_pct(r['true_accuracy'])} | {verdict} | " + " | ".join(cells) + " |"
        )
    largest = max(r["window"] for r in rows)
    methods = list(result["estimators"])
    lines += [
        "",
        f"Estimated accuracy at window {largest}: mean / max |estimated - true| in points "
        f"over {result['setup']['trials']} windows",
        "",
        "| scenario | true acc | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for r in (r for r in rows if r["window"] == largest):
        cells = [
            f"{100 * r['estimates'][m]['mean_abs_error']:.1f} / {100 * r['estimates'][m]['max_abs_error']:.1f}"
            for m in methods
        ]
        lines.append(f"| {r['scenario']} | {100 * r['true_accuracy']:.1f}% | " + " | ".join(cells) + " |")
    s = result["setup"]
    temperature = next(iter(result["estimators"].values()))["temperature"]
    lines += [
        "",
        f"reference: {s['reference_images']} held-out images, accuracy {100 * s['reference_accuracy']:.1f}%, "
        f"temperature {temperature:.2f}; pool: {s['pool_images']} unseen images",
    ]
    return "\n".join(lines)
