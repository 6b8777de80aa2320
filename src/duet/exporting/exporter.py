"""``export_run(run_dir)``: a trained run -> a checked, self-describing model folder.

Steps, in order (the story of an export):

1. open the run and its best weights (``duet.evaluation.inference.load_model``, fp32, CPU);
2. write ``model.onnx`` (uint8 pixels in, normalisation inside, dynamic batch)
   and ``model.safetensors`` into a temporary folder beside the destination;
3. the parity gate (``duet.exporting.parity``) over the whole validation split:
   fail, and leave nothing behind, unless top-1 agrees on 100% and
   max |Δprobability| <= 1e-4 in fp32;
4. with ``quantize="int8"``: ``model.int8.onnx``, calibrated on training
   images and gated on the validation split (``duet.exporting.quantize``); a
   failed int8 gate fails the whole export, so nothing is written;
5. the run's drift reference profile (``RUN/profile``, when training wrote one)
   is copied to ``profile/``, so a server gets it verified with the model;
6. ``MODEL_CARD.md`` and ``model.json`` (with the sha256 of every file);
7. rename the folder into place (RUN/export/ by default). An existing export is
   replaced only with ``force=True``.

A tabular run (run.json ``"modality": "tabular"``) goes to
``duet.exporting.tabular_export`` instead: the same folder, gate and atomic
rename, with the table's preprocessing inside the graph (ONNX only, fp32). A
text run (``"modality": "text"``) goes to ``duet.exporting.text_export``: raw
strings in, the tokenizer inside the graph (ONNX only, fp32).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import (
    CARD_FILE,
    INT8_FILE,
    MANIFEST,
    ONNX_FILE,
    PROFILE_DIR,
    SCHEMA,
    WEIGHTS_FILE,
    data_fingerprint,
    file_entries,
    sha256_file,
    signature,
)
from duet.artifacts.run_dir import RunInfo, load_run
from duet.data.contract import Sample
from duet.data.scan import read_manifest
from duet.errors import ConfigError, DataError, RunError
from duet.evaluation.inference import load_model
from duet.exporting import onnx_graph
from duet.exporting.card import render_card
from duet.exporting.parity import DEFAULT_TOLERANCE, ParityError, ParityReport, check_parity
from duet.exporting.quantize import (
    CALIBRATION_IMAGES,
    CALIBRATION_SEED,
    DEFAULT_INT8_TOLERANCE,
    QuantizeError,
    calibration_samples,
    check_int8,
    load_pixels,
    quantize_int8,
)
from duet.exporting.staging import ExportResult, destination, metrics_section, staged, versions
from duet.exporting.tabular_export import export_tabular_run, refuse_image_options
from duet.exporting.text_export import export_text_run, refuse_options
from duet.exporting.tf_formats import parse_formats
from duet.system.atomic import write_json_atomic, write_text_atomic
from duet.system.process import guard_triton
from duet.training.tabular_run import is_tabular_run
from duet.training.text_run import is_text_run

Log = Callable[[str], None]


def validation_samples(run: RunInfo, data_dir: Path | None) -> tuple[list[Sample], str]:
    """The validation split of the run's manifest (the test split, then the
    training split, when a run has none), with paths under ``data_dir``."""
    root = Path(data_dir) if data_dir is not None else run.data_dir
    manifest = read_manifest(run.paths.manifest, root)
    index = {label: i for i, label in enumerate(run.labels)}
    usable = [r for r in manifest.usable() if r.label in index]
    for split in ("val", "test", "train"):
        rows = [r for r in usable if r.split == split]
        if rows:
            break
    else:
        raise RunError(f"run '{run.paths.root}' lists no usable image in manifest.csv; the parity gate needs images")
    samples = [Sample(manifest.data_dir / r.path, index[r.label]) for r in rows]
    missing = [s.path for s in samples if not s.path.is_file()]
    if len(missing) == len(samples):
        raise DataError(
            f"the {split} images of run '{run.paths.root}' are not under '{manifest.data_dir}' any more "
            f"(e.g. {missing[0]}); the parity gate needs them: pass --data DIR with the training folder"
        )
    return samples, split


def _data_section(run: RunInfo) -> dict[str, Any]:
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    usable = manifest.usable()
    per_split: dict[str, int] = {}
    for r in usable:
        per_split[r.split or "unassigned"] = per_split.get(r.split or "unassigned", 0) + 1
    return {
        "fingerprint": data_fingerprint((r.path, r.label, r.sha256, r.split) for r in usable),
        "fingerprint_of": "sha256 over 'path\\tlabel\\tsha256\\tsplit\\n' of the usable manifest rows, sorted by path",
        "images": len(usable),
        "per_split": per_split,
    }


def export_run(
    run_dir: str | Path,
    *,
    out_dir: Path | None = None,
    data_dir: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    opset: int = onnx_graph.DEFAULT_OPSET,
    force: bool = False,
    quantize: str | None = None,
    int8_tolerance: float = DEFAULT_INT8_TOLERANCE,
    calibration_images: int = CALIBRATION_IMAGES,
    formats: Sequence[str] | str = ("onnx",),
    progress: bool = True,
    log: Log = print,
) -> ExportResult:
    """Export the run's best weights to ``out_dir`` (default RUN/export/); see the module doc.

    Args:
        run_dir: a run folder made by ``duet train`` (a table's: ``duet.exporting.tabular_export``).
        out_dir: destination folder; must not exist unless ``force``.
        data_dir: where the run's images are now, when they moved since training.
        tolerance: the parity gate's max |Δprobability|.
        batch_size: images per parity batch.
        opset: ONNX opset for the exporter.
        force: replace an existing export folder (only after the new one passed).
        quantize: ``"int8"`` adds model.int8.onnx (``duet.exporting.quantize``); None: fp32 only.
        int8_tolerance: percentage points of validation top-1 accuracy int8 may lose against fp32
            (model.int8.onnx and model.int8.tflite alike).
        calibration_images: most training images drawn (seeded) to calibrate int8.
        formats: what to write besides ONNX (always written): ``savedmodel``, ``tflite``,
            ``tflite-fp16``, ``tflite-int8`` (``duet.exporting.tf_formats``; needs the
            ``tf`` extra), as a sequence or ``"onnx,savedmodel,..."``/``"all"``.

    Raises:
        ParityError: the graph disagrees with PyTorch; nothing is written.
        QuantizeError: the int8 graph lost more than ``int8_tolerance``; nothing is written.
        FormatGateError: a TensorFlow format failed its gate; nothing is written.
        RunError, DataError, ModelError: the run, its data or the model is unusable.
    """
    guard_triton()  # torch.onnx's dynamo imports triton: after TensorFlow that segfaults (system.process)
    if is_tabular_run(Path(run_dir)):  # ONNX fp32 only: these options are refused, the others apply
        refuse_image_options(quantize=quantize, formats=formats, data_dir=data_dir)
        same: dict[str, Any] = {"out_dir": out_dir, "tolerance": tolerance, "batch_size": batch_size, "opset": opset}
        return export_tabular_run(run_dir, **same, force=force, progress=progress, log=log)
    if is_text_run(Path(run_dir)):  # likewise: raw strings in, ONNX fp32 only
        refuse_options(quantize=quantize, formats=formats, data_dir=data_dir)
        same = {"out_dir": out_dir, "tolerance": tolerance, "batch_size": batch_size, "opset": opset}
        return export_text_run(run_dir, **same, force=force, progress=progress, log=log)
    t0 = time.perf_counter()
    _check_options(quantize, calibration_images)
    wanted = parse_formats(formats)
    run = load_run(run_dir)
    dest = destination(run.paths.root, out_dir, force)
    samples, split = validation_samples(run, data_dir)
    spec = run.preprocess
    cpu = torch.device("cpu")
    model = load_model(run, cpu).float()

    with staged(dest) as tmp:
        log(f"exporting {run.model} ({run.num_classes} classes, {spec.image_size}px) to ONNX")
        graph = _write_model_files(run, model, tmp, opset)
        log(f"parity gate: {len(samples)} {split} images through PyTorch and ONNX Runtime")
        parity = _onnx_parity(run, model, tmp, (samples, split), tolerance, batch_size, progress)
        variants = None
        data_root = Path(data_dir) if data_dir else run.data_dir
        if quantize == "int8":
            int8 = _int8_variant(run, tmp, data_root, samples, split, int8_tolerance, calibration_images, log)
            variants = {"int8": int8}
        formats_section = {"onnx": {"files": [ONNX_FILE], "runtime": "onnxruntime", "gate": parity.to_dict()}}
        if len(wanted) > 1:
            formats_section.update(
                _tf_formats(
                    run, model, tmp, wanted, (data_root, samples, split), (calibration_images, int8_tolerance), log
                )
            )
        manifest = _manifest(run, spec, graph, parity, tmp, variants, formats_section)
        write_json_atomic(tmp / MANIFEST, manifest)
    return ExportResult(dest, manifest, parity, time.perf_counter() - t0, variants)


def _onnx_parity(
    run: RunInfo,
    model: torch.nn.Module,
    tmp: Path,
    data: tuple[list[Sample], str],
    tolerance: float,
    batch_size: int,
    progress: bool,
) -> ParityReport:
    """The ONNX parity gate (``duet.exporting.parity``); ParityError when it fails."""
    samples, split = data
    parity = check_parity(
        model,
        tmp / ONNX_FILE,
        run.preprocess,
        samples,
        split=split,
        tolerance=tolerance,
        batch_size=batch_size,
        progress=progress,
    )
    if not parity.passed:
        raise ParityError(
            f"export of '{run.paths.root}' failed the parity gate: {parity.failure()} "
            f"({parity.images} {split} images, fp32); nothing was written. "
            "Re-run with --debug, try another --opset, or report the model name as an exporter bug"
        )
    return parity


def _check_options(quantize: str | None, calibration_images: int) -> None:
    if quantize not in (None, "int8"):
        raise ConfigError(f"`--quantize` must be int8 (or left out for fp32 only). Received: --quantize={quantize}")
    if calibration_images < 1:
        raise ConfigError(f"`--calibration-images` must be >= 1. Received: {calibration_images}")


def _write_model_files(run: RunInfo, model: torch.nn.Module, folder: Path, opset: int) -> dict[str, Any]:
    """model.onnx with its metadata, the weights, and the run's drift profile when it has one."""
    spec = run.preprocess
    graph = onnx_graph.export_onnx(model, spec, folder / ONNX_FILE, opset=opset)
    onnx_graph.write_metadata(folder / ONNX_FILE, onnx_graph.metadata_props(run.labels, spec, run.model))
    shutil.copyfile(run.paths.best, folder / WEIGHTS_FILE)
    profile = run.paths.root / PROFILE_DIR
    if (profile / "profile.json").is_file():  # the drift reference travels with the model
        shutil.copytree(profile, folder / PROFILE_DIR)
    return graph


def _int8_variant(
    run: RunInfo, tmp: Path, data_root: Path, samples: list[Sample], split: str, tolerance: float, count: int, log: Log
) -> dict[str, Any]:
    """Calibrate, quantize and gate ``tmp/model.int8.onnx``; its model.json entry (sha256 added later)."""
    spec = run.preprocess
    calibration = calibration_samples(run.paths.manifest, data_root, run.labels, count=count)
    log(
        f"int8: calibrating on {len(calibration)} training images (seed {CALIBRATION_SEED}), "
        "quantizing (QDQ, per channel)"
    )
    t0 = time.perf_counter()
    cal_pixels, _, cal_unreadable = load_pixels(calibration, spec)
    settings = quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, cal_pixels)
    seconds = time.perf_counter() - t0
    pixels, labels, unreadable = load_pixels(samples, spec)
    gate = check_int8(
        tmp / ONNX_FILE, tmp / INT8_FILE, pixels, labels, split=split, tolerance_points=tolerance, unreadable=unreadable
    )
    log(f"int8 gate: {gate.summary()}")
    if not gate.passed:
        raise QuantizeError(
            f"export of '{run.paths.root}' failed the int8 gate: {gate.summary()}; nothing was written "
            "(fp32 included). Export without --quantize for fp32 only, or raise --int8-tolerance knowingly"
        )
    return {
        "file": INT8_FILE,
        "calibration": {
            "split": "train",
            "images": len(cal_pixels),
            "unreadable": cal_unreadable,
            "seed": CALIBRATION_SEED,
            "drawn_from": "the run's training split, seeded permutation",
            "preprocess": "duet.serve.images.prepare (as served)",
            "seconds": round(seconds, 1),
            **settings,
        },
        "gate": gate.to_dict(),
    }


def _tf_formats(
    run: RunInfo,
    model: torch.nn.Module,
    tmp: Path,
    wanted: Sequence[str],
    data: tuple[Path, list[Sample], str],
    int8: tuple[int, float],
    log: Log,
) -> dict[str, dict[str, Any]]:
    """SavedModel and TFLite files in ``tmp``, each gated (``duet.exporting.tf_formats``)."""
    from duet.exporting.tf_formats import GateImages, write_tf_formats

    data_root, samples, split = data
    calibration_images, int8_points = int8
    spec = run.preprocess
    calibration = np.zeros((0, 3, spec.image_size, spec.image_size), np.uint8)
    if "tflite-int8" in wanted:
        picked = calibration_samples(run.paths.manifest, data_root, run.labels, count=calibration_images)
        calibration = load_pixels(picked, spec)[0]
    return write_tf_formats(
        wanted,
        tmp,
        model=model,
        spec=spec,
        name=run.paths.root.resolve().name,
        images=GateImages.load(samples, spec, split),
        calibration=calibration,
        log=log,
        int8_points=int8_points,
    )


def _manifest(
    run: RunInfo,
    spec: Any,
    graph: dict[str, Any],
    parity: ParityReport,
    tmp: Path,
    variants: dict[str, Any] | None = None,
    formats: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    inputs, outputs = signature(spec, run.num_classes)
    metrics = metrics_section(run.best or {}, run.paths.eval)
    metrics["parity"] = parity.to_dict()
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": run.paths.root.resolve().name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": run.model,
        "norm": run.norm,
        "labels": run.labels,
        "num_classes": run.num_classes,
        "preprocess": spec.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "metrics": metrics,
        "data": _data_section(run),
        "privacy": run.privacy,
        "formats": formats or {"onnx": {"files": [ONNX_FILE], "runtime": "onnxruntime", "gate": parity.to_dict()}},
        "onnx": graph,
        "versions": versions(with_tf=len(formats or {}) > 1),
        "source": {
            "run": str(run.paths.root.resolve()),
            "data_dir": str(run.data_dir),
            "weights": str(run.paths.best.relative_to(run.paths.root)),
            "weights_sha256": sha256_file(run.paths.best),
        },
    }
    profile = sorted(p.relative_to(tmp).as_posix() for p in (tmp / PROFILE_DIR).rglob("*") if p.is_file())
    tf_files = [f for name, entry in (formats or {}).items() if name != "onnx" for f in entry["files"]]
    models = (ONNX_FILE, *(v["file"] for v in (variants or {}).values()), *tf_files, WEIGHTS_FILE)
    files = file_entries(tmp, (*models, *profile))
    if variants:
        for v in variants.values():
            v["sha256"] = files[v["file"]]["sha256"]
        manifest["variants"] = variants
    write_text_atomic(tmp / CARD_FILE, render_card(manifest, files))
    manifest["files"] = file_entries(tmp, (*models, CARD_FILE, *profile))
    return manifest


__all__ = ["ExportResult", "ParityError", "export_run"]
