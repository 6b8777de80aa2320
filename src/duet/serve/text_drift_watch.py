"""Drift of a text model's traffic: a rolling window of recent documents against ``profile/text.json``.

The server records every predicted batch (``observe``: the documents, the
model's probabilities and pooled features); a verdict on the window is computed
on demand (``report``) by :func:`duet.monitor.text_drift.compare_text`::

    watch = TextDriftWatch.from_package(package)       # None: the folder has no text profile
    watch.observe(texts, probabilities, features)      # per batch, any thread, ~microseconds
    watch.report()                                     # {"status", "drift", "columns": [...], ...}

``observe`` only keeps references (strings are immutable) and copies of the
output rows under a lock, dropping the oldest beyond ``window``; ``report``
snapshots the window under the lock, tokenises it under the profile's spec and
runs the tests outside it (call it off the event loop). numpy + scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from duet.artifacts.model_package import ModelPackage
from duet.errors import ConfigError
from duet.monitor.text_drift import compare_text
from duet.monitor.text_profile import PROFILE_FILE, TextDriftSettings, TextProfile, doc_stats
from duet.serve.rolling_window import RollingWindow, listed_profile

DEFAULT_WINDOW = 500


@dataclass(frozen=True)
class _Batch:
    texts: list[str]
    probabilities: np.ndarray
    features: np.ndarray | None

    def __len__(self) -> int:
        return len(self.texts)

    def tail(self, rows: int) -> _Batch:
        features = None if self.features is None else self.features[-rows:]
        return _Batch(self.texts[-rows:], self.probabilities[-rows:], features)


class TextDriftWatch:
    """A bounded, thread-safe window of a text model's recent documents and the drift verdict on it."""

    def __init__(
        self, profile: TextProfile, *, window: int = DEFAULT_WINDOW, settings: TextDriftSettings | None = None
    ) -> None:
        if window < 2:
            raise ConfigError(f"`window` must be at least 2 documents. Received: window={window!r}")
        self.profile = profile
        self.window = window
        self.settings = settings or profile.settings
        self.vocabulary = frozenset(profile.spec.vocabulary)
        self._window: RollingWindow[_Batch] = RollingWindow(window)

    @classmethod
    def from_package(cls, package: ModelPackage, *, window: int = DEFAULT_WINDOW) -> TextDriftWatch | None:
        """The watch of a model folder whose ``profile/text.json`` is listed (and so checked) in model.json."""
        path = listed_profile(package, PROFILE_FILE)
        return None if path is None else cls(TextProfile.load(path), window=window)

    @property
    def seen(self) -> int:
        return self._window.seen

    @property
    def rows(self) -> int:
        return self._window.rows

    def observe(self, texts: Sequence[str], probabilities: np.ndarray, features: np.ndarray | None = None) -> None:
        """Record one predicted batch (ValueError when the lengths or widths disagree)."""
        probs = np.asarray(probabilities, dtype=np.float32)
        n = len(texts)
        if probs.shape != (n, len(self.profile.labels)):
            raise ValueError(f"probabilities must be ({n}, {len(self.profile.labels)}); got {probs.shape}")
        if features is not None and len(features) != n:
            raise ValueError(f"{len(features)} rows of features for {n} documents")
        keep = slice(max(0, n - self.window), n)
        feats = None if features is None else np.array(features[keep], dtype=np.float32)
        batch = _Batch(list(texts[keep]), probs[keep].copy(), feats)
        self._window.add(batch, n)

    def snapshot(self) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """The window: ``(texts, probabilities, features or None)``, oldest first."""
        batches = self._window.batches()
        texts = [t for b in batches for t in b.texts]
        probs = (
            np.concatenate([b.probabilities for b in batches]) if batches else np.zeros((0, len(self.profile.labels)))
        )
        have = batches and all(b.features is not None for b in batches)
        features = np.concatenate([b.features for b in batches if b.features is not None]) if have else None
        return texts, probs, features

    def report(self) -> dict[str, Any]:
        """The verdict on the window now (``TextDriftResult.to_dict()`` + ``window``, ``seen``)."""
        texts, probabilities, features = self.snapshot()
        docs = doc_stats(self.profile.spec, texts, self.vocabulary)
        result = compare_text(self.profile, docs, probabilities, features, self.settings)
        return {**result.to_dict(), "window": self.window, "seen": self._window.seen}
