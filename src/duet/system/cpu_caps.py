"""What the CPU can do for bf16 and int8: the capability fields of every
benchmark's machine line (`duet bench data|train|serve`). Which precision a
run picks from them is ``duet.training.precision``'s decision (from torch's own cpuinfo).

Read from ``/proc/cpuinfo`` (Linux; elsewhere the flags read as absent and the
name falls back to ``platform.processor()``), plus the SIMD level torch's
kernels dispatch to when torch is already imported (it is never imported from
here: the torch-free server calls this too).

- ``amx``: Advanced Matrix Extensions with bf16 tiles (Intel Sapphire Rapids
  and later): oneDNN runs bf16 matmuls and convolutions on them.
- ``avx512_bf16``: native bf16 dot products in AVX-512 (Intel Cooper Lake,
  Sapphire Rapids; AMD Zen 4 and later).
- ``avx512_vnni``: int8 dot products (what int8 ONNX inference runs on);
  ``avx_vnni`` is the 256-bit form of client cores.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path) -> tuple[str, set[str]]:
    """The first CPU's model name and flags ("" and {} when unreadable)."""
    name, flags = "", set[str]()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if name and flags:
            break
    return name, flags


def torch_capability() -> str:
    """torch's CPU kernel level ("AVX512", "AVX2", ...), or "" when torch is not
    imported in this process or does not say."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return ""


def cpu_capabilities(cpuinfo: Path = CPUINFO) -> dict[str, str | bool]:
    """{"cpu": name, "amx", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2": bool,
    "torch_capability": str}."""
    name, flags = _cpuinfo(cpuinfo)
    return {
        "cpu": name or platform.processor() or platform.machine() or "unknown",
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx2": "avx2" in flags,
        "torch_capability": torch_capability(),
    }


def summary(caps: dict[str, str | bool] | None = None) -> str:
    """One phrase for a machine line: "AMX no, AVX-512-BF16 yes, VNNI yes (torch AVX512)"."""
    caps = cpu_capabilities() if caps is None else caps

    def yn(flag: str) -> str:
        return "yes" if caps[flag] else "no"

    vnni = "yes" if caps["avx512_vnni"] else ("AVX-VNNI only" if caps["avx_vnni"] else "no")
    text = f"AMX {yn('amx')}, AVX-512-BF16 {yn('avx512_bf16')}, VNNI {vnni}"
    return text + (f" (torch {caps['torch_capability']})" if caps["torch_capability"] else "")
