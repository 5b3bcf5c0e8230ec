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
    """One causal sdpa call per example. The row is split, not sliced: the backward of a slice fills a
    zero tensor the size of the whole row for each example, the backward of a split is one concatenation.
    bf16 runs in fp32 here on CPU, where the bf16 attention was the slower (a layer's forward and backward
    over a 2,451-token row of 11 examples: 127 ms in bf16, 106 ms upcast, one thread on an AMX Xeon)."""
    bounds = cu_seq_lens.tolist()
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    grouped = _grouped(query, key)
    dtype = query.dtype
    upcast = not query.is_cuda and dtype in _VARLEN_DTYPES
    if upcast:
        query, key, value = query.float(), key.float(), value.float()
    pieces = [
        F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=True, enable_gqa=grouped)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True)
    ]
    output = torch.cat(pieces, dim=2).transpose(1, 2).contiguous()
    return output.to(dtype) if upcast else output


def _grouped(query: torch.Tensor, key: torch.Tensor) -> bool:
    return query.shape[1] != key.shape[1]


@cache
def _varlen_parameters() -> frozenset[str]:
    """varlen_attn's keyword names: window_size came after torch 2.10, enable_gqa is not in every version."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)
