"""The run's text model on texts: its probabilities and pooled features (torch; for profiles and `duet drift`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from duet.data.text.spec import TextSpec, encode

BATCH = 256


def model_outputs(model: Any, spec: TextSpec, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 [N, C], features float32 [N, D])``: the probabilities are the run's
    offline ones (``duet.training.text_run.predict_proba``), the features ``model.features`` of the same ids."""
    import torch

    from duet.training.text_run import predict_proba

    probabilities = np.asarray(predict_proba(model, spec, list(texts)), dtype=np.float32)
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), BATCH):
            ids = torch.from_numpy(encode(spec, texts[start : start + BATCH]))
            parts.append(model.features(ids).float().cpu().numpy())
    features = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return probabilities, features.astype(np.float32)
