"""Memory-aware activation checkpointing: off where the GPU's memory allows, on as few layers as it must.

Recomputing a layer's forward in backward costs about a third of its training time, so checkpointing
every layer (the usual default) is a large tax on a card that has the room. Here the room is measured,
not guessed: with every decoder layer checkpointed, one full training step on a row of `row_tokens`
tokens (every token supervised, the worst case for the loss) gives the peak; one forward with one layer
left whole gives what each un-checkpointed layer adds. As many layers as fit in the budget keep their
activations, spread evenly over the stack; the rest are checkpointed (so "every n-th layer").

The budget is `training.memory_budget_gib`, or 90% of the device's memory. Only packed training on
CUDA is planned; CPU training and padded batches keep the configured switch.

`resolve_sizes` turns `row_tokens: auto` and `loss_chunk_tokens: auto` into numbers before the model
loads: 16,384 and 4,096 on CUDA (the plan then fits the checkpointing to them); on CPU rows of
CPU_ROW_CAP tokens (longer ones were no faster; never shorter than max_seq_len) and loss chunks of 512
tokens (a chunk's logits, their fp32 copy, log-softmax and gradient are about 14·vocab bytes a token).

On CPU nothing measures memory, so `plan_cpu_checkpointing` estimates it from the model's shape. With
the lean norms and feed-forwards (lean_layers.py) a training token keeps 7·hidden + 2·kv_width +
3·intermediate values a layer in the compute dtype (counted on SmolLM2-135M in bf16 with saved-tensor hooks:
18.1 KiB, against 18.0 estimated); with the model's own modules about 8·(10·hidden + 2·intermediate) bytes
in fp32 and half that under bf16 autocast (measured by RSS on SmolLM2-135M: 2.0 and 1.0 MB a token over its
30 layers). A checkpointed layer keeps only its input. The budget for one row's activations is CPU_RAM_SHARE of the
memory available, at most CPU_ACTIVATION_CAP, so that a 135M model's whole cycle stays under 4 GB;
as many layers as fit stay whole, spread evenly, and the rest are checkpointed.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from daemon.config import TrainingConfig
from daemon.training.chat_examples import TokenizedExample
from daemon.training.losses import _hidden_states, autocast_for, token_loss_sums
from daemon.training.packing import collate_packed

GIB = 1024**3
DEVICE_SHARE = 0.9  # of the device's memory, when no budget is configured
CUDA_ROW_TOKENS, CUDA_CHUNK_TOKENS = 16384, 4096
CPU_ROW_CAP, CPU_CHUNK_TOKENS = 2048, 512  # on CPU longer rows were no faster (bench/RESULTS.md)
CPU_RAM_SHARE = 0.25  # of the available memory, for one row's activations
CPU_ACTIVATION_CAP = 0.75 * GIB  # at most, for one row's activations on CPU (glibc fragmentation adds about as much)
CPU_BF16_ACTIVATION_SHARE = 0.5  # of the fp32 estimate, under bf16 autocast
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


def resolve_sizes(settings: TrainingConfig, device: torch.device) -> TrainingConfig:
    """`settings` with row_tokens and loss_chunk_tokens as numbers (the module docstring says how)."""
    cuda = device.type == "cuda"
    updates: dict[str, int] = {}
    if settings.row_tokens == "auto":
        updates["row_tokens"] = max(CUDA_ROW_TOKENS if cuda else CPU_ROW_CAP, settings.max_seq_len)
    if settings.loss_chunk_tokens == "auto":
        updates["loss_chunk_tokens"] = CUDA_CHUNK_TOKENS if cuda else CPU_CHUNK_TOKENS
    return settings.model_copy(update=updates)


def plan_cpu_checkpointing(model_config: Any, *, row_tokens: int, precision: str,
                           available_bytes: int | None = None, lean: bool = False) -> CheckpointPlan:
    """How many decoder layers to checkpoint on CPU, from the estimate in the module docstring (`lean`: the
    model's norms and feed-forwards are lean_layers')."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    layers = text.num_hidden_layers
    element = 2 if precision == "bf16" else 4
    if lean:
        heads = text.num_attention_heads
        kv_width = getattr(text, "num_key_value_heads", None) or heads
        kv_width *= getattr(text, "head_dim", None) or text.hidden_size // heads
        per_layer = element * (7 * text.hidden_size + 2 * kv_width + 3 * text.intermediate_size) * row_tokens
    else:
        per_layer = 8 * (10 * text.hidden_size + 2 * text.intermediate_size) * row_tokens
        if precision == "bf16":
            per_layer *= CPU_BF16_ACTIVATION_SHARE
    kept = element * text.hidden_size * row_tokens  # a checkpointed layer's input
    available = available_bytes if available_bytes is not None else available_memory()
    budget = min(CPU_RAM_SHARE * available, CPU_ACTIVATION_CAP)
    whole = max(0, min(layers, math.floor((budget - layers * kept) / (per_layer - kept))))
    plan = CheckpointPlan(
        layers=layers, checkpointed=layers - whole, budget_gib=budget / GIB,
        layer_activations_gib=per_layer / GIB,
        reason=f"estimated for a row of {row_tokens} tokens in {precision} on CPU, {available / GIB:.1f} GiB available",
    )
    log.info("activation checkpointing on %d of %d layers on CPU (budget %.2f GiB of %.1f GiB available, "
             "about %.3f GiB per whole layer)", plan.checkpointed, layers, budget / GIB, available / GIB,
             per_layer / GIB)
    return plan


def available_memory() -> int:
    """Bytes of memory available to this process: the cgroup's limit less its use where one is set, else
    the machine's available memory (MemAvailable)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            return max(int(limit) - used, 0)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * GIB


def return_freed_memory() -> None:
    """Hands the heap's free pages back to the system (glibc keeps freed tensors' memory otherwise, and the
    worker's RSS would stay at its training peak while the probe process loads its own model)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


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
