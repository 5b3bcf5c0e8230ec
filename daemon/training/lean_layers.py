"""Llama's RMSNorm and SwiGLU feed-forward as autograd functions: the same arithmetic, less kept for backward.

Autograd keeps every intermediate an operation needs. transformers' Llama-family RMSNorm (`x.float()`,
square, mean, rsqrt, product, cast back, weight) leaves it the fp32 copy of the input, the normalised
fp32 values and their cast, each hidden-size wide; the feed-forward's `silu(gate(x)) * up(x)` leaves the
gate, the silu and the up projection, each intermediate-size wide, beside the product that the down
projection keeps. Here the norm keeps its input and one fp32 scale a token and recomputes the normalised
values in backward, and the feed-forward keeps the gate and up projections and recomputes the silu (one
pass) in backward. Measured on SmolLM2-135M in bf16 (bench/RESULTS.md): what a training token keeps a layer
went from 23.3 to 18.1 KiB, so the CPU checkpointing plan keeps more layers whole, and the norm's fewer
passes are faster on a CPU, where each is a trip through memory. Gradients are the same functions: the
feed-forward's bit for bit, the norm's to rounding.

Each replaces the forward of the modules whose class's forward is, word for word, Llama's (Mistral, Qwen2
and 3, Granite and SmolLM3 share both; Phi-3 shares the norm): Gemma's `1 + weight` norm or a fused
gate-up projection are other functions and keep their own. A module with a trainable norm weight, or a
feed-forward whose activation is not SiLU, keeps its own forward.
"""

from __future__ import annotations

import inspect
import os
import types
from functools import cache

import torch
import torch.nn.functional as F

# Set to 1: neither these layers nor the fused chunked loss (losses.py), e.g. to compare numerics with a run
# under FSDP2, where they are always off: with both, a sharded run's adapter moved off one process's by up to
# 3e-5 relative, against fp32 rounding with either alone or neither (not understood yet).
PLAIN_LAYERS_ENV = "TICKETUNE_PLAIN_LAYERS"


def plain_layers() -> bool:
    return os.environ.get(PLAIN_LAYERS_ENV) == "1"


class _RMSNorm(torch.autograd.Function):
    """weight · (x / rms(x)), normalised in fp32 and cast to x's dtype before the weight, as Llama's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        inverse_rms = torch.rsqrt(x32.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, inverse_rms)
        return weight * (x32 * inverse_rms).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inverse_rms = ctx.saved_tensors
        normalised = x.float() * inverse_rms
        grad_normalised = (grad * weight).float()  # the weight's product in the output's dtype, as autograd's
        dot = (grad_normalised * normalised).mean(-1, keepdim=True)
        grad_x = (grad_normalised - normalised * dot).mul_(inverse_rms)
        return grad_x.to(x.dtype), None, None


class _SiLUMul(torch.autograd.Function):
    """silu(gate) · up, keeping gate and up only."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SiLUMul.apply(gate, up)


def _norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.weight.requires_grad:
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _feed_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


@cache
def _silu_types() -> tuple[type, ...]:
    from transformers.activations import SiLUActivation

    return torch.nn.SiLU, SiLUActivation


@cache
def _llama_source(name: str) -> str:
    from transformers.models.llama import modeling_llama

    return inspect.getsource(getattr(modeling_llama, name).forward)


@cache
def _same_forward(cls: type, llama_class: str) -> bool:
    try:
        return inspect.getsource(cls.forward) == _llama_source(llama_class)
    except (OSError, TypeError):  # no source (compiled, built in): not known to be Llama's
        return False


def use_lean_layers(model: torch.nn.Module) -> list[str]:
    """Gives `model`'s Llama-style norms and feed-forwards the lean forwards; returns which kinds got one."""
    kinds = set()
    for module in model.modules():
        if hasattr(module, "variance_epsilon") and _same_forward(type(module), "LlamaRMSNorm"):
            module.forward = types.MethodType(_norm_forward, module)
            kinds.add("lean_rms_norm")
        elif type(getattr(module, "act_fn", None)) in _silu_types() and _same_forward(type(module), "LlamaMLP"):
            module.forward = types.MethodType(_feed_forward, module)
            kinds.add("lean_swiglu")
    return sorted(kinds)
