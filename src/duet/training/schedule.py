"""Learning-rate schedule: linear warm-up, then cosine decay to ``final`` x peak."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, total: int, warmup: int, final: float = 0.01) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
