"""What every runtime returns for a batch of pixels (``duet.serve.runtimes``, ``.tf_runtimes``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Outputs:
    logits: np.ndarray  # float32 (N, C)
    probabilities: np.ndarray  # float32 (N, C)
    version: str | None = None  # the model version that computed these rows (set by ModelService)
    features: np.ndarray | None = None  # float32 (N, D) penultimate features, when the graph has them

    def __len__(self) -> int:
        return len(self.logits)

    def rows(self, start: int, stop: int) -> Outputs:
        features = None if self.features is None else self.features[start:stop]
        return Outputs(self.logits[start:stop], self.probabilities[start:stop], self.version, features)

    @staticmethod
    def concat(parts: list[Outputs]) -> Outputs:
        if len(parts) == 1:
            return parts[0]
        features = None if any(p.features is None for p in parts) else np.concatenate([p.features for p in parts])
        return Outputs(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.probabilities for p in parts]),
            parts[-1].version,
            features,
        )
