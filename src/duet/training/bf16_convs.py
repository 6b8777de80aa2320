"""Convolutions that bf16 autocast gets wrong on the CPU run in fp32 instead.

oneDNN's bf16 weight-gradient kernel for a strided convolution whose input is
smaller than its stride (ResNet-18's ``layer4.0.conv1`` at 16 px: a 1x1 map
into a stride-2 3x3 conv) reads memory it never wrote. The gradient differs
from call to call and is sometimes Inf or NaN: measured with torch 2.14.1 on
a Xeon with AVX-512-BF16, single-threaded, 104 of 300 backward passes of a
64->64 conv on a 1x1 map were non-finite and 273 differed from the first; an
input at least as large as the stride, stride 1, and fp32 were always exact.
The step guard (``duet.training.step``) skipped the poisoned steps, so
training survived, but two runs of one seed took different paths, which is
how resume tests caught it. Such convolutions see a pixel or two, so running
them in fp32 costs nothing measurable; the forward pass was never wrong, so
only training applies this.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from duet.training.precision import Precision


class Fp32Conv2d(nn.Conv2d):
    """A ``Conv2d`` that runs in fp32 under autocast (same parameters, same state dict)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with torch.autocast(input.device.type, enabled=False):
            return super().forward(input.float())


def input_sizes(model: nn.Module, image_size: int, channels: int = 3) -> dict[str, tuple[int, int]]:
    """The (height, width) each plain ``Conv2d`` of ``model`` sees for one
    ``image_size`` square image (one fp32 forward in eval mode, no gradients, so
    BatchNorm statistics are untouched)."""
    seen: dict[str, tuple[int, int]] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

        return hook

    hooks = [m.register_forward_pre_hook(recorder(n)) for n, m in model.named_modules() if type(m) is nn.Conv2d]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def keep_fp32_where_bf16_breaks(
    model: nn.Module, image_size: int, precision: Precision, device: torch.device, channels: int = 3
) -> list[str]:
    """Turn every plain ``Conv2d`` whose input is smaller than its stride into an
    ``Fp32Conv2d`` (bf16 on the CPU only; see the module docstring). Returns the
    names of the convolutions changed."""
    if not precision.bf16 or device.type != "cpu":
        return []
    sizes = input_sizes(model, image_size, channels)
    changed = []
    for name, module in model.named_modules():
        if name in sizes and any(s > 1 and side < s for side, s in zip(sizes[name], module.stride)):
            module.__class__ = Fp32Conv2d
            changed.append(name)
    return changed
