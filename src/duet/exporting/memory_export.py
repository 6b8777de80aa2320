"""What the table and text export stages (``tabular_export``, ``text_export``) share:
the refusal of image-only ``duet export`` options, the run's files copied into the
staged folder, and the keys of model.json that do not depend on the modality
(written first and last around the modality's own keys), with MODEL_CARD.md."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from duet.artifacts.model_package import (
    CARD_FILE,
    ONNX_FILE,
    PROFILE_DIR,
    SCHEMA,
    WEIGHTS_FILE,
    file_entries,
    sha256_file,
)
from duet.artifacts.run_dir import RunPaths
from duet.errors import ConfigError
from duet.exporting.card import render_card
from duet.exporting.staging import metrics_section
from duet.exporting.tf_formats import parse_formats
from duet.system.atomic import write_text_atomic


def refuse_image_options(
    run: str,
    why_onnx: str,
    data_hint: str,
    *,
    quantize: str | None,
    formats: Sequence[str] | str,
    data_dir: Path | None,
) -> None:
    """``duet export`` options a ``run`` ("a tabular run") cannot take: one ConfigError line each.

    ``why_onnx``: after "must be onnx"; ``data_hint``: where the run reads its data from instead of --data."""
    if quantize is not None:
        raise ConfigError(
            f"`--quantize` applies to image runs; {run} exports fp32 ONNX only. Received: --quantize={quantize}"
        )
    wanted = parse_formats(formats)
    if list(wanted) != ["onnx"]:
        raise ConfigError(f"`--format` of {run} must be onnx{why_onnx}. Received: --format={','.join(wanted)}")
    if data_dir is not None:
        raise ConfigError(f"`--data` applies to image runs; {run} {data_hint}. Received: --data={data_dir}")


def copy_run_files(root: Path, tmp: Path) -> None:
    """The best weights, and RUN/profile (the drift reference, when the run has one), into ``tmp``."""
    shutil.copyfile(RunPaths(root).best, tmp / WEIGHTS_FILE)
    if any(p.is_file() for p in (root / PROFILE_DIR).glob("*")):  # the drift reference travels with the model
        shutil.copytree(root / PROFILE_DIR, tmp / PROFILE_DIR)


def manifest_head(root: Path, info: dict[str, Any], modality: str, labels: list[str]) -> dict[str, Any]:
    """model.json's first keys (schema .. preprocess)."""
    return {
        "schema": SCHEMA,
        "modality": modality,
        "name": root.resolve().name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": str(info["model"]),
        "norm": None,
        "labels": labels,
        "num_classes": len(labels),
        "preprocess": None,
    }


def manifest_tail(
    root: Path,
    info: dict[str, Any],
    gate: dict[str, Any],
    graph: dict[str, Any],
    data: dict[str, Any],
    versions: dict[str, str],
) -> dict[str, Any]:
    """model.json's last keys (metrics .. source)."""
    metrics = {**metrics_section(info.get("best") or {}, root / "eval"), "parity": gate}
    if info.get("baseline"):
        metrics["baseline"] = info["baseline"]
    best = RunPaths(root).best
    return {
        "metrics": metrics,
        "data": data,
        "privacy": None,
        "formats": {"onnx": {"files": [ONNX_FILE], "runtime": "onnxruntime", "gate": gate}},
        "onnx": graph,
        "versions": versions,
        "source": {
            "run": str(root.resolve()),
            "data": (info.get("source") or {}).get("data"),
            "weights": str(best.relative_to(root)),
            "weights_sha256": sha256_file(best),
        },
    }


def with_card(manifest: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Writes MODEL_CARD.md into ``tmp`` and returns ``manifest`` with its ``files``."""
    profile = sorted(p.relative_to(tmp).as_posix() for p in (tmp / PROFILE_DIR).rglob("*") if p.is_file())
    files = file_entries(tmp, (ONNX_FILE, WEIGHTS_FILE, *profile))
    write_text_atomic(tmp / CARD_FILE, render_card(manifest, files))
    manifest["files"] = file_entries(tmp, (ONNX_FILE, WEIGHTS_FILE, CARD_FILE, *profile))
    return manifest
