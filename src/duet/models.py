"""Model factory: one front door for timm and torchvision classifiers.

``build(name, num_classes, weights)`` returns a model whose classifier head has
``num_classes`` outputs. Names resolve in timm first (1,000+ architectures, the
same ``resnet18`` torchvision has); ``torchvision:<name>`` forces torchvision.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from duet.errors import ModelError

TORCHVISION_PREFIX = "torchvision:"


def _torchvision_build(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelError(f"unknown torchvision model '{name}'; see torchvision.models.list_models()")
    weights = "DEFAULT" if pretrained else None
    model = torchvision.models.get_model(name, weights=weights)
    _replace_torchvision_head(model, num_classes)
    return model


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear for an N-way one, as in the classic ResNet fine-tune
    (``model.fc = nn.Linear(512, N)``), wherever torchvision keeps it."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Linear(head.in_features, num_classes))
            return
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    head[i] = nn.Linear(head[i].in_features, num_classes)
                    return
    raise ModelError(f"cannot find the classifier head of {type(model).__name__} to replace")


def _timm_build(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model '{name}' (not a timm model; use 'torchvision:NAME' for torchvision).{hint}")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist; --weights takes none, imagenet or a file path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of a user file is a user error
        raise ModelError(f"cannot read weights file '{path}': {type(e).__name__}: {e}".splitlines()[0]) from e
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file '{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_file(model: nn.Module, path: Path) -> list[str]:
    """Load a local state dict, skipping tensors whose shape does not fit (the old
    classifier head). Returns the names left at their initial values. Refuses a
    file that matches little of the model: that is the wrong architecture."""
    state = _load_state_dict(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < 0.5 * len(own):
        raise ModelError(
            f"weights file '{path}' matches only {len(fitting)} of {len(own)} tensors of the model; "
            "is it for a different architecture? (check --model)"
        )
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def build(name: str, num_classes: int, weights: str = "none") -> nn.Module:
    """Build classifier ``name`` with ``num_classes`` outputs.

    weights: ``none`` (random init), ``imagenet`` (the library's pretrained
    weights, downloaded through its normal cache when online), or a path to a
    ``.safetensors`` / ``.pt`` / ``.pth`` state dict (head tensors of another
    shape are skipped, so an ImageNet checkpoint fine-tunes to N classes).
    """
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    tv = name.startswith(TORCHVISION_PREFIX)
    arch = name.removeprefix(TORCHVISION_PREFIX)
    builder = _torchvision_build if tv else _timm_build
    if weights == "none":
        return builder(arch, num_classes, False)
    if weights == "imagenet":
        try:
            return builder(arch, num_classes, True)
        except ModelError:
            raise
        except Exception as e:  # network/hub failures come in many types
            raise ModelError(
                f"could not get ImageNet weights for '{name}' ({type(e).__name__}); are you offline? "
                "Download the weights elsewhere and pass --weights PATH (a .safetensors or .pth state dict)"
            ) from e
    model = builder(arch, num_classes, False)
    load_weights_file(model, Path(weights))
    return model


def classifier_name(model: nn.Module) -> str:
    """Parameter-name prefix of the head (for fine-tune recipes and reports)."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for n, m in model.named_modules():
            if m is head:
                return n
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            return attr
    return ""
