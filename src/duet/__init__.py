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
the like are the CLI's business, ``duet.system.process.tune_process``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from duet.system.process import guard_triton

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


class _Stage:
    """``duet.train`` and ``duet.export`` are API functions and also the names of
    subpackages (duet/train/, duet/export/). This object is both: calling it calls
    the function (``duet.api.run``); its attributes are the subpackage's, so
    ``duet.train.loop`` and ``import duet.train.loop as m`` keep working."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def __wrapped__(self) -> Any:  # inspect.signature and help() follow it to the function
        return getattr(importlib.import_module(_LAZY[self._name]), self._name)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.__wrapped__.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(f"duet.{self._name}"), attr)

    def __repr__(self) -> str:
        return f"<duet.{self._name}: function {_LAZY[self._name]}.{self._name}, and package duet.{self._name}>"


class _Duet(types.ModuleType):
    """Keeps ``duet.train`` / ``duet.export`` the :class:`_Stage` objects when the
    import system sets the subpackage of the same name as an attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _STAGES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


_STAGES = ("train", "export")
train: Any = _Stage("train")
export: Any = _Stage("export")
sys.modules[__name__].__class__ = _Duet


guard_triton()  # TensorFlow imported first would make torch's triton segfault: see duet/system/process.py
