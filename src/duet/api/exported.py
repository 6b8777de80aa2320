"""Any exported format, named by its path, for ``duet evaluate`` and ``duet predict``.

The runtime follows what the user gives:

```
runs/<name>                               PyTorch on the run's best weights (as always)
runs/<name> --format tflite-int8          the run's export/ in that format, on its runtime
runs/<name>/export                        its model.onnx on ONNX Runtime (or --format's file)
runs/<name>/export/model.onnx             ONNX Runtime          (model.int8.onnx: the int8 variant)
runs/<name>/export/model.int8.tflite      LiteRT                (model.tflite, model.fp16.tflite)
runs/<name>/export/savedmodel/<name>/1    TensorFlow            (or savedmodel/<name>)
```

A file or folder inside a model folder is opened through that folder
(``read_package``: every file checked against model.json's sha256), so it
comes with its labels and preprocessing, and runs on the runtime ``duet serve``
would use (``duet.serve.runtimes.load_runtime``). Evaluation needs the run too,
for its split: the run folder given, else the one model.json names.
This module composes ``duet.evaluation`` and ``duet.serve``, which never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import (
    FORMATS,
    INT8_FILE,
    MANIFEST,
    ONNX_FILE,
    TFLITE_FILES,
    ModelPackage,
    read_package,
)
from duet.errors import ConfigError, ModelError, RunError

ONNX_INT8 = "onnx-int8"  # model.int8.onnx (`duet export --quantize int8`), a variant rather than a format
FORMAT_CHOICES = (*FORMATS, ONNX_INT8)
# format -> (load_runtime name, variant)
_RUNTIMES = {
    "onnx": ("onnxruntime", "fp32"),
    ONNX_INT8: ("onnxruntime", "int8"),
    "savedmodel": ("savedmodel", "fp32"),
    "tflite": ("tflite", "fp32"),
    "tflite-fp16": ("tflite", "fp16"),
    "tflite-int8": ("tflite", "int8"),
}
_FILE_FORMATS = {ONNX_FILE: "onnx", INT8_FILE: ONNX_INT8, **{f: k for k, f in TFLITE_FILES.items()}}
_WHAT_TO_PASS = (
    "pass a run folder, a model folder (model.json) or one of its model files "
    "(model.onnx, model.int8.onnx, model*.tflite, savedmodel/<name>/1)"
)


@dataclass(frozen=True)
class Target:
    """What to run: ``folder`` (a run or model folder) and ``format`` (None: the run's PyTorch weights);
    ``given`` is the path the user named."""

    folder: Path
    format: str | None
    given: Path


def resolve_target(path: str | Path, fmt: str | None = None) -> Target:
    """The folder and format a path means (the table above); ``fmt`` is ``--format``."""
    p = Path(path)
    if fmt is not None and fmt not in FORMAT_CHOICES:
        raise ConfigError(f"`--format` must be one of {', '.join(FORMAT_CHOICES)}. Received: --format={fmt}")
    if p.is_dir() and (p / "run.json").is_file():
        return Target(p, fmt, p)
    if p.is_dir() and (p / MANIFEST).is_file():
        return Target(p, fmt or "onnx", p)
    if not p.exists() and p.suffix in (".onnx", ".tflite"):
        raise ModelError(f"model file '{p}' does not exist; {_WHAT_TO_PASS}")
    named = _format_of_path(p)
    if named is None:
        if p.is_file():
            raise ModelError(f"'{p}' is not a model duet can run; {_WHAT_TO_PASS}")
        return Target(p, fmt, p)  # not there, or a folder of something else: the run loader says what is wrong
    if fmt is not None and fmt != named:
        raise ConfigError(f"'{p}' is the {named} model, but --format {fmt} was asked for; give one of the two")
    return Target(_model_folder_of(p, named), named, p)


def _format_of_path(p: Path) -> str | None:
    """The format of a model file or SavedModel folder, by its name and contents."""
    if p.is_file():
        return _FILE_FORMATS.get(p.name)
    if p.is_dir() and ((p / "saved_model.pb").is_file() or any(p.glob("*/saved_model.pb"))):
        return "savedmodel"
    return None


def _model_folder_of(p: Path, fmt: str) -> Path:
    """The model folder holding ``p``: its parent (a file), or savedmodel/'s parent (a SavedModel)."""
    parents = p.resolve().parents
    for folder in parents[:3] if fmt == "savedmodel" else parents[:1]:
        if (folder / MANIFEST).is_file():
            return folder
    raise ModelError(
        f"'{p}' is not inside a duet model folder (no {MANIFEST} beside it or above it), so its labels and "
        "preprocessing are unknown; pass the export folder made by `duet export`, or a file in it"
    )


def format_path(package: ModelPackage, fmt: str) -> Path:
    """The file (or SavedModel version folder) of ``fmt``; ``ArtifactError`` with the way to export it."""
    return package.variant_path("int8") if fmt == ONNX_INT8 else package.format_path(fmt)


@dataclass(frozen=True)
class Opened:
    """An exported format loaded on its runtime."""

    package: ModelPackage
    format: str
    path: Path
    runtime: Any  # duet.serve.runtimes.Runtime

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 3, S, S)`` centre crops -> float32 ``(N, C)``."""
        return np.asarray(self.runtime(crops).probabilities, dtype=np.float32)

    def describe(self) -> str:
        return f"{self.format} on {self.runtime.name} ({self.path})"


def open_format(target: Target, *, threads: int = 0) -> Opened:
    """Read and verify the model folder, check it has the format, and load its runtime (on the CPU)."""
    from duet.serve.runtimes import load_runtime

    if target.format is None:
        raise ConfigError("no exported format to open: the target is a run's PyTorch weights")
    package = read_package(target.folder)
    path = format_path(package, target.format)
    given = target.given.resolve()
    if target.given != target.folder and given not in (path.resolve(), path.resolve().parent):
        raise ModelError(f"'{target.given}' is not the {target.format} model that model.json lists ('{path}')")
    name, variant = _RUNTIMES[target.format]
    runtime = load_runtime(package, name, device="cpu", threads=threads, variant=variant)
    return Opened(package, target.format, path, runtime)


def source_run(target: Target, package: ModelPackage) -> Path:
    """The run whose labelled split evaluates an export: the run folder given, else the run
    the model folder sits in (RUN/export, wherever the run was copied to), else model.json's ``source.run``."""
    if (target.folder / "run.json").is_file():
        run = target.folder
    elif (package.root.parent / "run.json").is_file():
        run = package.root.parent
    else:
        run = Path(str((package.manifest.get("source") or {}).get("run", "")))
        if not (run / "run.json").is_file():
            raise RunError(
                f"evaluating '{target.given}' needs the run it was exported from (for its labelled split and labels); "
                f"model.json names '{run}', which is not a run folder: pass `duet evaluate RUN --format {target.format}`"
            )
    from duet.artifacts.run_dir import load_run

    labels = load_run(run).labels
    if list(labels) != package.labels:
        raise ModelError(f"the run '{run}' has labels {labels}, the model folder {package.labels}; re-export the run")
    return run


def evaluate(target: Target, **options: Any) -> Any:
    """``duet.evaluation.evaluate.evaluate`` of the target: the run's weights (format None) or the
    exported format on its runtime, on the run's split or ``data_dir`` (``options`` as there)."""
    from duet.evaluation.evaluate import evaluate as evaluate_run
    from duet.evaluation.inference import Exported

    if target.format is None:
        return evaluate_run(target.folder, **options)
    opened = open_format(target)
    run = source_run(target, opened.package)
    exported = Exported(opened.format, opened.runtime.name, opened.path, opened.probabilities)
    return evaluate_run(run, exported=exported, **options)
