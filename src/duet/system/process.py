"""Process-wide settings: tuning for the `duet` command (never applied on import of the
library), and one crash guard that the library applies.

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

One guard, applied by the library too (``import duet`` and before training),
because without it a notebook crashes: TensorFlow >= 2.20 wheels load with
RTLD_GLOBAL, and triton's bundled LLVM, loaded after them, binds to
TensorFlow's copy and segfaults (tensorflow issue 124205) the first time torch
imports triton (AdamW's first step does). ``guard_triton`` sees that order
(TensorFlow resident, triton not yet imported) and makes ``import triton``
fail instead, which torch, torchvision and timm handle: they train normally.
The cost, said once on stderr: torch.compile has no triton kernels in that
process. Importing duet (or torch and triton) before TensorFlow avoids it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

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


def guard_triton(modules: MutableMapping[str, Any] = sys.modules) -> bool:
    """Block ``import triton`` when TensorFlow is already loaded and triton is not.

    Returns whether the guard is in place. Says once per process what it costs."""
    if modules.get("triton", "absent") is None:
        return True  # already blocked (by us or by the user)
    if modules.get("tensorflow") is None or "triton" in modules:
        return False
    if importlib.util.find_spec("triton") is None:
        return False  # not installed: nothing can crash
    modules["triton"] = None  # None in sys.modules makes `import triton` raise ImportError
    applied.append("triton blocked (TensorFlow loaded first)")
    warnings.warn(
        "duet: TensorFlow was imported before triton; triton is blocked in this process so that PyTorch "
        "does not crash (tensorflow issue 124205). Cost: torch.compile gets no triton kernels here. "
        "Import duet (or torch and triton) before tensorflow to keep them.",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def no_onnxruntime_telemetry(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Turn ONNX Runtime's telemetry off for this process unless the user chose.

    onnxruntime 1.32's Linux wheels record trace events for upload to Microsoft,
    with a persistent device id and a SQLite queue (measured: 1.1 MB under
    ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` after one session). A
    model server should not phone home or write to HOME by default; its
    Privacy.md says ``ORT_DISABLE_TELEMETRY=1`` before it initializes prevents
    the uploader, the events and the id. Set ``ORT_DISABLE_TELEMETRY=0`` to keep
    it on. Returns whether this call set it."""
    if ORT_TELEMETRY_ENV in environ:
        return False
    environ[ORT_TELEMETRY_ENV] = "1"
    return True


_interrupts: list[str] = []


def remember_interrupts() -> None:
    """SIGINT raises ``KeyboardInterrupt`` as Python's own handler does, and is remembered.

    A third-party import can swallow that exception: measured with torch 2.14.1,
    a SIGINT 0.35 s into ``import torch`` was lost and the process went on (a
    bare ``except`` in an optional import), so ``duet train`` trained to the end
    and exited 0. ``pending_interrupt`` lets the training loop honour it anyway.
    Call it from the main thread, first thing (the CLI does)."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        _interrupts.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def pending_interrupt() -> str | None:
    """The signal a ``remember_interrupts`` handler saw, if any (e.g. "SIGINT")."""
    return _interrupts[-1] if _interrupts else None
