"""`duet demo`: the whole pipeline on bundled real data, exactly as a user runs it.

The data are scikit-learn's handwritten digits (1,797 real 8x8 scans of 10
digits, shipped inside scikit-learn, so nothing is downloaded), written as
32x32 RGB PNG files in class folders. The demo then runs the same stage
functions the CLI commands call: scan -> split -> train -> evaluate -> predict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duet.artifacts.run_dir import load_run
from duet.data.digits import write_digits
from duet.data.scan import read_manifest
from duet.evaluation.evaluate import EvalResult, evaluate
from duet.evaluation.inference import load_model, predict_file, top_k
from duet.system.device import resolve_device
from duet.training.config import build_config
from duet.training.loop import Log, TrainResult, train
from duet.training.precision import recorded_or

# Measured on 2 CPU cores (see README): resnet18 from scratch at 32 px, digits
# need no flips (a mirrored 3 is not a 3) and only mild crops.
DEMO_SETTINGS: dict[str, Any] = {
    "model": "resnet18",
    "image_size": 32,
    "crop_pct": 1.0,
    "epochs": 12,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "augment": {"hflip": False, "scale": (0.7, 1.0), "ratio": (0.85, 1.18)},
}


@dataclass
class DemoResult:
    data_dir: Path
    train: TrainResult
    evaluation: EvalResult
    predictions: list[dict[str, Any]]
    seconds: float


def run_demo(
    workdir: Path,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    log: Log = print,
) -> DemoResult:
    t0 = time.perf_counter()
    workdir = Path(workdir)
    data = write_digits(workdir / "digits", size=32, progress=progress)
    log(f"data: {data['num_images']} real handwritten digits in {data['num_classes']} class folders at {data['dir']}")
    overrides = {
        **DEMO_SETTINGS,
        "data_dir": workdir / "digits",
        "out": workdir / "runs",
        "seed": seed,
        "device": device,
        "precision": precision,
    }
    if epochs is not None:
        overrides["epochs"] = epochs
    config = build_config(overrides=overrides, source="demo settings")
    result = train(config, progress=progress, log=log)
    # The drift reference profile is the caller's to write, after training (as duet.train() does).
    from duet.monitor.profile import ensure_profile

    ensure_profile(result.run_dir, device=device, workers=None, progress=progress, log=log)
    evaluation = evaluate(result.run_dir, device=device, progress=progress)
    run = load_run(result.run_dir)
    dev = resolve_device(device)
    model = load_model(run, dev)
    chosen = recorded_or(None, run.precision, dev)
    # Predict one held-out (validation) file of each of the first five digits.
    manifest = read_manifest(run.paths.manifest, run.data_dir)
    predictions = []
    for label in run.labels[:5]:
        row = next(r for r in manifest.usable() if r.label == label and r.split == "val")
        path = manifest.data_dir / row.path
        probs = predict_file(model, run, path, dev, max_pixels=config.max_pixels, precision=chosen)
        predictions.append({"file": str(path), "true": label, "top": top_k(probs, run.labels, 3)})
    return DemoResult(workdir / "digits", result, evaluation, predictions, time.perf_counter() - t0)
