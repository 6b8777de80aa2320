"""Fine-tuning recipe: head first, then every layer with discriminative learning rates.

``--recipe finetune`` (the default with pretrained weights) trains only the new
classifier head for ``freeze_epochs`` with the backbone frozen, then unfreezes
everything with layer-wise learning rates: the head at the peak LR, each block
further from it ``layer_decay`` times lower (timm's grouping of the
architecture's stages), as in fastai's ``fine_tune`` and BEiT/ViT fine-tuning.
``--recipe scratch`` trains all layers at one LR from the first step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from duet.training.models import classifier_name


def resolve(recipe: str, weights: str) -> str:
    if recipe != "auto":
        return recipe
    return "scratch" if weights == "none" else "finetune"


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, recipe: str, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with their own peak ``lr`` (no decay on norms and biases)."""
    if recipe == "finetune" and hasattr(model, "group_matcher"):
        from timm.optim import param_groups_layer_decay

        decayed = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
        for g in decayed:
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        return decayed
    head = classifier_name(model)
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        is_head = bool(head) and (name == head or name.startswith(head + "."))
        no_decay = p.ndim <= 1
        scale = 1.0 if (recipe != "finetune" or is_head) else 0.1  # two-level fallback (e.g. torchvision)
        key = (no_decay, scale == 1.0)
        g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale})
        g["params"].append(p)
    return list(groups.values())


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the classifier head (or unfreeze all)."""
    head = classifier_name(model)
    for name, p in model.named_parameters():
        is_head = bool(head) and (name == head or name.startswith(head + "."))
        p.requires_grad_(is_head or not frozen)


def trainable_fraction(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / max(total, 1)


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over classes (sklearn's "balanced")."""
    c = torch.tensor([max(n, 1) for n in counts], dtype=torch.float32)
    return c.sum() / (len(counts) * c)
