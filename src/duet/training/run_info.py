"""Reading back a table's or text's run folder: its run.json checked for the
modality, and its best weights loaded (``tabular_run``, ``text_run``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from duet.artifacts.run_dir import RunPaths
from duet.errors import RunError
from duet.training import checkpoint

SPLITS_FILE = "splits.json"  # each split's indices into the data as read


def read_modality_info(run_dir: Path, modality: str) -> dict[str, Any]:
    """run.json of a run of ``modality`` ("tabular", "text"); RunError when the folder is not one."""
    paths = RunPaths(Path(run_dir))
    try:
        info = json.loads(paths.info.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"'{paths.root}' is not a run folder (no readable run.json)") from e
    if info.get("modality") != modality:
        raise RunError(f"'{paths.root}' is not a {modality} run")
    return dict(info)


def is_modality_run(run_dir: Path, modality: str) -> bool:
    """Whether ``run_dir`` holds a run of ``modality`` (run.json says so)."""
    try:
        return json.loads(RunPaths(Path(run_dir)).info.read_text(encoding="utf-8")).get("modality") == modality
    except (OSError, ValueError):
        return False


def load_best(model: torch.nn.Module, run_dir: Path) -> torch.nn.Module:
    """``model`` with the run's best weights, in eval mode; RunError when there are none yet."""
    best = RunPaths(Path(run_dir)).best
    if not best.is_file():
        raise RunError(f"'{run_dir}' has no trained weights yet (checkpoints/best.safetensors is missing)")
    model.load_state_dict(checkpoint.load_weights(best))
    return model.eval()
