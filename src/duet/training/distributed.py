"""The same training loop under torchrun: DDP with NCCL on GPU, gloo on CPU.

``torchrun --nproc-per-node N -m duet train ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; ``from_env`` reads them once, at the edge, and everything else gets
a ``Dist``. Without torchrun it is a world of one and every call is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only rank 0 writes artifacts and logs."""
        return self.rank == 0


def from_env(env: Mapping[str, str], device_name: str) -> Dist:
    """Join the process group if torchrun started us; choose the backend by device."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def device_for(d: Dist, device: torch.device) -> torch.device:
    return torch.device("cuda", d.local_rank) if device.type == "cuda" else device


def all_reduce_sum(d: Dist, values: list[float], device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one (e.g. a stop request)."""
    return all_reduce_sum(d, [1.0 if flag else 0.0], device)[0] > 0 if d.enabled else flag


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def env_snapshot() -> dict[str, str]:
    return {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
