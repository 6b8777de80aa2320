"""The reference profile: what "like the training data" means, saved with the run.

```
RUN/profile/
  profile.json     schema "duet.profile/1": labels, where the sample came from,
                   the PCA and kernel settings, summaries, sha256 of reference.npz
  reference.npz    plain arrays (loaded with allow_pickle=False):
                     embeddings   float32 (n, k)  reference features projected by the PCA
                     classes      int64   (n,)    predicted class
                     confidences  float32 (n,)    top-1 probability
                     image_stats  float32 (n, 6)  STAT_NAMES
                     true_labels  int64   (n,)    the manifest label
                     pca_mean     float32 (D,)    feature mean of the fit sample
                     pca_components float32 (k, D) rows = principal axes
                     explained_variance_ratio float32 (k,)
                     ood_* and outlier_scores  the per-image outlier model and the
                                   reference's scores (duet.monitor.outliers)
```

The reference sample is the run's held-out split (``val``; ``test`` or, as a
last resort, ``train`` when there is none), at most ``max_reference`` images:
the model never trained on them, so their confidences are what production
images from the same distribution get. The PCA (``components`` axes, 32 by
default) and the kernel bandwidth are fitted on a sample of the *training*
split instead, so that the projection is independent of the reference sample
and the permutation test stays exact; so is the outlier model (its distances
are fitted on the training sample, its threshold on the reference's scores).
Profiles written before the outlier model existed load without it (the
outlier detector then reports itself skipped). ``profile.json`` also holds
the label-free accuracy estimator (:mod:`duet.monitor.estimate`), fitted on
the reference's probabilities and labels.

``write_profile(run_dir)`` makes it (``duet profile RUN``);
``ensure_profile(run_dir)`` makes it once, after training, when the run has
validation images (training itself never writes it);
``ReferenceProfile.load(run_dir / "profile")`` reads it without torch.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.errors import DataError, RunError
from duet.monitor.estimate import AccuracyEstimator
from duet.monitor.imagestats import STAT_NAMES
from duet.monitor.outliers import ARRAY_NAMES as OUTLIER_ARRAYS
from duet.monitor.outliers import OutlierModel, fit_outlier_model
from duet.monitor.signals import DriftSettings, Observations
from duet.monitor.stattests import fit_pca, median_heuristic_sigma2
from duet.system.atomic import write_bytes_atomic, write_json_atomic

SCHEMA = "duet.profile/1"
PROFILE_DIR = "profile"
JSON_FILE = "profile.json"
ARRAYS_FILE = "reference.npz"
DEFAULT_COMPONENTS = 32
DEFAULT_MAX_REFERENCE = 1000
DEFAULT_MAX_FIT = 1000

_ARRAYS = (
    "embeddings",
    "classes",
    "confidences",
    "image_stats",
    "true_labels",
    "pca_mean",
    "pca_components",
    "explained_variance_ratio",
)


class ProfileError(RunError):
    """A profile that is missing, damaged or does not match its run."""


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference sample and the projection, as arrays (see the module docstring)."""

    labels: list[str]
    stat_names: tuple[str, ...]
    sigma2: float
    embeddings: np.ndarray
    classes: np.ndarray
    confidences: np.ndarray
    image_stats: np.ndarray
    true_labels: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    explained_variance_ratio: np.ndarray
    files: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    outliers: OutlierModel | None = None
    accuracy: AccuracyEstimator | None = None

    @property
    def n_reference(self) -> int:
        return int(len(self.classes))

    @property
    def n_components(self) -> int:
        return int(self.pca_components.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.pca_components.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        """Raw penultimate features (N, D) -> the profile's PCA coordinates (N, k)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must have shape (N, {self.feature_dim}) (the model's penultimate layer); "
                f"got {features.shape}"
            )
        return (features - self.pca_mean) @ self.pca_components.T

    def observations(self) -> Observations:
        scores = None if self.outliers is None else self.outliers.reference_scores
        return Observations(
            embeddings=self.embeddings,
            classes=self.classes,
            confidences=self.confidences,
            image_stats=self.image_stats,
            outlier_scores=scores,
        )

    def accuracy_scores(self, probabilities: np.ndarray) -> np.ndarray | None:
        """Per-image scores of the label-free accuracy estimator (None without one)."""
        return None if self.accuracy is None else self.accuracy.score(probabilities)

    # ------------------------------------------------------------------ files

    def save(self, directory: Path) -> Path:
        """Write reference.npz, then profile.json (which names the npz's sha256),
        each atomically: a reader sees the old profile or the new one."""
        directory = Path(directory)
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {name: getattr(self, name) for name in _ARRAYS}
        arrays.update({} if self.outliers is None else self.outliers.arrays())
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        write_bytes_atomic(directory / ARRAYS_FILE, data)
        document = {
            "schema": SCHEMA,
            **self.meta,
            "labels": list(self.labels),
            "stat_names": list(self.stat_names),
            "kernel": {"name": "gaussian", "sigma2": self.sigma2, "heuristic": "median of squared distances / 2"},
            "pca": {
                "components": self.n_components,
                "feature_dim": self.feature_dim,
                "explained_variance": float(self.explained_variance_ratio.sum()),
            },
            "outliers": None if self.outliers is None else self.outliers.summary(),
            "accuracy_estimator": None if self.accuracy is None else self.accuracy.to_dict(),
            "reference_files": list(self.files),
            "arrays": {"file": ARRAYS_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        }
        write_json_atomic(directory / JSON_FILE, document)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ReferenceProfile:
        """Read a profile folder (``RUN/profile``); raises ProfileError with what to do."""
        directory = Path(directory)
        hint = f"create it with `duet profile {directory.parent}`"
        meta_path, arrays_path = directory / JSON_FILE, directory / ARRAYS_FILE
        if not meta_path.is_file():
            raise ProfileError(f"no drift profile at '{directory}' ({JSON_FILE} is missing); {hint}")
        try:
            doc = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ProfileError(f"'{meta_path}' is damaged ({type(e).__name__}); {hint}") from e
        if doc.get("schema") != SCHEMA:
            raise ProfileError(f"'{meta_path}' has schema {doc.get('schema')!r}, expected {SCHEMA!r}; {hint}")
        try:
            data = arrays_path.read_bytes()
        except OSError as e:
            raise ProfileError(f"cannot read '{arrays_path}' ({e.strerror or e}); {hint}") from e
        if hashlib.sha256(data).hexdigest() != doc.get("arrays", {}).get("sha256"):
            raise ProfileError(f"'{arrays_path}' does not match {JSON_FILE} (changed or half-written); {hint}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
                ood = {name: npz[name] for name in OUTLIER_ARRAYS} if doc.get("outliers") else None
        except (KeyError, ValueError, OSError) as e:
            raise ProfileError(f"'{arrays_path}' is damaged ({type(e).__name__}: {e}); {hint}") from e
        outliers = None if ood is None else OutlierModel.from_arrays(ood, rate=float(doc["outliers"]["rate"]))
        try:
            accuracy = AccuracyEstimator.from_dict(doc["accuracy_estimator"]) if doc.get("accuracy_estimator") else None
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"'{meta_path}' has a damaged accuracy estimator ({e}); {hint}") from e
        meta = {
            k: v
            for k, v in doc.items()
            if k
            not in (
                "schema",
                "labels",
                "stat_names",
                "kernel",
                "pca",
                "reference_files",
                "arrays",
                "outliers",
                "accuracy_estimator",
            )
        }
        return cls(
            labels=list(doc["labels"]),
            stat_names=tuple(doc["stat_names"]),
            sigma2=float(doc["kernel"]["sigma2"]),
            files=list(doc.get("reference_files", [])),
            meta=meta,
            root=directory,
            outliers=outliers,
            accuracy=accuracy,
            **arrays,
        )


def profile_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PROFILE_DIR


def load_profile(run_dir: str | Path) -> ReferenceProfile:
    """The profile of a run folder (``RUN/profile``)."""
    return ReferenceProfile.load(profile_dir(run_dir))


def ensure_profile(
    run_dir: str | Path,
    *,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ReferenceProfile | None:
    """The run's profile: loaded when ``RUN/profile/`` exists, else written first.

    Training does not write the profile; whoever trains calls this afterwards
    (``duet train``, the Python API, ``duet retrain``), and ``duet drift`` calls
    it before comparing. A run without validation images gets no profile here:
    None, and nothing is written (``write_profile`` would fall back to test or
    training images; call it explicitly for that). A tabular run gets its own
    profile, ``RUN/profile/tabular.json`` (:mod:`duet.monitor.tabular_profile`),
    a text run ``RUN/profile/text.json`` (:mod:`duet.monitor.text_profile`),
    and None is returned.
    """
    from duet.training.tabular_run import is_tabular_run

    if is_tabular_run(Path(run_dir)):
        from duet.monitor.tabular_profile import ensure_tabular_profile

        ensure_tabular_profile(run_dir, log=log)
        return None
    from duet.training.text_run import is_text_run

    if is_text_run(Path(run_dir)):
        from duet.monitor.text_profile import ensure_text_profile

        ensure_text_profile(run_dir, log=log)
        return None
    if (profile_dir(run_dir) / JSON_FILE).is_file():
        return load_profile(run_dir)
    from duet.artifacts.run_dir import load_run
    from duet.data.scan import read_manifest

    run = load_run(run_dir)
    if not any(r.split == "val" for r in read_manifest(run.paths.manifest, run.data_dir).usable()):
        return None
    log(f"{run.paths.root} has no drift profile yet; writing it (once) to {profile_dir(run.paths.root)}")
    return write_profile(run.paths.root, device=device, workers=workers, progress=progress, log=log)


# --------------------------------------------------------------------------- writing


def _samples(
    usable: list[Any], max_reference: int, max_fit: int, seed: int, root: Path, say: Callable[[str], None]
) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
    """``((reference split, rows), (fit split, rows))``: the reference from the
    first held-out split there is (val, test, else train, with a warning), the fit
    sample from train; seeded subsamples of at most ``max_reference`` / ``max_fit``."""
    by_split: dict[str, list[Any]] = {}
    for row in usable:
        by_split.setdefault(row.split, []).append(row)
    ref_split = next((s for s in ("val", "test", "train") if by_split.get(s)), None)
    if ref_split is None:
        raise DataError(f"run '{root}' has no usable image in its manifest to build a drift profile from")
    if ref_split == "train":
        say(
            "warning: the run has no held-out images; the drift reference uses training images, whose "
            "confidences are higher than new images will get (expect more confidence alarms)"
        )
    fit_split = "train" if by_split.get("train") and ref_split != "train" else ref_split
    rng = np.random.default_rng(seed)

    def sample(rows: list[Any], limit: int) -> list[Any]:
        rows = sorted(rows, key=lambda r: r.path)
        if len(rows) > limit:
            rows = [rows[i] for i in np.sort(rng.choice(len(rows), limit, replace=False))]
        return rows

    return (ref_split, sample(by_split[ref_split], max_reference)), (fit_split, sample(by_split[fit_split], max_fit))


def write_profile(
    run_dir: str | Path,
    *,
    components: int = DEFAULT_COMPONENTS,
    max_reference: int = DEFAULT_MAX_REFERENCE,
    max_fit: int = DEFAULT_MAX_FIT,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    precision: str | None = None,
) -> ReferenceProfile:
    """Compute and write ``RUN/profile/`` for a finished run (see the module docstring).

    Args:
        run_dir: a run folder made by ``duet train``.
        components: PCA axes kept (at most the fit sample size - 1).
        max_reference: held-out images in the reference sample (seeded subsample beyond).
        max_fit: training images the PCA and kernel bandwidth are fitted on.
        device, batch_size, workers: how to run the model (workers: loader
            processes; default one per core, at most 8).
        seed: chooses the subsamples.
        precision: auto | fp32 | bf16 for the forward pass; None = the run's
            recorded precision (the one `duet drift` embeds new images in).

    Raises:
        RunError: not a finished run. DataError: no usable image to profile.
    """
    # torch only here, so that loading a profile (the server) never imports it.
    from duet.artifacts.run_dir import load_run
    from duet.data.contract import default_workers
    from duet.data.scan import read_manifest
    from duet.evaluation.inference import load_model
    from duet.system.device import resolve_device
    from duet.training.precision import recorded_or

    say = log or (lambda _msg: None)
    run = load_run(run_dir)
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    (ref_split, ref_rows), (fit_split, fit_rows) = _samples(
        manifest.usable(), max_reference, max_fit, seed, run.paths.root, say
    )
    dev = resolve_device(device)
    chosen = recorded_or(precision, run.precision, dev)
    say(f"precision {chosen.reason}")
    embed = _Embedder(
        model=load_model(run, dev),
        run=run,
        data_dir=manifest.data_dir,
        device=dev,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        progress=progress,
        precision=chosen,
    )
    fit = embed(fit_rows, fit_split, "fit")
    ref = embed(ref_rows, ref_split, "reference")
    if fit_split == ref_split:
        say(f"note: the PCA is fitted on the reference sample itself (no separate {fit_split} images)")
    profile = _fit_profile(run, fit, ref, components=components, seed=seed, data_dir=manifest.data_dir)
    profile.save(profile_dir(run.paths.root))
    say(
        f"drift profile: {profile.n_reference} {ref_split} images, {profile.n_components} PCA components "
        f"({100 * float(profile.explained_variance_ratio.sum()):.0f}% of feature variance) "
        f"-> {profile_dir(run.paths.root)}"
    )
    return ReferenceProfile.load(profile_dir(run.paths.root))


@dataclass(frozen=True)
class _Sample:
    """The readable images of one sample, as the model sees them: manifest rows,
    raw features (N, D), probabilities (N, C), image statistics (N, 6)."""

    split: str
    rows: list[Any]
    features: np.ndarray
    probabilities: np.ndarray
    image_stats: np.ndarray
    unreadable: int


@dataclass(frozen=True)
class _Embedder:
    """Runs the run's model over manifest rows (:func:`duet.monitor.embed.embed_files`)."""

    model: Any
    run: Any
    data_dir: Path
    device: Any
    batch_size: int
    workers: int
    progress: bool
    precision: Any

    def __call__(self, rows: list[Any], split: str, role: str) -> _Sample:
        """The readable ones of ``rows``; DataError when none is."""
        from duet.monitor.embed import embed_files

        what = f"profile: {role} ({split})"
        got = embed_files(
            self.model,
            self.run,
            [self.data_dir / r.path for r in rows],
            self.device,
            batch_size=self.batch_size,
            workers=self.workers,
            progress=self.progress,
            description=what,
            precision=self.precision,
        )
        ok = got.ok
        if not ok.any():
            raise DataError(
                f"none of the {len(rows)} {what} images of '{self.run.paths.root}' could be read "
                f"(e.g. {rows[0].path}: {got.errors[0]}); did the data folder move?"
            )
        return _Sample(
            split=split,
            rows=[r for r, good in zip(rows, ok) if good],
            features=got.features[ok],
            probabilities=got.probabilities[ok],
            image_stats=got.image_stats[ok],
            unreadable=int((~ok).sum()),
        )


def _fit_profile(
    run: Any, fit: _Sample, ref: _Sample, *, components: int, seed: int, data_dir: Path
) -> ReferenceProfile:
    """The PCA, kernel bandwidth and outlier model fitted on ``fit``; the reference
    arrays and the accuracy estimator from ``ref`` (held out)."""
    index = {label: i for i, label in enumerate(run.labels)}
    mean, axes, ratio = fit_pca(fit.features, components)
    classes = ref.probabilities.argmax(1).astype(np.int64)
    true = np.array([index.get(r.label, -1) for r in ref.rows], dtype=np.int64)
    outliers = fit_outlier_model(
        fit.features,
        np.array([index.get(r.label, -1) for r in fit.rows], dtype=np.int64),
        fit.image_stats,
        ref.features,
        ref.image_stats,
        num_classes=len(run.labels),
    )
    return ReferenceProfile(
        labels=list(run.labels),
        stat_names=STAT_NAMES,
        sigma2=median_heuristic_sigma2((fit.features - mean) @ axes.T, seed=seed),
        embeddings=((ref.features - mean) @ axes.T).astype(np.float32),
        classes=classes,
        confidences=ref.probabilities[np.arange(len(classes)), classes].astype(np.float32),
        image_stats=ref.image_stats.astype(np.float32),
        true_labels=true,
        pca_mean=mean,
        pca_components=axes,
        explained_variance_ratio=ratio,
        files=[r.path for r in ref.rows],
        outliers=outliers,
        # Temperature and estimator fitted on the held-out reference (never on training images).
        accuracy=(
            AccuracyEstimator.fit(ref.probabilities, true) if np.sum(true >= 0) >= 2 and ref.split != "train" else None
        ),
        meta={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": str(run.paths.root),
            "model": run.model,
            "data_dir": str(data_dir),
            "preprocess": run.preprocess.to_dict(),
            "reference": {
                "split": ref.split,
                "images": len(ref.rows),
                "unreadable": ref.unreadable,
                "accuracy": float(np.mean(classes == true)) if len(true) else None,
            },
            "fit": {"split": fit.split, "images": len(fit.rows)},
            "defaults": asdict(DriftSettings()),
        },
    )
