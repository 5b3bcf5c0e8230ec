"""Memory-aware activation checkpointing: off where the GPU's memory allows, on as few layers as it must.

Recomputing a layer's forward in backward costs about a third of its training time, so checkpointing
every layer (the usual default) is a large tax on a card that has the room. Here the room is measured,
not guessed: with every decoder layer checkpointed, one full training step on a row of `row_tokens`
tokens (every token supervised, the worst case for the loss) gives the peak; one forward with one layer
left whole gives what each un-checkpointed layer adds. As many layers as fit in the budget keep their
activations, spread evenly over the stack; the rest are checkpointed (so "every n-th layer").

The budget is `training.memory_budget_gib`, or 90% of the device's memory. Only packed training on
CUDA is planned; CPU training and padded batches keep the configured switch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import PeftModel

from daemon.training.chat_examples import TokenizedExample
from daemon.training.losses import _hidden_states, autocast_for, token_loss_sums
from daemon.training.packing import collate_packed

GIB = 1024**3
DEVICE_SHARE = 0.9  # of the device's memory, when no budget is configured
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointPlan:
    layers: int
    checkpointed: int
    budget_gib: float | None = None
    all_checkpointed_peak_gib: float | None = None
    layer_activations_gib: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers transformers checkpoints (its GradientCheckpointingLayer subclasses), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def set_checkpointed(layers: list[torch.nn.Module], checkpointed: set[int]) -> None:
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index in checkpointed


def spread(count: int, total: int) -> set[int]:
    """`count` layer indices of `total`, evenly spaced (count=total/2 gives every other layer)."""
    if count <= 0:
        return set()
    if count >= total:
        return set(range(total))
    return {math.floor(i * total / count) for i in range(count)}


def plan_checkpointing(
    model: PeftModel, *, row_tokens: int, max_seq_len: int, cross_entropy: str, chunk_tokens: int,
    budget_gib: float | None, device: torch.device,
) -> CheckpointPlan:
    """Measures and sets which layers are checkpointed (the model must have checkpointing enabled on all)."""
    layers = [layer for layer in decoder_layers(model) if getattr(layer, "gradient_checkpointing", False)]
    if not layers:
        return CheckpointPlan(layers=0, checkpointed=0, reason="the model has no checkpointed layers")
    total_memory = torch.cuda.get_device_properties(device).total_memory
    budget = budget_gib * GIB if budget_gib is not None else DEVICE_SHARE * total_memory
    was_training = model.training
    model.train()
    batch = _worst_case_row(model, row_tokens, max_seq_len).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        set_checkpointed(layers, set(range(len(layers))))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        total, _ = token_loss_sums(model, batch, cross_entropy=cross_entropy, chunk_tokens=chunk_tokens,
                                   per_example=False)
        total.backward()
        del total
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        for parameter in trainable:
            parameter.grad = None
        whole = _forward_bytes(model, batch, layers, whole_layer=True)
        checkpointed = _forward_bytes(model, batch, layers, whole_layer=False)
    finally:
        model.train(was_training)
    per_layer = max(whole - checkpointed, 1)
    optimizer_state = sum(8 * p.numel() for p in trainable)  # AdamW's two fp32 moments, made at the first step
    room = budget - peak - optimizer_state
    keep = max(0, min(len(layers), math.floor(room / per_layer)))
    chosen = spread(len(layers) - keep, len(layers))
    set_checkpointed(layers, chosen)
    torch.cuda.empty_cache()
    plan = CheckpointPlan(
        layers=len(layers), checkpointed=len(chosen), budget_gib=budget / GIB,
        all_checkpointed_peak_gib=peak / GIB, layer_activations_gib=per_layer / GIB,
        reason=f"measured on a row of {row_tokens} tokens",
    )
    if room < 0:
        log.warning("training may run out of memory: a row of %d tokens peaks at %.1f GiB with every layer "
                    "checkpointed, over the budget of %.1f GiB; lower training.row_tokens", row_tokens,
                    peak / GIB, budget / GIB)
    log.info("activation checkpointing on %d of %d layers (budget %.1f GiB, all-checkpointed peak %.1f GiB, "
             "%.2f GiB per whole layer)", len(chosen), len(layers), budget / GIB, peak / GIB, per_layer / GIB)
    return plan


def _forward_bytes(model: PeftModel, batch, layers: list[torch.nn.Module], *, whole_layer: bool) -> int:
    """Memory a forward keeps for backward, with the first layer whole or checkpointed like the rest."""
    set_checkpointed(layers, set(range(1 if whole_layer else 0, len(layers))))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with autocast_for(model):
        _, hidden = _hidden_states(model, batch)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    del hidden
    return kept


def _worst_case_row(model: PeftModel, row_tokens: int, max_seq_len: int):
    """A full row of max_seq_len-long examples, every token but the last of each supervised."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    vocab = causal_lm.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    examples, left = [], row_tokens
    while left > 1:
        length = min(max_seq_len, left)
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        examples.append(TokenizedExample(f"plan-{len(examples)}", ids, ids))
        left -= length
    return collate_packed(examples)
