"""Models for text: what reads ``duet.data.text.spec.encode``'s ids.

Every model here has the contract export, serving and drift rely on::

    model(ids: int64 [N, L]) -> logits float32 [N, classes]
    model.features(ids) -> float32 [N, D]   (the pooled vector before the head)

``ids`` are the spec's (0 = padding, 1 = out of vocabulary, 2.. = tokens); a
model is built from the spec alone (``build_text_model``), so a run folder
rebuilds it from run.json. Padding never counts: both models pool with a mean
over the non-padding positions (a document of padding only pools to zeros).

- ``fasttext`` (the default): the fastText classifier of Joulin et al., "Bag of
  Tricks for Efficient Text Classification" (2016): an embedding of every id
  (with ``--ngrams 2`` the bigrams are ids too), averaged, dropout, one linear
  layer. The average is written as a masked sum over a count (what
  ``EmbeddingBag(mode="mean")`` computes) so it exports as plain ONNX.
- ``text_transformer``: a small pre-norm Transformer encoder with learned
  positions; padded keys get no attention, the pooled vector is the masked mean
  of the last layer. The attention is written out (as ``tabular_models``' blocks)
  so ONNX export is plain MatMul/Softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from duet.data.text.spec import PAD_ID, TextSpec
from duet.errors import ConfigError
from duet.training.tabular_models import TransformerBlock
from duet.training.text_config import TEXT_MODELS

MASKED = -1e4  # added to the attention score of a padded key (finite: fp16-safe, exports as a constant)


def masked_mean(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [N, L, D]`` over the positions whose id is not padding; zeros for an all-padding row."""
    mask = (ids != PAD_ID).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class FastText(nn.Module):
    """Embedding bag (masked mean) -> dropout -> linear."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embedding.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.embedding(ids), ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(ids)))


class _MaskedBlock(TransformerBlock):
    """The tabular pre-norm block with padded keys masked out of the attention."""

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        if bias is not None:
            scores = scores + bias
        mixed = (self.drop(torch.softmax(scores, dim=-1)) @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.drop(self.proj(mixed))
        return x + self.drop(self.ffn(self.norm2(x)))


class TextTransformer(nn.Module):
    """Token + learned position embeddings through pre-norm blocks; masked mean pool; LayerNorm; linear."""

    def __init__(
        self,
        vocab_size: int,
        sequence_length: int,
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position = nn.Parameter(torch.randn(1, sequence_length, dim) * 0.02)
        self.blocks = nn.ModuleList(_MaskedBlock(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids) + self.position[:, : ids.shape[1]]
        bias = (ids == PAD_ID).to(x.dtype)[:, None, None, :] * MASKED  # [N, 1, 1, L]: per key
        for block in self.blocks:
            x = block(x, bias)
        return masked_mean(self.norm(x), ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


def build_text_model(name: str, spec: TextSpec, num_classes: int) -> nn.Module:
    """The model ``name`` for the ids ``spec`` produces (weights freshly initialised).

    Raises:
        ConfigError: an unknown name.
    """
    if name == "fasttext":
        return FastText(spec.vocab_size, num_classes)
    if name == "text_transformer":
        return TextTransformer(spec.vocab_size, spec.sequence_length, num_classes)
    raise ConfigError(f"unknown text model '{name}'; choose one of: {', '.join(TEXT_MODELS)}")
