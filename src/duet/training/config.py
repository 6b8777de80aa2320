"""Typed training config: defaults < YAML file < command-line flags, validated once here.

Inside duet, code receives the fields it needs, never raw dicts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from duet.data.cache_dir import default_cache_dir
from duet.data.imageio import DEFAULT_MAX_PIXELS
from duet.data.preprocess import PreprocessSpec
from duet.errors import ConfigError


class AugmentConfig(BaseModel):
    """Training-time augmentation, applied batched on the training device."""

    model_config = ConfigDict(extra="forbid")

    hflip: bool = Field(True, description="random horizontal flip (turn off for text, digits, etc.)")
    scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop: area fraction range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random resized crop: aspect ratio range")

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1] <= 1):
            raise ValueError("must satisfy 0 < min <= max <= 1")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError("must satisfy 0 < min <= max")
        return v


class DPConfig(BaseModel):
    """Differentially private training (DP-SGD, ``duet.training.privacy``; the ``dp`` extra)."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(..., gt=0, le=1000, description="the privacy budget ε the run may spend, in total")
    delta: float | None = Field(
        None, gt=0, lt=1, description="δ of (ε, δ); default min(1e-5, 0.1 / training images), below 1/n"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm C")


class TrainConfig(BaseModel):
    """Everything that decides a training run. Saved resolved as RUN/config.yaml."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data_dir: Path
    model: str = "resnet18"
    weights: str = Field("none", description="none | imagenet | PATH to a state dict (.pt/.pth) or .safetensors")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    image_size: int = Field(224, ge=8, le=2048)
    crop_pct: float = Field(0.875, gt=0, le=1)
    val_split: float = Field(
        0.2, ge=0, lt=1, description="share of each class held out for validation (selects the epoch)"
    )
    test_split: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of each class held out as a test split, evaluated once after training; "
        "only when every class has >= 20 images (0 = none)",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="forward-pass precision: auto = bf16 autocast on CUDA and on CPUs with native bf16 "
        "(AMX or AVX-512-BF16), else fp32; weights, optimizer state and checkpoints stay fp32 (duet.training.precision)",
    )
    workers: int = Field(-1, ge=-1, description="DataLoader workers; -1 = one per CPU core (at most 8)")
    data_backend: Literal["auto", "torch", "cache", "tf"] = Field(
        "auto",
        description="auto: cache when it fits cache_max_gb, else torch; torch: DataLoader workers decode "
        "every epoch; cache: decode once into a memmap; tf: tf.data (extra duet[tf])",
    )
    cache_dir: Path | None = Field(
        None, description="where the 'cache' backend keeps decoded images [default: ~/.cache/duet]"
    )
    cache_max_gb: float = Field(50.0, ge=0, description="largest decode cache 'auto' will build, in GB")
    cache_device_share: float = Field(
        0.5, ge=0, le=0.95, description="hold the cache on the GPU when it fits this share of free GPU memory"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    max_load_failures: float = Field(
        0.01, ge=0, description="stop if more than this fraction of samples fail to load mid-training"
    )
    recipe: Literal["auto", "finetune", "scratch"] = Field(
        "auto",
        description="finetune: head first (backbone frozen), then all layers with layer-wise LRs; "
        "scratch: all layers from the start; auto: finetune when weights != none",
    )
    freeze_epochs: int = Field(1, ge=0, description="finetune: epochs that train only the new head")
    layer_decay: float = Field(0.75, gt=0, le=1, description="finetune: LR ratio between successive blocks")
    grad_clip: float = Field(0.0, ge=0, description="clip the global gradient norm (0 = off)")
    ema: bool = Field(False, description="keep an exponential moving average of the weights; validate and save it")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0 = off)")
    class_weights: Literal["auto", "on", "off"] = Field(
        "auto", description="weight the loss by inverse class frequency; auto: on when the imbalance ratio >= 3"
    )
    patience: int = Field(0, ge=0, description="early stopping: epochs without val improvement (0 = off)")
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every N steps inside an epoch (0 = epoch ends only)"
    )
    checkpoint_minutes: float = Field(10.0, ge=0, description="and at least every this many minutes (0 = off)")
    max_bad_steps: int = Field(20, ge=0, description="stop after this many non-finite losses in a run")
    rollback_after: int = Field(
        3, ge=1, description="non-finite losses in a row before rolling back to the last checkpoint"
    )
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1, description="LR multiplier applied at each rollback")
    out: Path = Path("runs")
    name: str | None = None
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig.model_validate({}))
    dp: DPConfig | None = Field(None, description="DP-SGD: {epsilon, delta, max_grad_norm} (None = off)")
    track: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="experiment tracking: mlflow (MLFLOW_TRACKING_URI, else <out>/mlflow.db) | tensorboard"
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v.startswith(".")):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return v

    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(image_size=self.image_size, crop_pct=self.crop_pct)

    def to_yaml_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        return d


def one_line_error(err: ValidationError, source: str, settings: type[BaseModel] | None = None) -> str:
    """A pydantic error as one line a user can act on (``settings``: the model whose keys are allowed)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    received = first.get("input")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(sorted((settings or TrainConfig).model_fields))
        return f"unknown setting `{loc}` in {source}; allowed: {allowed}"
    return f"`{loc}` {first['msg'].lower()}. Received: {loc}={received!r} (from {source}){more}"


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of settings, got {type(data).__name__}")
    return data


def build_config(
    file: Path | None = None, overrides: dict[str, Any] | None = None, *, source: str = "command line"
) -> TrainConfig:
    """Defaults < YAML ``file`` < ``overrides`` (flags; ``None`` values mean "not given")."""
    data: dict[str, Any] = load_yaml(file) if file else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("augment", "dp") and isinstance(value, dict):
            data[key] = {**(data.get(key) or {}), **value}
        else:
            data[key] = value
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, f"{file}" if file else source)) from e
    if config.cache_dir is None:
        config = config.model_copy(update={"cache_dir": default_cache_dir(os.environ)})
    return config


def config_from_dict(data: dict[str, Any], source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, source)) from e
