"""``duet drift RUN --data DIR`` as a function: is a folder of new images still
like the run's reference profile?

``DIR`` is any folder of images (class sub-folders are allowed and ignored:
drift needs no labels). The run's model embeds and classifies them, the
detectors compare them with ``RUN/profile``, and a report is written to
``RUN/drift/<folder name>/`` (``report.html``, ``report.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.imageio import IMAGE_EXTENSIONS
from duet.errors import DataError
from duet.monitor.drift import DriftResult, DriftSettings, Observations, compare
from duet.monitor.profile import ReferenceProfile, ensure_profile, write_profile

DEFAULT_MAX_IMAGES = 1000


@dataclass
class FolderDrift:
    result: DriftResult
    observations: Observations
    paths: list[Path]  # the images compared, in observation order
    failed: list[dict[str, str]]  # unreadable files and why
    files: dict[str, Path]  # report paths ({} when no report was written)
    total_images: int  # images found in the folder (before --max-images)


def list_images(data_dir: str | Path) -> list[Path]:
    """Every image file under ``data_dir`` (recursively; hidden files and folders skipped), sorted."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder '{data_dir}' does not exist or is not a folder; pass a folder of images")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not found:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"No images found in {root}. Allowed formats: {allowed}; put the new images there "
            "(any layout; class sub-folders are fine)"
        )
    return sorted(found)


def observe_files(
    run_dir: str | Path,
    paths: Sequence[Path],
    profile: ReferenceProfile,
    *,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = 0,
    progress: bool = True,
    model: Any = None,
) -> tuple[Observations, list[Path], list[dict[str, str]]]:
    """Embed, classify and measure ``paths`` with the run's model.

    Returns ``(observations, kept paths, failures)``: unreadable files are left
    out of the observations and listed with their reason.
    """
    from duet.artifacts.run_dir import load_run
    from duet.data.contract import default_workers
    from duet.evaluation.inference import load_model
    from duet.monitor.embed import embed_files
    from duet.system.device import resolve_device

    run = load_run(run_dir)
    dev = resolve_device(device)
    model = model if model is not None else load_model(run, dev)
    from duet.training.precision import recorded_or

    got = embed_files(
        model,
        run,
        list(paths),
        dev,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        progress=progress,
        description="drift: embed",
        precision=recorded_or(None, run.precision, dev),
    )
    ok = got.ok
    failed = [{"path": str(p), "reason": e} for p, e in zip(paths, got.errors) if e]
    kept = [p for p, good in zip(paths, ok) if good]
    if not kept:
        return Observations(), [], failed
    features, stats = got.features[ok], got.image_stats[ok]
    outliers = None if profile.outliers is None else profile.outliers.score(features, stats)
    probabilities = got.probabilities[ok]
    obs = Observations.from_probabilities(
        probabilities,
        embeddings=profile.project(features),
        image_stats=stats,
        outlier_scores=outliers,
        accuracy_scores=profile.accuracy_scores(probabilities),
    )
    return obs, kept, failed


def drift_check(
    run_dir: str | Path,
    data_dir: str | Path,
    *,
    out_dir: Path | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    settings: DriftSettings | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    report: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FolderDrift:
    """Compare the images in ``data_dir`` with the run's reference profile.

    Args:
        run_dir: a run folder (its profile is written first if missing).
        data_dir: a folder of images, any layout.
        out_dir: where the report goes [default: RUN/drift/<folder name>/].
        max_images: compare a seeded random sample of at most this many images.
        settings: detector settings (calibrated defaults).
        report: write report.html and report.json.
    """
    from duet.artifacts.run_dir import load_run, slug

    say = log or (lambda _m: None)
    run = load_run(run_dir)
    if max_images < 2:
        raise DataError(f"`max_images` must be at least 2. Received: max_images={max_images}")
    paths = list_images(data_dir)
    total = len(paths)
    if total > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(total, max_images, replace=False))
        paths = [paths[i] for i in pick]
        say(f"comparing a random sample of {max_images} of the {total} images (--max-images)")
    profile = ensure_profile(run.paths.root, device=device, workers=workers, progress=progress, log=say)
    if profile is None:  # no validation split: a reference of test or training images, with a warning
        profile = write_profile(run.paths.root, device=device, workers=workers, progress=progress, log=say)
    obs, kept, failed = observe_files(
        run.paths.root, paths, profile, device=device, batch_size=batch_size, workers=workers, progress=progress
    )
    if not kept:
        raise DataError(
            f"none of the {len(paths)} images in '{data_dir}' could be read "
            f"(e.g. {failed[0]['path']}: {failed[0]['reason']})"
        )
    result = compare(profile, obs, settings)
    files: dict[str, Path] = {}
    if report:
        out = Path(out_dir) if out_dir is not None else run.paths.root / "drift" / slug(Path(data_dir).resolve().name)
        context = {
            "run": str(run.paths.root),
            "model": run.model,
            "data": str(Path(data_dir).resolve()),
            "images compared": len(kept),
            "images in folder": total,
            "unreadable": len(failed),
            "reference": f"{profile.n_reference} held-out images ({profile.meta.get('reference', {}).get('split', '?')} split)",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        from duet.monitor.drift_report import write_drift_report  # matplotlib only when a report is written

        files = write_drift_report(
            result,
            profile,
            obs,
            kept,
            out,
            context=context,
            failed=failed,
            title=f"Drift of {Path(data_dir).name} vs {run.paths.root.name}",
        )
    return FolderDrift(result, obs, kept, failed, files, total)
