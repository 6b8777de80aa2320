"""Which torch device a command runs on: ``auto | cpu | cuda | cuda:N``.

The one place that turns the ``--device`` option into a ``torch.device``; every
stage that runs a model (training, evaluation, profiling, drift, benchmarks)
asks here, so "cuda asked for but absent" is the same one-line error everywhere.
torch is imported only when a device is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from duet.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but no CUDA device is available; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
