"""The typed config of a tabular run (``duet train data.csv --target label``): defaults < YAML < flags.

A separate model from the image ``TrainConfig`` because most image settings
(image size, augmentation, decode cache, mixup) mean nothing for a table, and a
setting that is silently ignored is worse than one that is refused. What both
share (epochs, batch size, LR schedule, seed, patience, out/name, track) has the
same name and meaning. ``modality: tabular`` is written to config.yaml so
``--resume`` knows which trainer a run folder belongs to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from duet.data.tabular.schema import KINDS
from duet.training.memory_config import MemoryRunConfig, build_config, config_from_dict, one_of

# the models of duet.training.tabular_models (named here so the config, and a bad
# table's error, need no torch import)
TABULAR_MODELS: tuple[str, ...] = ("tab_mlp", "ft_transformer")
DEFAULT_TABULAR_MODEL = "tab_mlp"


class TableConfig(MemoryRunConfig):
    """Every setting of a tabular run, validated once."""

    modality: Literal["tabular"] = "tabular"
    data: Path = Field(..., description="the training table (.csv, .tsv, .parquet); with val_data, all of it trains")
    target: str = Field(..., min_length=1, description="the column holding each row's class")
    val_data: Path | None = Field(None, description="a validation table: fixes the split (same columns)")
    columns: dict[str, str] = Field(
        default_factory=dict, description="column kinds overriding inference, e.g. {zip: categorical}"
    )
    model: str = Field(DEFAULT_TABULAR_MODEL, description=f"one of {', '.join(TABULAR_MODELS)}")
    test_split: float = Field(
        0.0, ge=0, lt=1, description="share of each class held out as a test split (only with >= 20 rows per class)"
    )
    data_backend: Literal["numpy", "tf"] = Field(
        "numpy", description="who fits the preprocessing spec: numpy (default) or Keras layers (extra duet[tf])"
    )
    min_count: int = Field(1, ge=1, description="categories seen fewer times in training become out-of-vocabulary")
    max_tokens: int | None = Field(None, ge=1, description="at most this many categories per column")
    baseline: bool = Field(True, description="train scikit-learn's HistGradientBoostingClassifier beside it")

    @field_validator("model")
    @classmethod
    def _model_ok(cls, v: str) -> str:
        return one_of(v, TABULAR_MODELS)

    @field_validator("columns")
    @classmethod
    def _kinds_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for name, kind in v.items():
            if kind not in KINDS:
                raise ValueError(f"kind of column '{name}' must be one of {', '.join(KINDS)}")
        return v


def build_table_config(
    file: Path | None = None, overrides: dict[str, Any] | None = None, *, source: str = "command line"
) -> TableConfig:
    """Defaults < YAML ``file`` < ``overrides`` (``None`` values mean "not given")."""
    return build_config(TableConfig, file, overrides, source)


def table_config_from_dict(data: dict[str, Any], source: str) -> TableConfig:
    return config_from_dict(TableConfig, data, source)


def is_tabular_config(data: dict[str, Any]) -> bool:
    """Whether a config.yaml (as a dict) belongs to a tabular run."""
    return data.get("modality") == "tabular"
