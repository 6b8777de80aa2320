"""Models for tables: what reads ``duet.data.tabular.spec.transform``'s two arrays.

Every model here has one signature, the contract export and serving rely on::

    model(numeric: float32 [N, K + M], categorical: int64 [N, C]) -> logits float32 [N, classes]

``numeric`` is the normalised numeric/boolean columns followed by the missing
indicators, ``categorical`` the vocabulary ids (0 = out of vocabulary, 1 =
missing, 2.. = tokens), exactly as the spec produces them; a model is built from
the spec alone (``build_tabular``), so a run folder rebuilds it from run.json.

- ``tab_mlp`` (the default): an embedding per categorical column, concatenated
  with the numeric features, then Linear -> ReLU -> BatchNorm -> Dropout blocks
  (fastai's tabular learner's shape, which is what a practitioner expects from a
  deep tabular baseline; embedding widths by its rule of thumb).
- ``ft_transformer``: the FT-Transformer of Gorishniy et al., "Revisiting Deep
  Learning Models for Tabular Data" (NeurIPS 2021): every feature becomes a
  token (a numeric value scales a learned vector, a category looks one up), a
  [CLS] token is prepended, pre-norm Transformer blocks mix them and the head
  reads [CLS]. The attention is written out (no fused kernel), so ONNX export is
  plain MatMul/Softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from duet.data.tabular.spec import TabularSpec
from duet.errors import ConfigError
from duet.training.tabular_config import TABULAR_MODELS


def embedding_width(cardinality: int) -> int:
    """fastai's rule of thumb for an embedding's width (``emb_sz_rule``), at most 600."""
    return int(min(600, round(1.6 * cardinality**0.56)))


class TabMLP(nn.Module):
    """Embeddings for the categorical ids, concatenated with the numeric features, then an MLP."""

    def __init__(
        self,
        num_numeric: int,
        cardinalities: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths = [embedding_width(c) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, w) for c, w in zip(cardinalities, widths))
        width = num_numeric + sum(widths)
        if width == 0:
            raise ConfigError("the table has no feature column for the model to read")
        blocks: list[nn.Module] = []
        for size in hidden:
            blocks += [nn.Linear(width, size), nn.ReLU(), nn.BatchNorm1d(size), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.head(self.body(torch.cat(parts, dim=1)))


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block with the attention written out (exports as plain ONNX ops)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        mixed = (self.drop(attn) @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.drop(self.proj(mixed))
        return x + self.drop(self.ffn(self.norm2(x)))


class FTTransformer(nn.Module):
    """Feature tokens + [CLS] through pre-norm Transformer blocks; the head reads [CLS]."""

    def __init__(
        self,
        num_numeric: int,
        cardinalities: Sequence[int],
        num_classes: int,
        dim: int = 64,
        depth: int = 3,
        heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_numeric + len(cardinalities) == 0:
            raise ConfigError("the table has no feature column for the model to read")
        self.num_weight = nn.Parameter(torch.randn(num_numeric, dim) / math.sqrt(dim))
        self.num_bias = nn.Parameter(torch.zeros(num_numeric, dim))
        self.embeddings = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, dropout) for _ in range(depth)))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, num_classes))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        tokens = [numeric.unsqueeze(-1) * self.num_weight + self.num_bias]
        tokens += [emb(categorical[:, i]).unsqueeze(1) for i, emb in enumerate(self.embeddings)]
        x = torch.cat([self.cls.expand(numeric.shape[0], -1, -1), *tokens], dim=1)
        return self.head(self.blocks(x)[:, 0])


def build_tabular(name: str, spec: TabularSpec, num_classes: int) -> nn.Module:
    """The model ``name`` for the features ``spec`` produces (weights freshly initialised).

    Raises:
        ConfigError: an unknown name, or a spec with no feature.
    """
    num_numeric = len(spec.numeric_names())
    cardinalities = [f.cardinality for f in spec.categorical]
    if name == "tab_mlp":
        return TabMLP(num_numeric, cardinalities, num_classes)
    if name == "ft_transformer":
        return FTTransformer(num_numeric, cardinalities, num_classes)
    raise ConfigError(f"unknown tabular model '{name}'; choose one of: {', '.join(TABULAR_MODELS)}")
