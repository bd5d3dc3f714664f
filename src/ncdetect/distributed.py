"""The only code that knows about several processes: torchrun's environment, sums, gathers, barriers.

Every helper is a no-op with one process, so the callers (training, embedding) read the same either way.
The distributed lines are marked ``# DIST``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """False in the processes torchrun starts with a RANK above 0: one process prints a command's result."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    import torch.distributed as dist  # DIST

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():  # DIST
        if use_cuda:
            torch.cuda.set_device(local_rank)  # DIST
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")  # DIST
    return DistEnv(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)  # DIST
            values.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)  # DIST
    return values


def all_gather_list(items: list, env: DistEnv) -> list:
    """Concatenate a small Python list from every process (used for the skipped-file records)."""
    if env.world == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * env.world
    dist.all_gather_object(parts, items)  # DIST
    return [x for part in parts for x in part]


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()  # DIST
