"""Checkpoints as plain dicts of state, written atomically, never with NaNs.

last.pt holds everything ``--resume`` needs (model, optimizer, LR schedule, RNG
states, epoch, best metric); best.safetensors holds only the weights of the
best epoch, in a format that loads without executing pickled code.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from duet.errors import RunError
from duet.system.atomic import write_atomic, write_bytes_atomic


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all().item() for t in state.values() if t.is_floating_point())


def weights_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of the model's tensors (unwrapping DDP/compile)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in inner.state_dict().items()}


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    if not _finite(state):
        raise RunError(f"refusing to write {path.name}: the weights hold NaN or Inf values")
    write_bytes_atomic(path, save(state))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # a damaged file is a run problem, not a bug
        raise RunError(f"cannot read weights '{path}' ({type(e).__name__}); the file is damaged") from e


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_last(path: Path, state: dict[str, Any]) -> None:
    if not _finite(state["model"]):
        raise RunError(f"refusing to write {path.name}: the weights hold NaN or Inf values")
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


def load_last(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(
            f"no checkpoint to resume from: '{path}' is missing (the run stopped before its first epoch ended)"
        )
    try:
        # Our own file: it holds RNG states (tuples, numpy arrays), so weights_only is off.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RunError(f"cannot read checkpoint '{path}' ({type(e).__name__}); it is damaged") from e
