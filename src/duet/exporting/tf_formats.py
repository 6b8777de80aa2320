"""Write the TensorFlow formats of an export, each behind its gate (``duet export --format``).

Called by ``duet.exporting.exporter`` once ``model.onnx`` passed the parity
gate, inside the export's temporary folder: a format that fails its gate
raises :class:`~duet.exporting.format_gate.FormatGateError` and the exporter
deletes the folder, so nothing is written.

Order: ONNX -> ``duet.exporting.tf_graph`` -> SavedModel (always built: the
TFLite converter reads it; deleted again when ``savedmodel`` was not asked
for) -> TFLite fp32 / fp16 / int8 (``duet.exporting.tflite``). The gates run
the files as written, loaded back by the runtime a user will use
(``tf.saved_model.load``, LiteRT).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import (
    FORMATS,
    MODELS_CONFIG,
    ONNX_FILE,
    SAVEDMODEL_DIR,
    SAVEDMODEL_VERSION,
    TFLITE_FILES,
)
from duet.data.contract import Sample
from duet.data.preprocess import PreprocessSpec
from duet.errors import ConfigError, ModelError
from duet.exporting import format_gate
from duet.exporting.format_gate import FormatGate, FormatGateError
from duet.exporting.quantize import load_encoded_and_pixels

Log = Callable[[str], None]


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"onnx,savedmodel,tflite"`` (or ``all``) -> the formats in export order, ONNX always first."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if "all" in items:
        return FORMATS
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise ConfigError(
            f"`--format` takes a comma-separated list of {', '.join(FORMATS)} (or all). "
            f"Received: {','.join(items) or 'nothing'}"
        )
    return tuple(f for f in FORMATS if f in items or f == "onnx")


@dataclass
class GateImages:
    """The validation images every gate sees: encoded bytes, uint8 crops, labels."""

    encoded: list[bytes]
    pixels: np.ndarray
    labels: np.ndarray
    split: str

    @classmethod
    def load(cls, samples: Sequence[Sample], spec: PreprocessSpec, split: str) -> GateImages:
        """Unreadable images are left out (the ONNX parity gate already counted them)."""
        encoded, pixels, labels, _ = load_encoded_and_pixels(samples, spec)
        return cls(encoded, pixels, labels, split)


def write_tf_formats(
    formats: Sequence[str],
    folder: Path,
    *,
    model: torch.nn.Module,
    spec: PreprocessSpec,
    name: str,
    images: GateImages,
    calibration: np.ndarray,
    log: Log,
    int8_points: float = format_gate.INT8_POINTS,
) -> dict[str, dict[str, Any]]:
    """Write and gate every TensorFlow format of ``formats`` into ``folder`` (which holds
    model.onnx); returns their model.json ``formats`` entries. Raises FormatGateError."""
    from duet.exporting.savedmodel import build_module, write_savedmodel

    wanted = [f for f in formats if f != "onnx"]
    if not wanted:
        return {}
    reference = format_gate.reference_probabilities(model, images.pixels, spec)
    fp32_bytes = (folder / ONNX_FILE).stat().st_size
    version = Path(SAVEDMODEL_DIR) / name / str(SAVEDMODEL_VERSION)
    log(f"TensorFlow: converting model.onnx and writing the SavedModel ({', '.join(wanted)} asked for)")
    try:
        write_savedmodel(build_module(folder / ONNX_FILE, spec), folder / version)
    except Exception as e:  # UnsupportedGraph, or TensorFlow's own errors while tracing the graph
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot convert this model to TensorFlow ({first}); export it with --format onnx alone "
            "(the ONNX graph is fine), or report the architecture"
        ) from e
    entries: dict[str, dict[str, Any]] = {}

    def gate(fmt: str, rule: str, probs: np.ndarray, size: int, failed: np.ndarray | None = None) -> FormatGate:
        g = format_gate.judge(
            fmt, rule, probs, reference, images.labels,
            split=images.split, size_bytes=size, fp32_bytes=fp32_bytes, failed=failed, int8_points=int8_points,
        )  # fmt: skip
        log(f"gate {g.summary()}")
        if not g.passed:
            raise FormatGateError(
                f"the {fmt} export failed its gate: {'; '.join(g.problems())}; nothing was written. "
                f"Export without {fmt} in --format, or report the model name as a converter bug"
            )
        return g

    if "savedmodel" in wanted:
        entries["savedmodel"] = _savedmodel_entry(folder, version, name, images, gate)
    for fmt in (f for f in wanted if f.startswith("tflite")):
        entries[fmt] = _tflite_entry(folder, version, fmt, images, calibration, gate, log)
    if "savedmodel" not in wanted:
        shutil.rmtree(folder / SAVEDMODEL_DIR)
    return entries


def _savedmodel_entry(
    folder: Path, version: Path, name: str, images: GateImages, gate: Callable[..., FormatGate]
) -> dict[str, Any]:
    from duet.exporting.savedmodel import BYTES_INPUT, SIGNATURE_BYTES, SIGNATURE_PIXELS, models_config
    from duet.serve.tf_runtimes import SavedModelRuntime

    runtime = SavedModelRuntime(folder / version)  # loaded back, as TF Serving will
    size = sum(p.stat().st_size for p in (folder / version).rglob("*") if p.is_file())
    pixels_gate = gate(
        "savedmodel", "exact", format_gate.run_batched(lambda x: runtime(x).probabilities, images.pixels), size
    )
    probs, failed = _bytes_probabilities(runtime, images.encoded, images.pixels.shape[0])
    bytes_gate = gate("savedmodel (bytes)", "agreement", probs, size, failed)
    (folder / MODELS_CONFIG).write_text(models_config(name, f"/models/{name}"), encoding="utf-8")
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / SAVEDMODEL_DIR).rglob("*") if p.is_file())
    return {
        "files": files,
        "path": version.as_posix(),
        "runtime": "tensorflow (TF Serving)",
        "signatures": {
            SIGNATURE_PIXELS: {"inputs": {"pixels": "uint8 [-1, 3, S, S]"}, "outputs": ["logits", "probabilities", "features"]},
            SIGNATURE_BYTES: {"inputs": {BYTES_INPUT: "string [-1] (encoded JPEG/PNG/GIF/BMP)"}, "outputs": ["logits", "probabilities", "features"]},
        },
        "models_config": MODELS_CONFIG,
        "gate": pixels_gate.to_dict(),
        "bytes_gate": bytes_gate.to_dict(),
    }  # fmt: skip


def _bytes_probabilities(runtime: Any, encoded: list[bytes], count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``serving_bytes`` signature over the encoded images, 32 at a time; an image
    TensorFlow cannot decode fails its batch, which is then retried one by one."""
    tf = runtime.tf
    fn = runtime.signature("serving_bytes")
    rows: list[np.ndarray] = []
    failed = np.zeros(count, bool)
    classes = None
    for start in range(0, len(encoded), format_gate.BATCH):
        chunk = encoded[start : start + format_gate.BATCH]
        try:
            rows.append(fn(image_bytes=tf.constant(chunk))["probabilities"].numpy())
            classes = rows[-1].shape[1]
            continue
        except tf.errors.InvalidArgumentError:
            pass
        for i, data in enumerate(chunk):
            try:
                rows.append(fn(image_bytes=tf.constant([data]))["probabilities"].numpy())
                classes = rows[-1].shape[1]
            except tf.errors.InvalidArgumentError:
                failed[start + i] = True
                rows.append(np.full((1, classes or 0), np.nan, np.float32))
    width = classes or 0
    fixed = [r if r.shape[1] == width else np.full((len(r), width), np.nan, np.float32) for r in rows]
    return (np.concatenate(fixed) if fixed else np.zeros((0, width), np.float32)), failed


def _tflite_entry(
    folder: Path,
    version: Path,
    fmt: str,
    images: GateImages,
    calibration: np.ndarray,
    gate: Callable[..., FormatGate],
    log: Log,
) -> dict[str, Any]:
    from duet.exporting.tflite import convert
    from duet.serve.tf_runtimes import TfliteRuntime

    kind = {"tflite": "fp32", "tflite-fp16": "fp16", "tflite-int8": "int8"}[fmt]
    extra = f", calibrated on {len(calibration)} training images" if kind == "int8" else ""
    log(f"TFLite {kind}: converting the SavedModel's serving_default{extra}")
    path = folder / TFLITE_FILES[fmt]
    path.write_bytes(convert(folder / version, kind, calibration if kind == "int8" else None))
    runtime = TfliteRuntime(path, kind)
    rule = {"fp32": "exact", "fp16": "agreement", "int8": "int8"}[kind]
    g = gate(fmt, rule, format_gate.run_batched(lambda x: runtime(x).probabilities, images.pixels), path.stat().st_size)
    entry: dict[str, Any] = {"files": [TFLITE_FILES[fmt]], "runtime": "LiteRT (ai-edge-litert)", "gate": g.to_dict()}
    if kind == "int8":
        entry["calibration"] = {
            "images": len(calibration),
            "split": "train",
            "input": "uint8 pixels",
            "output": "float32",
        }
    return entry
