"""The settings a table's and a text's run share (``TableConfig``, ``TextConfig``).

Same names and meaning as the image ``TrainConfig``; each modality overrides only
the defaults that differ (epochs, batch size, LR, warm-up, patience) and adds its
own data and vectorisation settings. Also the parse steps both configs take:
defaults < YAML < flags, and one-line errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from duet.errors import ConfigError
from duet.training.config import load_yaml, one_line_error


class MemoryRunConfig(BaseModel):
    """The settings of an in-memory run that do not depend on the modality."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    val_split: float = Field(0.2, ge=0, lt=1, description="share of each class held out for validation")
    patience: int = Field(20, ge=0, description="early stopping: epochs without val improvement (0 = off)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_bad_steps: int = Field(20, ge=0, description="stop after this many non-finite losses in a run")
    out: Path = Path("runs")
    name: str | None = None
    track: Literal["none", "mlflow", "tensorboard"] = "none"

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v.startswith(".")):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return v

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def one_of(value: str, allowed: tuple[str, ...]) -> str:
    """A validator's check that ``value`` is one of ``allowed`` (pydantic's message when not)."""
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return value


C = TypeVar("C", bound=MemoryRunConfig)


def config_from_dict(cls: type[C], data: dict[str, Any], source: str) -> C:
    """``data`` validated as ``cls``; a ConfigError of one line naming ``source`` when it is not."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, source, cls)) from e


def build_config(cls: type[C], file: Path | None, overrides: dict[str, Any] | None, source: str) -> C:
    """Defaults < YAML ``file`` < ``overrides`` (``None`` values mean "not given")."""
    data: dict[str, Any] = load_yaml(file) if file else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, data, f"{file}" if file else source)
