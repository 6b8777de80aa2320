"""Model factory: one front door for timm and torchvision classifiers.

``build(name, num_classes, weights, image_size)`` returns a model whose
classifier head has ``num_classes`` outputs. Names resolve in timm first
(1,000+ architectures, the same ``resnet18`` torchvision has);
``torchvision:<name>`` forces torchvision.

Input size: timm models with a fixed input size (ViT, Swin, ...) are built for
``image_size`` (timm's ``img_size``; pretrained position embeddings are
resampled); one that cannot be is refused with the size it takes.
``check_input_size`` runs one image through a model before training starts, so
any other size a model cannot take is a one-line error, not a traceback.

ImageNet weights offline: with ``HF_HUB_OFFLINE`` set only the local cache is
used; otherwise one HEAD request to the weights' host (``duet.system.netprobe``,
bounded at ``PROBE_SECONDS`` including the name lookup, and begun by the CLI
before the heavy imports) decides: no answer means cache only, so an offline
machine fails in seconds instead of spending ~50 s in the hub client's retries.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from duet.errors import ModelError
from duet.system.netprobe import reachable

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
                layer = head[i]
                if isinstance(layer, nn.Linear):
                    head[i] = nn.Linear(layer.in_features, num_classes)
                    return
    raise ModelError(f"cannot find the classifier head of {type(model).__name__} to replace")


def check_name(name: str) -> None:
    """Raise ModelError for a name that neither timm nor torchvision (with its prefix) knows."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        arch = name.removeprefix(TORCHVISION_PREFIX)
        if arch not in torchvision.models.list_models():
            raise ModelError(f"unknown torchvision model '{arch}'; see torchvision.models.list_models()")
        return
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model '{name}' (not a timm model; use 'torchvision:NAME' for torchvision).{hint}")


def _timm_cfg(name: str) -> Any:
    import timm.models

    return timm.models.get_pretrained_cfg(name, allow_unregistered=True)


def _timm_build(name: str, num_classes: int, pretrained: bool, image_size: int | None = None) -> nn.Module:
    import timm

    check_name(name)
    cfg = _timm_cfg(name)
    kwargs: dict[str, Any] = {}
    if image_size is not None and cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "img_size" not in kwargs or "img_size" not in str(e):
            raise
        side = cfg.input_size[-1]
        raise ModelError(
            f"model '{name}' takes only {side}x{side} images and cannot be built for "
            f"{image_size}x{image_size}; use --image-size {side} or another model"
        ) from None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file '{path}' does not exist; --weights takes none, imagenet or a file path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
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


NORMS = ("batch", "group")


def build(
    name: str, num_classes: int, weights: str = "none", image_size: int | None = None, norm: str = "batch"
) -> nn.Module:
    """Build classifier ``name`` with ``num_classes`` outputs.

    norm: ``batch`` (the architecture as published) or ``group``: every
    BatchNorm replaced by a GroupNorm (``batchnorm_to_groupnorm``), which
    DP-SGD needs (BatchNorm mixes the samples of a batch); run.json and
    model.json record it, so evaluation and serving rebuild the same model.

    weights: ``none`` (random init), ``imagenet`` (the library's pretrained
    weights, downloaded through its normal cache when online, fast failure
    offline: see the module docstring), or a path to a ``.safetensors`` /
    ``.pt`` / ``.pth`` state dict (head tensors of another shape are skipped,
    so an ImageNet checkpoint fine-tunes to N classes).
    image_size: the input side the model will see; fixed-size timm models are
    built for it (``None``: the model's default).
    """
    if norm not in NORMS:
        raise ModelError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    model = _build(name, num_classes, weights, image_size)
    if norm == "group":
        batchnorm_to_groupnorm(model)
        for module in model.modules():  # Opacus' per-sample hooks cannot see through in-place activations
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False  # type: ignore[assignment]
    return model


def batchnorm_to_groupnorm(model: nn.Module) -> int:
    """Replace every BatchNorm (1d/2d/3d, timm's BatchNormAct2d with its activation
    kept) by a GroupNorm of gcd(32, C) groups over the same C channels, in place,
    as Opacus' ``ModuleValidator.fix`` does; returns how many were replaced.
    Written here so that loading a DP model needs no Opacus (the server has none)."""
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm):
                continue
            channels = child.num_features
            groups = math.gcd(32, channels)
            norm: nn.Module = nn.GroupNorm(groups, channels, eps=child.eps, affine=True)
            act, drop = getattr(child, "act", None), getattr(child, "drop", None)
            if isinstance(act, nn.Module) or isinstance(drop, nn.Module):  # timm's BatchNormAct2d
                norm = nn.Sequential(norm, drop or nn.Identity(), act or nn.Identity())
            setattr(parent, child_name, norm)
            count += 1
    return count


def _build(name: str, num_classes: int, weights: str, image_size: int | None) -> nn.Module:
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    tv = name.startswith(TORCHVISION_PREFIX)
    arch = name.removeprefix(TORCHVISION_PREFIX)

    def make(pretrained: bool) -> nn.Module:
        if tv:
            return _torchvision_build(arch, num_classes, pretrained)
        return _timm_build(arch, num_classes, pretrained, image_size)

    if weights == "none":
        return make(False)
    if weights == "imagenet":
        why = _network_unusable(name, tv, arch)
        with _hub_cache_only() if why else nullcontext():
            try:
                return make(True)
            except ModelError:
                raise
            except Exception as e:  # network/hub failures come in many types
                reason = (
                    f"{why} and the weights are not in the local cache"
                    if why
                    else f"{type(e).__name__}; are you offline?"
                )
                raise ModelError(_offline_message(name, reason)) from e
    if not Path(weights).is_file():
        raise ModelError(f"weights file '{weights}' does not exist; --weights takes none, imagenet or a file path")
    model = make(False)
    load_weights_file(model, Path(weights))
    return model


def _offline_message(name: str, why: str) -> str:
    return (
        f"could not get ImageNet weights for '{name}' ({why}). "
        "Download the weights elsewhere and pass --weights PATH (a .safetensors or .pth state dict)"
    )


@contextmanager
def _hub_cache_only() -> Iterator[None]:
    """Make huggingface_hub use its local cache only (what HF_HUB_OFFLINE=1 does)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _weights_url(tv: bool, arch: str) -> tuple[str, bool]:
    """Where ImageNet weights come from: (url, is the Hugging Face Hub)."""
    if tv:
        import torchvision

        return torchvision.models.get_model_weights(arch).DEFAULT.url, False
    cfg = _timm_cfg(arch)
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import constants

        return constants.ENDPOINT, True
    return (cfg.url if cfg is not None and cfg.url else ""), False


def _network_unusable(name: str, tv: bool, arch: str) -> str | None:
    """Why the weights must come from the local cache (None: download as usual).

    Hub weights then load from the cache only; weights behind a plain URL that
    are not cached are refused at once."""
    if not tv:
        check_name(arch)  # an unknown name is its own error, not "offline"
    url, hub = _weights_url(tv, arch)
    if hub:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        return None if reachable(url) else f"{urllib.parse.urlsplit(url).hostname} is not reachable"
    if not url:
        return None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlsplit(url).path)
    if cached.is_file() or reachable(url):
        return None
    raise ModelError(
        _offline_message(
            name, f"{urllib.parse.urlsplit(url).hostname} is not reachable and the weights are not in the local cache"
        )
    )


def check_source(name: str, weights: str) -> None:
    """The cheap checks of ``build``, for before a long data scan: the model name,
    a weights file that exists, and ImageNet weights that can be had (online,
    or in the local cache). Raises ModelError with what to do."""
    tv = name.startswith(TORCHVISION_PREFIX)
    arch = name.removeprefix(TORCHVISION_PREFIX)
    check_name(name)
    if weights == "none":
        return
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise ModelError(f"weights file '{weights}' does not exist; --weights takes none, imagenet or a file path")
        return
    why = _network_unusable(name, tv, arch)
    if why is None or tv:
        return
    from huggingface_hub import try_to_load_from_cache

    cfg = _timm_cfg(arch)
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    if not any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, n), str) for n in names):
        raise ModelError(_offline_message(name, f"{why} and the weights are not in the local cache"))


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """Run one blank image of ``image_size`` through ``model`` (eval mode, no
    gradients, on the CPU, before training): a size the model cannot take is a
    ModelError naming the size it expects, instead of a traceback mid-run."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # shape assertions and errors come in many types
        cfg = None if name.startswith(TORCHVISION_PREFIX) else _timm_cfg(name)
        side = cfg.input_size[-1] if cfg is not None else 224
        detail = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise ModelError(
            f"model '{name}' cannot take {image_size}x{image_size} images ({detail}); "
            f"use --image-size {side} or another model"
        ) from None
    finally:
        model.train(was_training)


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
