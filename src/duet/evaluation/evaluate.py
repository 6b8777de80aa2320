"""Evaluate a run on its held-out split or on a new labelled folder.

``evaluate(run_dir)`` predicts the run's test split (or validation split when
there is no test split) and writes RUN/eval/: report.json, report.md and
confusion_matrix.png. Every result names its split and what that split means
(``describe_split``): validation chose the best epoch, so its accuracy is
optimistic; the test split took no part in training or in that choice. ``evaluate(run_dir, data_dir=DIR)`` does the same for any
folder of class sub-folders whose names are among the run's labels, writing
RUN/eval/<folder name>/.

``evaluate(run_dir, exported=Exported(...))`` measures an exported file (ONNX,
SavedModel, TFLite) with its own runtime instead of the run's PyTorch weights,
on the same images, and writes RUN/eval/<format>/ (or RUN/eval/<folder name>/<format>/),
so the PyTorch report is kept beside it. Every report names what ran the model.

A tabular run (run.json ``modality: tabular``) is handed to
``duet.evaluation.tabular_evaluate``: the same metrics and report files, on rows;
a text run (``modality: text``) to ``duet.evaluation.text_evaluate``, on documents.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from duet.artifacts.run_dir import RunInfo, load_run, slug
from duet.data.contract import Sample
from duet.data.imageio import DEFAULT_MAX_PIXELS
from duet.data.scan import read_manifest, scan
from duet.errors import ConfigError, DataError, RunError
from duet.evaluation.eval_result import EvalResult, describe_split
from duet.evaluation.inference import Exported, load_model, predict_samples
from duet.evaluation.metrics import compute_metrics, misclassified_samples
from duet.evaluation.report import write_report
from duet.system.device import resolve_device
from duet.training.curves import write_curves
from duet.training.precision import recorded_or


def _run_split_samples(run: RunInfo, split: str | None) -> tuple[list[Sample], str, Path]:
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    usable = manifest.usable()
    if split is None:
        split = "test" if any(r.split == "test" for r in usable) else "val"
    index = {label: i for i, label in enumerate(run.labels)}
    samples = [Sample(manifest.data_dir / r.path, index[r.label]) for r in usable if r.split == split]
    if not samples:
        raise RunError(
            f"run '{run.paths.root}' has no '{split}' images to evaluate "
            "(trained with --val-split 0?); pass --data DIR with labelled images"
        )
    return samples, split, manifest.data_dir


def _folder_samples(run: RunInfo, data_dir: Path, split: str | None, progress: bool) -> tuple[list[Sample], str, Path]:
    manifest = scan(data_dir, max_pixels=DEFAULT_MAX_PIXELS, progress=progress)
    usable = manifest.usable()
    unknown = sorted({r.label for r in usable} - set(run.labels))
    if unknown:
        raise DataError(
            f"class folder(s) {unknown} in '{data_dir}' are not among the model's labels {run.labels}; "
            "rename or remove them"
        )
    if split is not None:
        usable = [r for r in usable if r.split == split]
    index = {label: i for i, label in enumerate(run.labels)}
    samples = [Sample(manifest.data_dir / r.path, index[r.label]) for r in usable]
    if not samples:
        raise DataError(f"no usable labelled images in '{data_dir}'" + (f" (split '{split}')" if split else ""))
    return samples, split or "all", manifest.data_dir


def _evaluate_other_modality(
    run_dir: Path, *, data: Path | None, split: str | None, out_dir: Path | None, exported: Exported | None
) -> EvalResult | None:
    """A tabular run's evaluation (``duet.evaluation.tabular_evaluate``), a text run's
    (``duet.evaluation.text_evaluate``); None for an image run."""
    from duet.training.tabular_run import is_tabular_run
    from duet.training.text_run import is_text_run

    if is_text_run(run_dir):
        if exported is not None:
            raise ConfigError("evaluating an exported text model is not built yet; evaluate the run (no --format)")
        from duet.evaluation.text_evaluate import evaluate_text

        return evaluate_text(run_dir, data=data, split=split, out_dir=out_dir)

    if not is_tabular_run(run_dir):
        return None
    if exported is not None:
        raise ConfigError("evaluating an exported tabular model is not built yet; evaluate the run (no --format)")
    from duet.evaluation.tabular_evaluate import evaluate_tabular

    return evaluate_tabular(run_dir, data=data, split=split, out_dir=out_dir)


def evaluate(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    split: str | None = None,
    out_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    precision: str | None = None,
    exported: Exported | None = None,
) -> EvalResult:
    """``precision``: auto | fp32 | bf16; None = the run's recorded precision (run.json).
    ``exported``: run this exported model instead of the run's weights (on the CPU;
    ``device`` and ``precision`` then do not apply)."""
    other = _evaluate_other_modality(run_dir, data=data_dir, split=split, out_dir=out_dir, exported=exported)
    if other is not None:
        return other
    run = load_run(run_dir)
    if data_dir is None:
        samples, split_name, source = _run_split_samples(run, split)
        out = out_dir or run.paths.eval
    else:
        samples, split_name, source = _folder_samples(run, Path(data_dir), split, progress)
        out = out_dir or run.paths.eval / slug(Path(data_dir).resolve().name)
    if exported is not None and out_dir is None:
        out = out / exported.format
    dev = resolve_device("cpu" if exported is not None else device)
    chosen = recorded_or(precision, run.precision, dev)
    model = exported or load_model(run, dev)
    runtime = exported.describe() if exported else f"torch on {dev} (the run's best weights, {run.paths.best.name})"
    precision_used = "as exported (the file fixes it)" if exported else chosen.reason
    preds = predict_samples(
        model,
        run,
        samples,
        dev,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        description=f"evaluate {split_name}",
        precision=chosen,
    )
    ok = np.array([not e for e in preds.errors], dtype=bool)
    if not ok.any():
        raise DataError(f"none of the {len(samples)} images in '{source}' could be read")
    metrics = compute_metrics(preds.labels[ok], preds.probs[ok], run.labels)
    misclassified = misclassified_samples([str(s.path) for s in samples], preds.labels, preds.probs, ok, run.labels)
    failed = [{"path": str(samples[i].path), "reason": preds.errors[i]} for i in np.flatnonzero(~ok)]
    meaning = describe_split(split_name, None if data_dir is None else source)
    context = {
        "run": str(run.paths.root),
        "model": run.model,
        "data": str(source),
        "split": split_name,
        "split means": meaning,
        "images": len(samples),
        "unreadable": len(failed),
        "image_size": run.preprocess.image_size,
        "runtime": runtime,
        "precision": precision_used,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    files = write_report(
        metrics,
        out,
        title=f"Evaluation of {run.paths.root.name}{f' ({exported.format})' if exported else ''} on {split_name}",
        context=context,
        misclassified=misclassified,
        curves=write_curves(run.paths.root),
    )
    return EvalResult(metrics, files, split_name, source, len(failed), meaning, precision_used, runtime)
