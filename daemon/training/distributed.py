"""Data parallelism for the worker under torchrun: which rank does what, and one gradient all-reduce per step.

Each rank trains on its share of a step's packed rows; the LoRA gradients (small: the base is frozen) are
summed across ranks once per step, so every rank applies the same update and the result equals one
process training the whole step. Without torchrun's environment this is a world of one and every
collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(use_cuda: bool) -> World:
    """Joins torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank)


def close_world(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(world: World, parameters: list[torch.nn.Parameter]) -> None:
    """Sums every trainable gradient across ranks in one flat all-reduce (a rank with no rows adds zeros)."""
    if not world.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for parameter, reduced in zip(parameters, _unflatten_dense_tensors(flat, grads), strict=True):
        if parameter.grad is None:
            parameter.grad = reduced
        else:
            parameter.grad.copy_(reduced)


def sum_values(world: World, values: list[float], device: torch.device) -> list[float]:
    """Sums a few scalars across ranks (step loss, eval sums, stop votes)."""
    if not world.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
