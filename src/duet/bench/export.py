"""``duet bench export``: one model, every format it was exported to, measured in one run.

Like Ultralytics' ``yolo benchmark``: a row per format the export folder holds
(``duet.artifacts.model_package``), in this order, each on its own runtime:

==============  ==========================  ================================
row             file                        runtime
==============  ==========================  ================================
PyTorch         model.safetensors           ``TorchRuntime`` on the CPU, fp32 (the reference)
ONNX            model.onnx                  ONNX Runtime
ONNX int8       model.int8.onnx             ONNX Runtime (``--quantize int8``)
SavedModel      savedmodel/<name>/1/        TensorFlow, ``serving_default``
TFLite          model.tflite                LiteRT (XNNPACK)
TFLite fp16     model.fp16.tflite           LiteRT
TFLite int8     model.int8.tflite           LiteRT
==============  ==========================  ================================

A format the export lacks has no row; a format whose runtime is not installed
(the ``tf`` extra) is listed under ``skipped`` with the reason.

Every row sees the same inputs: the run's validation split (as the export's
parity gate picks it: val, else test, else train), decoded and centre-cropped
once to uint8 ``(N, 3, S, S)`` by the server's own preparation
(``duet.exporting.quantize.load_pixels``). Per row:

- size: the file in MB (10^6 bytes), the SavedModel's version folder in total;
- accuracy: top-1 over the whole split, and the share of images whose top-1
  equals the PyTorch row's;
- latency: ``latency_runs`` timed batch-1 calls after ``WARMUP_CALLS`` untimed
  ones, cycling through the images; p50 and p90 in ms of the runtime call
  alone (decoding is not in it);
- throughput: ``throughput_batches`` timed calls at ``batch_size`` after one
  untimed call; images/s over their total time.

Every runtime gets the same number of intra-op threads (default: every core
this process may use): ``torch.set_num_threads``, ONNX Runtime's
``intra_op_num_threads`` (inter-op 1, no spinning, as ``duet serve`` runs it),
TensorFlow's intra-op threads (inter-op 1) and LiteRT's ``num_threads``.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from duet.artifacts.model_package import INT8_FILE, ModelPackage, read_package
from duet.artifacts.run_dir import RunInfo, load_run
from duet.errors import ConfigError, RunError
from duet.system.extras import MissingExtra

Log = Callable[[str], None]
LATENCY_RUNS = 50
THROUGHPUT_BATCHES = 10
BATCH_SIZE = 32
WARMUP_CALLS = 3  # untimed batch-1 calls before the latency runs (the accuracy pass warmed the rest)


@dataclass(frozen=True)
class Candidate:
    """One row to measure: its name, what runs it, and the file (or folder) it ships."""

    format: str  # "pytorch", or a model_package FORMATS name, or "onnx-int8"
    label: str
    runtime: str  # a duet.serve runtime name
    variant: str
    path: Path


@dataclass
class Row:
    format: str
    label: str
    runtime: str
    file: str  # relative to the export folder
    size_mb: float
    accuracy: float
    agrees_with_pytorch: float | None
    p50_ms: float
    p90_ms: float
    images_per_s: float
    load_s: float


def candidates(package: ModelPackage) -> list[Candidate]:
    """The rows ``package`` has, in the table's order."""
    formats = package.formats
    rows = [Candidate("pytorch", "PyTorch", "torch", "fp32", package.weights_path)]
    rows.append(Candidate("onnx", "ONNX", "onnxruntime", "fp32", package.onnx_path))
    if "int8" in (package.manifest.get("variants") or {}) and (package.root / INT8_FILE).is_file():
        rows.append(Candidate("onnx-int8", "ONNX int8", "onnxruntime", "int8", package.variant_path("int8")))
    if "savedmodel" in formats:
        rows.append(Candidate("savedmodel", "SavedModel", "savedmodel", "fp32", package.format_path("savedmodel")))
    for fmt, label, variant in (
        ("tflite", "TFLite", "fp32"),
        ("tflite-fp16", "TFLite fp16", "fp16"),
        ("tflite-int8", "TFLite int8", "int8"),
    ):
        if fmt in formats:
            rows.append(Candidate(fmt, label, "tflite", variant, package.format_path(fmt)))
    return rows


def size_bytes(path: Path) -> int:
    """A file's size, or a folder's total (the SavedModel: saved_model.pb + variables/)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def open_model(model: Path) -> tuple[ModelPackage, RunInfo]:
    """The export folder and the run it came from. ``model``: a run folder
    (its export/) or an export folder whose model.json names its run."""
    package = read_package(model)
    if (Path(model) / "run.json").is_file():
        return package, load_run(model)
    run = (package.manifest.get("source") or {}).get("run")
    if not run or not (Path(run) / "run.json").is_file():
        raise RunError(
            f"the export '{package.root}' names its run as {run!r}, which is not there any more; "
            "the benchmark reads that run's validation split: pass the run folder instead"
        )
    return package, load_run(run)


def _open_runtime(c: Candidate, package: ModelPackage, threads: int) -> Any:
    """``c``'s runtime with ``threads`` intra-op threads."""
    if c.runtime == "torch":
        import torch

        from duet.serve.runtimes import TorchRuntime

        torch.set_num_threads(threads)
        return TorchRuntime(package, "cpu", precision="fp32")
    if c.runtime == "onnxruntime":
        from duet.serve.runtimes import OnnxRuntime

        return OnnxRuntime(package, threads, spinning=False, variant=c.variant)
    if c.runtime == "savedmodel":
        from duet.serve.tf_runtimes import SavedModelRuntime
        from duet.system.tensorflow_import import import_tensorflow

        tf = import_tensorflow()
        try:  # only before TensorFlow's first operation in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError as e:
            raise ConfigError(f"TensorFlow was started before the benchmark could set its threads: {e}") from e
        return SavedModelRuntime(package)
    from duet.serve.tf_runtimes import TfliteRuntime

    return TfliteRuntime(package, c.variant, threads)


@dataclass(frozen=True)
class Plan:
    """What each row measures, the same for every row."""

    latency_runs: int = LATENCY_RUNS
    throughput_batches: int = THROUGHPUT_BATCHES
    batch_size: int = BATCH_SIZE

    def calls(self, images: int) -> int:
        """Runtime calls per row: the accuracy batches, warm-up, latency and throughput."""
        accuracy = -(-images // self.batch_size)
        return accuracy + WARMUP_CALLS + self.latency_runs + 1 + self.throughput_batches


def _predict(runtime: Any, pixels: np.ndarray, batch_size: int, tick: Callable[[], None]) -> np.ndarray:
    top1: list[np.ndarray] = []
    for start in range(0, len(pixels), batch_size):
        top1.append(np.asarray(runtime(pixels[start : start + batch_size]).probabilities).argmax(1))
        tick()
    return np.concatenate(top1)


def _latency_ms(runtime: Any, pixels: np.ndarray, runs: int, tick: Callable[[], None]) -> np.ndarray:
    """Batch-1 call times in ms, after ``WARMUP_CALLS`` untimed calls."""
    for i in range(WARMUP_CALLS):
        runtime(pixels[i % len(pixels)][None])
        tick()
    times = np.empty(runs)
    for i in range(runs):
        one = pixels[i % len(pixels)][None]
        t0 = time.perf_counter()
        runtime(one)
        times[i] = (time.perf_counter() - t0) * 1000
        tick()
    return times


def _images_per_s(runtime: Any, batches: list[np.ndarray], tick: Callable[[], None]) -> float:
    runtime(batches[0])  # untimed: sizes the runtime's buffers for this batch
    tick()
    t0 = time.perf_counter()
    for batch in batches:
        runtime(batch)
        tick()
    return len(batches) * len(batches[0]) / (time.perf_counter() - t0)


def _batches(pixels: np.ndarray, plan: Plan) -> list[np.ndarray]:
    """``throughput_batches`` batches of ``batch_size`` crops, cycling through the split (built before timing)."""
    n, b = len(pixels), plan.batch_size
    return [np.ascontiguousarray(pixels[(np.arange(b) + k * b) % n]) for k in range(plan.throughput_batches)]


def measure_row(
    c: Candidate,
    package: ModelPackage,
    data: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray | None,
    *,
    plan: Plan,
    threads: int,
    tick: Callable[[], None],
) -> tuple[Row, np.ndarray]:
    """``c`` measured on ``data`` (pixels, labels); its top-1 predictions for the later rows' agreement."""
    pixels, labels = data
    t0 = time.perf_counter()
    runtime = _open_runtime(c, package, threads)
    load_s = time.perf_counter() - t0
    top1 = _predict(runtime, pixels, plan.batch_size, tick)
    times = _latency_ms(runtime, pixels, plan.latency_runs, tick)
    rate = _images_per_s(runtime, _batches(pixels, plan), tick)
    del runtime
    gc.collect()
    row = Row(
        format=c.format,
        label=c.label,
        runtime=c.runtime,
        file=c.path.relative_to(package.root).as_posix(),
        size_mb=size_bytes(c.path) / 1e6,
        accuracy=float((top1 == labels).mean()),
        agrees_with_pytorch=None if reference is None else float((top1 == reference).mean()),
        p50_ms=float(np.percentile(times, 50)),
        p90_ms=float(np.percentile(times, 90)),
        images_per_s=rate,
        load_s=load_s,
    )
    return row, top1


def _check(plan: Plan, threads: int) -> None:
    for name, value in (
        ("--latency-runs", plan.latency_runs),
        ("--throughput-batches", plan.throughput_batches),
        ("--batch-size", plan.batch_size),
        ("--threads", threads),
    ):
        if value < 1:
            raise ConfigError(f"`{name}` must be >= 1. Received: {name}={value}")


def bench_export(
    model: Path,
    *,
    data_dir: Path | None = None,
    threads: int | None = None,
    plan: Plan | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Measure every format of ``model``'s export (see the module doc); the JSON-able result.

    Args:
        model: a run folder with an export, or an export folder whose run still exists.
        data_dir: where the run's images are now, when they moved since training.
        threads: intra-op threads for every runtime (default: every core this process may use).
        plan: latency runs, throughput batches and batch size (defaults: 50, 10, 32).
    """
    from duet.exporting.exporter import validation_samples  # the split the export gates ran on
    from duet.exporting.quantize import load_pixels
    from duet.system.device import cpu_count

    plan = plan or Plan()
    threads = cpu_count() if threads is None else threads
    _check(plan, threads)
    load_start = os.getloadavg()[0]
    package, run = open_model(model)
    samples, split = validation_samples(run, data_dir)
    log(f"decoding and cropping {len(samples)} {split} images once ({package.spec.image_size}px)")
    pixels, labels, unreadable = load_pixels(samples, package.spec)
    if not len(pixels):
        raise RunError(f"none of the {len(samples)} {split} images of '{run.paths.root}' could be read")
    rows, skipped = _measure_all(package, (pixels, labels), plan, threads, progress, log)
    return {
        "model": package.name,
        "architecture": package.architecture,
        "image_size": package.spec.image_size,
        "export_dir": str(package.root),
        "split": split,
        "images": len(pixels),
        "unreadable": unreadable,
        "threads": threads,
        "plan": {**asdict(plan), "warmup_calls": WARMUP_CALLS},
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "environment": environment(threads, load_start),
    }


def _measure_all(
    package: ModelPackage,
    data: tuple[np.ndarray, np.ndarray],
    plan: Plan,
    threads: int,
    progress: bool,
    log: Log,
) -> tuple[list[Row], list[dict[str, str]]]:
    from rich.progress import TaskID

    from duet.system.progress import make_progress

    rows: list[Row] = []
    skipped: list[dict[str, str]] = []
    reference: np.ndarray | None = None
    with make_progress(progress) as bar:
        for c in candidates(package):
            task = bar.add_task(c.label, total=plan.calls(len(data[0])), info=c.runtime)

            def tick(task: TaskID = task) -> None:
                bar.advance(task)

            try:
                row, top1 = measure_row(c, package, data, reference, plan=plan, threads=threads, tick=tick)
            except MissingExtra as e:  # the format is there, its runtime is not installed
                skipped.append({"format": c.format, "reason": str(e)})
                bar.update(task, info="skipped")
                log(f"skipped {c.label}: {e}")
                continue
            if c.format == "pytorch":
                reference = top1
            rows.append(row)
    return rows, skipped


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def environment(threads: int, load_start: float) -> dict[str, str]:
    """bench data's environment (machine, CPU, versions, process tuning) plus the runtimes' versions,
    the threads, the time of day and the load average at start and end (a busy machine shows here)."""
    import torch

    from duet.bench.data import environment as base

    env = base(torch.device("cpu"))
    env["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["onnxruntime"] = _dist_version("onnxruntime")
    env["tensorflow"] = _dist_version("tensorflow-cpu", "tensorflow")
    env["ai-edge-litert"] = _dist_version("ai-edge-litert")
    env["threads"] = f"{threads} intra-op thread{'' if threads == 1 else 's'} for every runtime"
    env["load average"] = f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)"
    return env


COLUMNS = ("format", "runtime", "size MB", "val accuracy", "top-1 = PyTorch", "p50 ms", "p90 ms", "images/s")
SHORT_COLUMNS = ("format", "runtime", "MB", "val acc", "= PyTorch", "p50 ms", "p90 ms", "img/s")  # a terminal's width


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The table's cells, one list per row (the CLI's rich table and ``markdown`` share them)."""
    cells = []
    for r in result["rows"]:
        agree = r["agrees_with_pytorch"]
        cells.append(
            [
                r["label"],
                r["runtime"],
                f"{r['size_mb']:.2f}",
                f"{r['accuracy']:.2%}",
                "reference" if r["format"] == "pytorch" else ("n/a" if agree is None else f"{agree:.1%}"),
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['images_per_s']:.0f}",
            ]
        )
    return cells


def caption(result: dict[str, Any]) -> str:
    """What the numbers are: split, threads, runs, batch size."""
    p = result["plan"]
    return (
        f"{result['model']} ({result['architecture']}, {result['image_size']}px): accuracy on "
        f"{result['images']} {result['split']} images; p50/p90 of {p['latency_runs']} batch-1 calls; "
        f"images/s over {p['throughput_batches']} batches of {p['batch_size']}; "
        f"{result['threads']} thread{'' if result['threads'] == 1 else 's'} for every runtime"
    )


def markdown(result: dict[str, Any]) -> str:
    head = [*COLUMNS[:-1], f"images/s (batch {result['plan']['batch_size']})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    for s in result["skipped"]:
        lines.append(f"\nskipped {s['format']}: {s['reason']}")
    return caption(result) + "\n\n" + "\n".join(lines)
