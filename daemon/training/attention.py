"""Causal attention that keeps packed examples apart: varlen flash attention on CUDA, per-example sdpa elsewhere.

Registered with transformers under PACKED_ATTENTION. Transformers then builds no mask (it drops a 2D
attention_mask) and hands the forward's cu_seq_lens_q / max_length_q kwargs to this function. Without
them it is plain causal attention over one row (batch-1 generation); a batch of rows, which may hold
padding, is refused: padded batches need sdpa.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_ATTENTION = "ticketune_packed"
_VARLEN_DTYPES = (torch.float16, torch.bfloat16)
# How many attention calls took each path since the last reset_path_counts(): "varlen" (the CUDA kernel),
# "segment_loop" (one sdpa call per example: CPU, or fp32 on CUDA) and "sdpa" (one unpacked row). Not
# counted while torch.compile traces. bench/gpu_check.py asserts no per-example loop ran under bf16.
PATH_COUNTS: dict[str, int] = {"varlen": 0, "segment_loop": 0, "sdpa": 0}


def register_packed_attention() -> str:
    """Registers the attention function (again is harmless); returns the attn_implementation name.

    Also reads varlen_attn's signature here, once, so that the compiled attention never calls inspect."""
    if torch.cuda.is_available():
        _varlen_parameters()
    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    return PACKED_ATTENTION


def reset_path_counts() -> dict[str, int]:
    """The counts so far, then zero."""
    counts = dict(PATH_COUNTS)
    for name in PATH_COUNTS:
        PATH_COUNTS[name] = 0
    return counts


def _count(path: str) -> None:
    if not torch.compiler.is_compiling():
        PATH_COUNTS[path] += 1


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [B, heads, S, D], key/value [B, kv_heads, S_kv, D] → output [B, S, heads, D]."""
    batch, _, q_length, _ = query.shape
    if attention_mask is not None or batch > 1:
        raise ValueError(
            f"{PACKED_ATTENTION} attention takes one unpadded or packed row, not a masked batch of {batch}; "
            "load the model with attn_implementation='sdpa' for padded batches"
        )
    if dropout > 0:
        raise ValueError(f"{PACKED_ATTENTION} attention has no attention dropout; set attention_dropout to 0")
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention has no sliding window; use sdpa for this model")
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        if q_length > 1 and key.shape[2] != q_length:
            raise ValueError(f"{PACKED_ATTENTION} attention cannot extend a cache by several tokens at once; use sdpa")
        _count("sdpa")
        output = F.scaled_dot_product_attention(
            query, key, value, scale=scaling, is_causal=q_length > 1, enable_gqa=_grouped(query, key)
        )
        return output.transpose(1, 2).contiguous(), None
    if query.is_cuda and query.dtype in _VARLEN_DTYPES:
        _count("varlen")
        return _varlen(query, key, value, cu_seq_lens, kwargs["max_length_q"], scaling), None
    _count("segment_loop")
    return _segment_loop(query, key, value, cu_seq_lens, scaling), None


def _varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    max_length: int,
    scaling: float | None,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    parameters = _varlen_parameters()
    if "window_size" not in parameters:
        raise ValueError(
            f"{PACKED_ATTENTION} attention on CUDA needs torch 2.11 or later (varlen_attn with window_size)"
        )
    q, k, v = (tensor[0].transpose(0, 1).contiguous() for tensor in (query, key, value))
    grouped = {}
    if _grouped(query, key):
        if "enable_gqa" in parameters:
            grouped["enable_gqa"] = True
        else:
            repeats = query.shape[1] // key.shape[1]
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    cu_seq_lens = cu_seq_lens.to(device=query.device, dtype=torch.int32)
    output = varlen_attn(
        q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, scale=scaling, window_size=(-1, 0), **grouped
    )
    return output.unsqueeze(0)


def _segment_loop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """One causal attention call per example. The row is split, not sliced: the backward of a slice fills a
    zero tensor the size of the whole row for each example, the backward of a split is one concatenation.
    bf16 on CPU takes _CPUHalfForward: the flash kernel's bf16 forward, its fp32 backward."""
    bounds = cu_seq_lens.tolist()
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    dtype = query.dtype
    upcast = not query.is_cuda and dtype in _VARLEN_DTYPES  # bf16 or fp16 on CPU
    if upcast and _cpu_flash_ops() is not None:
        output = _CPUHalfForward.apply(query, key, value, tuple(sizes), scaling)
        return output.transpose(1, 2).contiguous()
    grouped = _grouped(query, key)
    if upcast:  # a torch without the CPU flash operators: fp32 throughout
        query, key, value = query.float(), key.float(), value.float()
    pieces = [
        F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=True, enable_gqa=grouped)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True)
    ]
    output = torch.cat(pieces, dim=2).transpose(1, 2).contiguous()
    return output.to(dtype) if upcast else output


class _CPUHalfForward(torch.autograd.Function):
    """Causal attention per example of a packed row for bf16 (or fp16) on CPU: forward in the inputs' dtype, as
    bf16 training computes attention anywhere, backward in fp32 from the kept forward's output and log-sum-exp.

    torch's CPU flash kernel is fast forward in bf16 but slow backward (a layer of SmolLM2-135M over a
    2,048-token row: forward and backward 41.7 ms upcast to fp32 throughout, 33.3 ms this way, one thread; 31.3
    and 27.9 ms on two). What backward keeps is the bf16 inputs and output (half what the fp32 path kept)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sizes: tuple[int, ...],
                scaling: float | None) -> torch.Tensor:
        forward, _ = _cpu_flash_ops()
        outputs, lses = [], []
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2),
                           strict=True):
            output, lse = forward(q, k, v, 0.0, True, scale=scaling)[:2]
            outputs.append(output)
            lses.append(lse)
        ctx.save_for_backward(query, key, value, *outputs, *lses)
        ctx.sizes, ctx.scaling = sizes, scaling
        return torch.cat(outputs, dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        _, backward = _cpu_flash_ops()
        query, key, value, *kept = ctx.saved_tensors
        count = len(ctx.sizes)
        outputs, lses = kept[:count], kept[count:]
        grads: tuple[list[torch.Tensor], ...] = ([], [], [])
        for q, k, v, g, output, lse in zip(query.split(ctx.sizes, dim=2), key.split(ctx.sizes, dim=2),
                                           value.split(ctx.sizes, dim=2), grad.split(ctx.sizes, dim=2), outputs,
                                           lses, strict=True):
            pieces = backward(g.float(), q.float(), k.float(), v.float(), output.float(), lse, 0.0, True,
                              scale=ctx.scaling)
            for collected, piece in zip(grads, pieces, strict=True):
                collected.append(piece)
        return *(torch.cat(collected, dim=2).to(query.dtype) for collected in grads), None, None


@cache
def _cpu_flash_ops() -> tuple | None:
    """torch's CPU flash attention forward and backward operators, where this torch has them."""
    ops = torch.ops.aten
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu") and \
            hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        return (ops._scaled_dot_product_flash_attention_for_cpu.default,
                ops._scaled_dot_product_flash_attention_for_cpu_backward.default)
    return None


def _grouped(query: torch.Tensor, key: torch.Tensor) -> bool:
    return query.shape[1] != key.shape[1]


@cache
def _varlen_parameters() -> frozenset[str]:
    """varlen_attn's keyword names: window_size came after torch 2.10, enable_gqa is not in every version."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)
