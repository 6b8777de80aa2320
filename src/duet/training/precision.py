"""Numeric precision of the forward pass: ``auto | fp32 | bf16``, and why.

``resolve_precision(requested, device)`` decides and says why in words:

- ``fp32`` / ``bf16``: as asked (bf16 autocast runs on every CPU; without
  native bf16 it is emulated and slower, and the reason says so);
- ``auto``: bf16 on CUDA and on a CPU with AMX-BF16 (read from
  ``torch.cpu.get_capabilities()``); fp32 elsewhere. A CPU with AVX-512-BF16
  but no AMX stays fp32: on such a Xeon (2 cores) ResNet-18 bf16 training
  measured no faster than fp32, slower at 32 px (docs/benchmarks.md,
  "Training precision"), where AMX measured 2.7x (issue #13). With the
  capabilities passed in, it is a pure function of them.

Only the forward pass changes: ``autocast(precision, device)`` is the one
context every duet call site runs its model under (training steps,
validation, evaluation, prediction, lr-find, drift profiles, torch serving).
Master weights, optimizer state, EMA, checkpoints and exported weights stay
fp32; losses and probabilities are computed from ``logits.float()``. bf16 has
fp32's exponent range, so no loss scaling is needed.

A run records the requested value (config.yaml) and the resolved one
(run.json ``precision``, and the checkpoint), so ``--resume`` continues in the
precision it started with, on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

PrecisionName = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

# The native-bf16 CPU features "auto" turns bf16 on for (see the module docstring).
AUTO_BF16 = ("AMX-BF16",)

# Capability keys of torch.cpu.get_capabilities() that decide or describe precision.
CAPABILITY_KEYS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512_f", "avx2")


@dataclass(frozen=True)
class Precision:
    """The precision a forward pass runs in: ``name`` is "fp32" or "bf16"."""

    name: str
    requested: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Precision:
        return cls(str(d["name"]), str(d.get("requested", d["name"])), str(d.get("reason", "recorded")))


FP32 = Precision("fp32", "fp32", "fp32")


def cpu_capabilities() -> dict[str, Any]:
    """What torch's cpuinfo reports about this CPU: the ``CAPABILITY_KEYS`` flags,
    ``architecture`` and ``cpu_name`` (``torch.cpu.get_capabilities``, torch >= 2.8)."""
    import torch

    caps = dict(torch.cpu.get_capabilities())
    out: dict[str, Any] = {k: bool(caps.get(k, False)) for k in CAPABILITY_KEYS}
    out["architecture"] = str(caps.get("architecture", ""))
    out["cpu_name"] = str(caps.get("cpu_name", ""))
    return out


def native_bf16(capabilities: Mapping[str, Any]) -> str | None:
    """The CPU feature that makes bf16 arithmetic native, or None."""
    if capabilities.get("amx_bf16") and capabilities.get("amx_tile"):
        return "AMX-BF16"
    if capabilities.get("avx512_bf16"):
        return "AVX-512-BF16"
    return None


def _best_vector_isa(capabilities: Mapping[str, Any]) -> str:
    if capabilities.get("avx512_f"):
        return "AVX-512 without BF16"
    if capabilities.get("avx2"):
        return "AVX2 only"
    arch = capabilities.get("architecture") or "unknown architecture"
    return f"{arch}, no AVX2"


def resolve_precision(
    requested: str, device: torch.device | str, capabilities: Mapping[str, Any] | None = None
) -> Precision:
    """``requested`` ("auto" | "fp32" | "bf16") on ``device`` -> the choice and why.

    ``capabilities`` (as ``cpu_capabilities()`` returns them) are read from the
    CPU when not given; they matter only for "auto" and "bf16" on a CPU."""
    if requested not in PRECISIONS:
        from duet.errors import ConfigError

        raise ConfigError(f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={requested!r}")
    kind = device if isinstance(device, str) else device.type
    kind = kind.split(":")[0]
    if requested == "fp32":
        return Precision("fp32", requested, "fp32: asked for")
    if kind == "cuda":
        return Precision("bf16", requested, "bf16: CUDA" + (" (asked for)" if requested == "bf16" else ""))
    caps = cpu_capabilities() if capabilities is None else capabilities
    native = native_bf16(caps)
    if requested == "bf16":
        if native:
            return Precision("bf16", requested, f"bf16: asked for; CPU has {native}")
        return Precision(
            "bf16",
            requested,
            f"bf16: asked for; CPU has no native bf16 ({_best_vector_isa(caps)}), "
            "so it is emulated and slower than fp32",
        )
    if native in AUTO_BF16:
        return Precision("bf16", requested, f"bf16: CPU has {native}")
    if native:
        return Precision(
            "fp32",
            requested,
            f"fp32: CPU has {native} but no AMX, where bf16 measured no faster "
            "(docs/benchmarks.md); --precision bf16 forces it",
        )
    return Precision("fp32", requested, f"fp32: CPU has no native bf16 ({_best_vector_isa(caps)})")


def recorded_or(requested: str | None, recorded: Mapping[str, Any] | None, device: torch.device | str) -> Precision:
    """For a stage that uses a trained run (evaluate, predict, profile): an explicit
    ``requested`` value wins; else the run's recorded precision; else "auto"."""
    if requested is not None:
        return resolve_precision(requested, device)
    if recorded:
        p = Precision.from_dict(recorded)
        return Precision(p.name, p.name, f"{p.name}: the run's recorded precision (override with --precision)")
    return resolve_precision("auto", device)


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[Any]:
    """The forward-pass context for ``precision`` on ``device`` (bf16 autocast or nothing)."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.bf16)
