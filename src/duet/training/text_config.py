"""The typed config of a text run (``duet train corpus/`` or ``duet train reviews.csv --text-column review``).

A separate model from the image ``TrainConfig`` and the ``TableConfig``: what all
share (epochs, batch size, LR schedule, seed, patience, out/name, track) has the
same name and meaning; the vectorisation settings (``standardize``, ``ngrams``,
``max_tokens``, ``sequence_length``) are the ``duet.data.text.spec`` arguments.
``modality: text`` is written to config.yaml so ``--resume`` knows which trainer
a run folder belongs to. The model names live here so the config (and a bad
corpus's error) needs no torch import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from duet.data.text.spec import STANDARDIZE_MODES
from duet.training.memory_config import MemoryRunConfig, build_config, config_from_dict, one_of

# the models of duet.training.text_models
TEXT_MODELS: tuple[str, ...] = ("fasttext", "text_transformer")
DEFAULT_TEXT_MODEL = "fasttext"


class TextConfig(MemoryRunConfig):
    """Every setting of a text run, validated once."""

    modality: Literal["text"] = "text"
    data: Path = Field(..., description="a folder of class folders of .txt files, or a table with a text column")
    text_column: str | None = Field(None, min_length=1, description="a table's column holding the text")
    target: str | None = Field(None, min_length=1, description="a table's column holding the class")
    val_data: Path | None = Field(None, description="a validation corpus of the same layout: fixes the split")
    model: str = Field(DEFAULT_TEXT_MODEL, description=f"one of {', '.join(TEXT_MODELS)}")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(5e-3, gt=0)
    warmup_epochs: float = Field(1.0, ge=0)
    test_split: float = Field(
        0.0, ge=0, lt=1, description="share of each class held out as a test split (only with >= 20 texts per class)"
    )
    patience: int = Field(5, ge=0, description="early stopping: epochs without val improvement (0 = off)")
    data_backend: Literal["native", "tf"] = Field(
        "native", description="who fits the vectorisation: native (default) or Keras TextVectorization (duet[tf])"
    )
    standardize: str = Field("lower_and_strip_punctuation", description=", ".join(STANDARDIZE_MODES))
    ngrams: int = Field(1, ge=1, le=2, description="1 = words, 2 = words and bigrams")
    max_tokens: int | None = Field(20000, ge=3, description="the id space, padding and OOV included")
    sequence_length: int = Field(256, ge=1, description="ids per document (truncated or 0-padded)")
    baseline: bool = Field(True, description="train scikit-learn's TF-IDF + LogisticRegression beside it")

    @field_validator("model")
    @classmethod
    def _model_ok(cls, v: str) -> str:
        return one_of(v, TEXT_MODELS)

    @field_validator("standardize")
    @classmethod
    def _standardize_ok(cls, v: str) -> str:
        return one_of(v, STANDARDIZE_MODES)


def build_text_config(
    file: Path | None = None, overrides: dict[str, Any] | None = None, *, source: str = "command line"
) -> TextConfig:
    """Defaults < YAML ``file`` < ``overrides`` (``None`` values mean "not given")."""
    return build_config(TextConfig, file, overrides, source)


def text_config_from_dict(data: dict[str, Any], source: str) -> TextConfig:
    return config_from_dict(TextConfig, data, source)


def is_text_config(data: dict[str, Any]) -> bool:
    """Whether a config.yaml (as a dict) belongs to a text run."""
    return data.get("modality") == "text" or "text_column" in data
