"""duet: a folder of labelled images to a monitored model in production.

The Python API (documented in docs/python_api.md), the same stages as the CLI::

    import duet
    run = duet.train("photos/", model="resnet18", epochs=5)   # -> duet.Run (runs/<name>/)
    run.evaluate()                                           # -> EvalResult, RUN/eval/
    export = duet.export(run)                                # -> ExportResult, RUN/export/
    model = duet.load(export.export_dir)                     # -> duet.Model (ONNX Runtime)
    model.predict("cat.jpg")                                 # -> [{"label": "cat", "probability": 0.97}, ...]
    duet.drift(run, "new_photos/").drift                     # -> DriftResult (True: drifted)

Every public name is loaded lazily on first use: ``import duet`` imports
neither torch nor TensorFlow and changes no process setting (thread counts and
the like are the CLI's business, ``duet.system.process.tune_process``), but
two safety defaults: ONNX Runtime's telemetry off unless ``ORT_DISABLE_TELEMETRY``
is set, and triton blocked when TensorFlow came first (both in duet.system.process).
"""

from __future__ import annotations

import importlib
from typing import Any

from duet.system.process import guard_triton, no_onnxruntime_telemetry

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "train": "duet.api.run",
    "resume": "duet.api.run",
    "evaluate": "duet.api.run",
    "export": "duet.api.run",
    "drift": "duet.api.run",
    "scan": "duet.api.run",
    "Run": "duet.api.run",
    "load": "duet.api.model",
    "Model": "duet.api.model",
    "tf_dataset": "duet.api.tf_data",
    "from_tf_dataset": "duet.api.tf_data",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


guard_triton()  # TensorFlow imported first would make torch's triton segfault: see duet/system/process.py
no_onnxruntime_telemetry()  # before onnxruntime initializes: see duet/system/process.py
