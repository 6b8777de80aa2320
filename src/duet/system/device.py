"""Which torch device a command runs on: ``auto | cpu | cuda | cuda:N``.

The one place that turns the ``--device`` option into a ``torch.device``; every
stage that runs a model (training, evaluation, profiling, drift, benchmarks)
asks here, so "cuda asked for but absent" is the same one-line error everywhere.
torch is imported only when a device is resolved.
"""

from __future__ import annotations

from pathlib import Path
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
    """CPUs this process may use: its affinity mask (not the machine's total),
    capped by a container's CPU limit (``cgroup_cpu_limit``). In a Kubernetes pod
    with ``limits.cpu: 2`` on a 64-core node the affinity mask still lists 64
    cores; thread pools sized from it would oversubscribe the quota and be
    throttled."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


CGROUP_FILES = (
    (Path("/sys/fs/cgroup/cpu.max"),),  # cgroup v2: "<quota> <period>" or "max <period>"
    (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")),  # v1; -1 = none
)


def cgroup_cpu_limit(files: tuple[tuple[Path, ...], ...] = CGROUP_FILES) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or None
    when there is none or it cannot be read."""
    for paths in files:
        try:
            fields = " ".join(p.read_text().strip() for p in paths).split()
        except OSError:
            continue
        if len(fields) != 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        return max(1, -(-quota // period)) if quota > 0 and period > 0 else None
    return None
