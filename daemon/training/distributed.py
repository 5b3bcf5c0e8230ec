"""Several processes under torchrun: which rank does what, and how the LoRA gradients are summed across them.

Data parallel (`training.sharding: none`): each rank holds the whole model and trains on its share of a
step's packed rows; the LoRA gradients (small: the base is frozen) are summed across ranks once per step,
so every rank applies the same update and the result equals one process training the whole step.
FSDP2 (`training.sharding: fsdp`): every parameter is sharded across the ranks (`shard_model`), FSDP
all-gathers a layer for its forward and backward and reduce-scatters its gradients, summed as above; every
rank then runs the same number of forward passes (`rank_share`), and the full adapter is gathered for
checkpoints and the saved adapter (`gathered`). Without torchrun's environment this is a world of one and
every collective is a no-op.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    sharded: bool = False  # FSDP2: the model's parameters are split across the ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(use_cuda: bool, sharding: str = "none") -> World:
    """Joins torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); sharding "fsdp" then
    shards the model (one rank alone has nothing to shard with)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank, sharded=sharding == "fsdp")


def close_world(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(world: World, parameters: list[torch.nn.Parameter]) -> None:
    """Sums every trainable gradient across ranks in one flat all-reduce (a rank with no rows adds zeros);
    under FSDP the backward has already reduce-scattered them."""
    if not world.active or world.sharded:
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


def rank_share(items: Sequence[T], world: World) -> list[T | None]:
    """This rank's items (every size-th from its rank). Under FSDP each forward pass all-gathers with the other
    ranks, so a short share is topped up with None: the caller runs a pass that counts for nothing."""
    share: list[T | None] = list(items[world.rank :: world.size])
    if world.sharded:
        share += [None] * (math.ceil(len(items) / world.size) - len(share))
    return share


def shard_model(layers: list[torch.nn.Module], body: torch.nn.Module, world: World, device: torch.device,
                dtype: torch.dtype) -> None:
    """FSDP2 on each decoder layer, then on the decoder body (embeddings and final norm) as the root: the loss
    calls the body and the output head apart (losses.py), so the head stays whole on every rank. Parameters move
    to `device` as their layer is sharded. Gradients are summed across ranks, not averaged: each rank's loss is
    already divided by the whole step's tokens (divide factor 1, reduced with plain SUM: the factor alone would
    reduce with PREMUL_SUM, which gloo refuses). bf16 computes with bf16 copies of the fp32 adapter weights
    and reduces gradients in fp32."""
    mesh = init_device_mesh(device.type, (world.size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if dtype == torch.bfloat16 else MixedPrecisionPolicy())
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(body, mesh=mesh, mp_policy=policy)
    for module in body.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded one is all-gathered (a collective: every rank calls it), any other is itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shaped_like(whole: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """`whole` as `parameter` holds it: this rank's shard of it for a sharded parameter (no communication)."""
    whole = whole.to(parameter.device)
    if isinstance(parameter, DTensor):
        return distribute_tensor(whole, parameter.device_mesh, parameter.placements, src_data_rank=None)
    return whole
