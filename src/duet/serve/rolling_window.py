"""The rolling window of recent predicted batches that the tabular and text drift watches keep.

``add`` appends a batch under a lock and drops the oldest rows beyond ``size``
(cutting the oldest batch with its ``tail`` when only part of it must go);
``batches`` snapshots the window under the lock, so the tests run outside it.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from duet.artifacts.model_package import PROFILE_DIR, ModelPackage


class Batch(Protocol):
    def __len__(self) -> int: ...

    def tail(self, rows: int) -> Any: ...


B = TypeVar("B", bound=Batch)


class RollingWindow(Generic[B]):
    """At most ``size`` recent rows, as the batches they came in (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._batches: deque[B] = deque()
        self.rows = 0  # in the window now (at most ``size``)
        self.seen = 0  # observed since the start (or the last clear)

    def add(self, batch: B, observed: int) -> None:
        """Append ``batch`` (of the ``observed`` rows of a request, maybe cut to ``size``)."""
        with self._lock:
            self._batches.append(batch)
            self.rows += len(batch)
            self.seen += observed
            while self.rows > self.size:
                extra, first = self.rows - self.size, self._batches[0]
                if len(first) <= extra:
                    self._batches.popleft()
                    self.rows -= len(first)
                else:
                    self._batches[0] = first.tail(len(first) - extra)
                    self.rows -= extra

    def batches(self) -> list[B]:
        """The window's batches, oldest first."""
        with self._lock:
            return list(self._batches)

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()
            self.rows = self.seen = 0


def listed_profile(package: ModelPackage, name: str) -> Path | None:
    """``profile/<name>`` of a model folder when model.json lists it (and so checks it), else None."""
    path = package.root / PROFILE_DIR / name
    if f"{PROFILE_DIR}/{name}" not in package.manifest.get("files", {}) or not path.is_file():
        return None
    return path
