"""Process-wide tuning for the `duet` command (never applied on import of the library).

Two settings that made CPU input pipelines measurably faster on 2 cores
(docs/benchmarks.md has the before/after), both harmless for training:

- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep after a parallel region
  instead of spinning, so they stop burning the cores that duet's augmentation
  threads and data workers need. libgomp reads it once, when torch is
  imported, so this must run first. An explicit setting in the environment wins.
- glibc ``mallopt``: keep freed blocks up to 64 MiB in the heap instead of
  unmapping them. A float batch (32x3x224x224 is 19 MiB) is allocated while the
  previous one is still alive; unmapped memory comes back as fresh pages that
  the kernel must fault in and zero on every batch (up to a third of the CPU
  time of the cache backend's epoch). ``DUET_NO_MALLOPT=1`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import MutableMapping

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

applied: list[str] = []  # what tune_process did in this process (benchmarks report it)


def tune_process(environ: MutableMapping[str, str] = os.environ) -> None:
    if "OMP_WAIT_POLICY" not in environ:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        applied.append("OMP_WAIT_POLICY=PASSIVE")
    if environ.get("DUET_NO_MALLOPT") or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20):
            applied.append("mallopt(mmap/trim threshold 64/256 MiB)")
    except (OSError, AttributeError):
        pass  # not glibc after all: keep the defaults
