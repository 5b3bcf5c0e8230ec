"""A leaner forward and backward for peft's LoRA linear layer, when nothing but plain LoRA is in play.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as five operations, and autograd adds
the scaling's and the sum's backward. On CPU, where every pass over the activations costs memory
bandwidth and (for a small model) Python, that is a large share of a step: on SmolLM2-135M in bf16 the
LoRA scaling and sums were about a tenth of the step, beside the matrix products (bench/RESULTS.md).

Here one autograd function does the same arithmetic with no pass over the activations but the matrix
products themselves. In fp32 the adapter folds into the weight for the product (W + s·B·A, made again in
backward rather than kept), so a direction costs one product over the tokens. In bf16 that fold would lose
the adapter's small updates wherever they are under half a unit in the last place of W, so there the scaling
folds into the thin `x·Aᵀ` (tokens x r), the low-rank product adds into the base's output inside the matrix
product (addmm), and in backward the input's gradient through the adapter adds into the base's the same way.
It keeps what peft's layers keep (the input, and `x·Aᵀ` in bf16), so memory does not grow.

The fast path runs only where it gives exactly peft's function: one active plain LoRA adapter on an
`nn.Linear` (no DoRA, no LoRA bias, no dropout, not merged, adapters not disabled, a frozen base
weight, no mixed-adapter batch). Anything else calls peft's own forward, so `disable_adapter()` (the
preference objectives' reference model), merging and quantised bases behave as before.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear


class _LoRALinear(torch.autograd.Function):
    """y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ in `dtype`; gradients for x, A and B (W and bias are frozen).

    In fp32 the adapter folds into the weight, W + s·B·A (out x r x in: nothing beside the tokens' products),
    and each direction is one product over the tokens; backward makes the folded weight again rather than
    keep it. In bf16 the fold would round the adapter's small updates away, so the low-rank product adds into
    the base's output inside the matrix product (addmm) instead."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, dtype: torch.dtype) -> torch.Tensor:
        fold = dtype == torch.float32
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            if fold:
                scaled_xa = None
                w_used = _folded(w, a, b, scaling)
            else:
                scaled_xa = _scaled_xa(flat, a, scaling)
                w_used = w
            out = torch.mm(flat, w_used.t()) if bias is None else torch.addmm(bias.to(dtype), flat, w_used.t())
            if not fold:
                out.addmm_(scaled_xa, b.t())  # in place: addmm(out, ...) would first copy the whole output
        ctx.save_for_backward(flat, scaled_xa, w, a, b)
        ctx.scaling, ctx.fold, ctx.x_shape, ctx.x_dtype = scaling, fold, x.shape, x.dtype
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        flat, scaled_xa, w, a, b = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
            scaled_gb = torch.mm(g, b).mul_(ctx.scaling)  # tokens x r
            grad_x = None
            if ctx.needs_input_grad[0]:
                if ctx.fold:
                    grad_x = torch.mm(g, _folded(w, a, b, ctx.scaling))
                else:
                    grad_x = torch.mm(g, w).addmm_(scaled_gb, a)
                grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
            grad_a = torch.mm(scaled_gb.t(), flat).to(ctx.a_dtype) if ctx.needs_input_grad[3] else None
            grad_b = None
            if ctx.needs_input_grad[4]:
                if scaled_xa is None:
                    scaled_xa = _scaled_xa(flat, a, ctx.scaling)
                # (s·x·Aᵀ)ᵀ·g, transposed: the same product as gᵀ·(s·x·Aᵀ), reading g along its rows (faster)
                grad_b = torch.mm(scaled_xa.t(), g).t().to(ctx.b_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None


def _folded(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + s·B·A, the adapter folded into the weight (fp32 only)."""
    return torch.addmm(w, b, a, alpha=scaling)


def _scaled_xa(flat: torch.Tensor, a: torch.Tensor, scaling: float) -> torch.Tensor:
    """s·x·Aᵀ, tokens x r: the scaling costs nothing on A."""
    return torch.mm(flat, a.t() * scaling)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The LoRA linear's output, computed in autocast's dtype when autocast is on (as F.linear would), else x's."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling, dtype)


def _plain_adapter(layer: LoraLinear, kwargs: dict[str, Any]) -> str | None:
    """The one active adapter's name when the fast path gives peft's result exactly, else None."""
    if layer.disable_adapters or layer.merged or kwargs or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant or layer.lora_bias.get(name, False):
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity) or layer.fan_in_fan_out:
        return None
    base = layer.get_base_layer()
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    return name


def _lean_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if args else _plain_adapter(self, kwargs)
    if name is None:
        return LoraLinear.forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    return lora_linear(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                       self.scaling[name])


def use_lean_lora(model: torch.nn.Module) -> int:
    """Gives every peft LoRA linear layer of `model` the lean forward (each call still checks that it
    applies); returns how many layers got it."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count
