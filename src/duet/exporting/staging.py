"""What every export stage shares: its result, model.json's metrics and versions, and
how a finished temporary folder takes the destination's place.

An export is written into a temporary folder beside the destination
(:func:`staged`), checked there, made readable and renamed into place
(:func:`swap_into_place`); a failure anywhere removes the temporary folder, so a
failed export leaves nothing. The image stage (``duet.exporting.exporter``) and
the tabular stage (``duet.exporting.tabular_export``) both use these.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import duet
from duet.errors import RunError
from duet.exporting.parity import ParityReport


@dataclass
class ExportResult:
    export_dir: Path
    manifest: dict[str, Any]
    parity: ParityReport
    seconds: float
    variants: dict[str, Any] | None = None  # model.json's "variants" (with --quantize)


def metrics_section(best: dict[str, Any], eval_dir: Path) -> dict[str, Any]:
    """model.json's ``metrics`` from run.json's ``best`` and RUN/eval/report.json (``duet evaluate``), if any."""
    metrics: dict[str, Any] = {
        "val_accuracy": best.get("val_accuracy"),
        "test_accuracy": best.get("test_accuracy"),
        "best_epoch": best.get("epoch"),
        "epochs_done": best.get("epochs_done"),
        "evaluation": None,
    }
    report = eval_dir / "report.json"
    if report.is_file():
        try:
            doc = json.loads(report.read_text(encoding="utf-8"))
            m = doc["metrics"]
            metrics["evaluation"] = {
                "split": doc.get("context", {}).get("split"),
                "date": doc.get("context", {}).get("date"),
                "num_images": m.get("num_images"),
                "accuracy": m.get("accuracy"),
                "macro_f1": (m.get("macro") or {}).get("f1"),
            }
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            metrics["evaluation"] = None  # a damaged report is not worth failing an export for
    return metrics


def versions(*, with_tf: bool = False, with_timm: bool = True) -> dict[str, str]:
    """model.json's ``versions``: the libraries that wrote and checked the folder."""
    import onnx
    import onnxruntime

    found = {"duet": duet.__version__, "torch": torch.__version__}
    if with_timm:
        import timm

        found["timm"] = timm.__version__
    found |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    if with_tf:
        from importlib.metadata import version

        from duet.system.tensorflow_import import import_tensorflow

        found["tensorflow"] = import_tensorflow().__version__
        found["ai_edge_litert"] = version("ai-edge-litert")
    return found


def make_readable(folder: Path) -> None:
    """mkdtemp and the atomic writes create owner-only modes; a model folder is
    meant to be read by a server running as another user."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an old ``dest`` (force) is moved aside first and
    deleted only once the new folder is in place."""
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{int(time.time() * 1000)}")
        dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def destination(run_root: Path, out_dir: Path | None, force: bool) -> Path:
    """The export folder (default RUN/export/); RunError when it exists and ``force`` is off."""
    dest = Path(out_dir) if out_dir is not None else run_root / "export"
    if dest.exists() and not force:
        raise RunError(f"'{dest}' already exists; pass --force to replace it, or --out DIR for another folder")
    return dest


@contextlib.contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` to write the export into. When the block ends
    cleanly it is made readable and takes ``dest``'s place; on any exception (a failed
    gate, Ctrl-C) it is removed, so nothing is left behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        make_readable(tmp)
        swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
