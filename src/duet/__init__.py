"""duet: a folder of labelled images to a monitored model in production.

The public Python API is imported lazily (``import duet`` imports neither torch
nor TensorFlow): a name is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from duet.system.process import guard_triton

__version__ = "0.1.0"

_LAZY = {"tf_dataset": "duet.api.tf_data", "from_tf_dataset": "duet.api.tf_data"}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duet' has no attribute {name!r}")


guard_triton()  # TensorFlow imported first would make torch's triton segfault: see duet/system/process.py
