"""What an evaluation returns (``EvalResult``) and what its split means (``describe_split``).

Shared by the image evaluation (``duet.evaluation.evaluate``) and the tabular one
(``duet.evaluation.tabular_evaluate``), which ``evaluate`` hands a tabular run to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLIT_MEANINGS = {
    "test": "test: held out, used neither for training nor to choose the epoch",
    "val": "validation: it chose the epoch, so this accuracy is optimistic",
    "train": "train: the model learned these images, so this accuracy is optimistic",
}


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    files: dict[str, Path]
    split: str
    data_dir: Path
    num_failed: int
    split_meaning: str = ""
    precision: str = ""  # what the forward pass ran in, and why
    runtime: str = ""  # what ran the model: PyTorch on the run's weights, or an exported format on its runtime
    unit: str = "images"  # what was evaluated: images, or a tabular run's rows
    baseline: dict[str, Any] | None = None  # a tabular run: the HistGB baseline beside the model (tabular_evaluate)


def describe_split(split: str, folder: Path | None = None) -> str:
    """What a number measured on ``split`` of the run's data (or, with ``folder``,
    on another labelled folder) means, in one line, for every report."""
    if folder is None:
        return SPLIT_MEANINGS.get(split, split)
    part = "all images" if split == "all" else f"its '{split}' split"
    return f"{part} of {folder}: held out only if none of them was in the run's training data"
