"""Summed next-token cross-entropy for a PackedBatch without full-vocabulary logits for every token.

The decoder body gives hidden states; only the positions with a target go through the output head,
a chunk at a time ("chunked"), or fused by Liger's kernel on CUDA ("liger", totals only). "full" computes
logits for every token: the reference the others match.

"chunked" for a training step's total (per_example=False) computes each chunk's gradient with respect to
the hidden states in the forward pass, while its logits are at hand (the output head is frozen under every
adapter the worker trains): one pass over a chunk's logits instead of a forward, a recomputed forward and a
backward. Per-example sums (evaluation) checkpoint each chunk's logits instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
from functools import cache

import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, PeftType
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from daemon.training.attention import PACKED_ATTENTION
from daemon.training.lean_layers import plain_layers
from daemon.training.packing import PackedBatch

CROSS_ENTROPY_MODES = ("auto", "chunked", "full", "liger")
# Attention implementations that read cu_seq_lens_q and so keep the examples of a packed row apart.
PACKING_ATTENTIONS = (PACKED_ATTENTION, "flash_attention_2", "flash_attention_3")
# Config fields of models whose logits are more than the head's output (Gemma 2, Cohere, Granite).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# Supervised logits up to this size are kept for backward rather than recomputed chunk by chunk.
SMALL_LOGITS_BYTES = 64 * 1024 * 1024


def token_loss_sums(
    model: PreTrainedModel | PeftModel,
    batch: PackedBatch,
    *,
    cross_entropy: str = "chunked",
    chunk_tokens: int = 4096,
    per_example: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token cross-entropy in float32, supervised token count), gradients through the sums.

    per_example=True gives both as [n] tensors, one entry per example of the batch (any mode but
    "liger", which then falls back to "chunked"); per_example=False gives scalars, all a training
    step needs. "auto" is "liger" where liger_kernel imports and the model is on CUDA, else "chunked".
    """
    if cross_entropy not in CROSS_ENTROPY_MODES:
        raise ValueError(f"cross_entropy must be one of {', '.join(CROSS_ENTROPY_MODES)}, not {cross_entropy!r}")
    with autocast_for(model):
        return _token_loss_sums(model, batch, cross_entropy, chunk_tokens, per_example)


def autocast_for(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast when the base computes in it, else nothing.

    The adapters keep fp32 master weights (peft's autocast_adapter_dtype) on a bf16 or NF4 base; under
    autocast their matmuls run in the base's dtype on its activations (prepare_model turns off peft's
    cast of each adapter input to fp32), the optimizer still updates fp32 weights, and the attention
    sees bf16 and takes the varlen kernel."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    weight = causal_lm.get_input_embeddings().weight
    if weight.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(weight.device.type, dtype=weight.dtype)
    return contextlib.nullcontext()


def _token_loss_sums(
    model: PreTrainedModel | PeftModel, batch: PackedBatch, cross_entropy: str, chunk_tokens: int, per_example: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    causal_lm, hidden = _hidden_states(model, batch)
    head = causal_lm.get_output_embeddings()
    hidden = hidden.reshape(-1, hidden.shape[-1])
    positions = batch.supervised_positions
    targets = batch.targets.reshape(-1).index_select(0, positions)
    if cross_entropy == "full":
        all_losses = F.cross_entropy(head(hidden).float(), batch.targets.reshape(-1), reduction="none")
        token_losses = all_losses.index_select(0, positions)
    else:
        hidden = hidden.index_select(0, positions)
        if not per_example and _liger_applies(cross_entropy, head, hidden):
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            total = LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets, head.bias)
            return total.float(), _count(targets)
        if not per_example and _fused_applies(head) and not _sharded(causal_lm) and not plain_layers():
            return _LinearCrossEntropy.apply(hidden, head.weight, targets, chunk_tokens), _count(targets)
        token_losses = _chunked_cross_entropy(head, hidden, targets, chunk_tokens)
    if not per_example:
        return token_losses.sum(), _count(targets)
    segments = batch.segment_ids.index_select(0, positions)
    return (
        token_losses.new_zeros(batch.num_examples).index_add(0, segments, token_losses),
        torch.bincount(segments, minlength=batch.num_examples),
    )


def _count(targets: torch.Tensor) -> torch.Tensor:
    """The number of targets as a device scalar, filled there: torch.tensor(n, device=cuda) copies from
    pageable memory and waits for the stream, a host sync on every micro-batch."""
    return torch.full((), targets.numel(), dtype=torch.long, device=targets.device)


def _hidden_states(model: PreTrainedModel | PeftModel, batch: PackedBatch) -> tuple[PreTrainedModel, torch.Tensor]:
    """The causal LM that owns the output head, and the body's last hidden states [B, W, hidden]."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    text_config = causal_lm.config.get_text_config()
    for field in _LOGIT_TRANSFORMS:
        if getattr(text_config, field, None) not in (None, 1.0):
            raise ValueError(f"this model's config sets {field}, which token_loss_sums does not apply")
    body = causal_lm.get_decoder()
    if isinstance(model, PeftModel) and model.active_peft_config.is_prompt_learning:
        return causal_lm, _prompt_hidden_states(model, model.active_peft_config, body, batch)
    if not batch.packed:
        output = body(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return causal_lm, output.last_hidden_state
    attention = causal_lm.config._attn_implementation
    if attention not in PACKING_ATTENTIONS:
        raise ValueError(
            f"a packed batch needs attention that keeps its examples apart, and this model uses {attention!r}; "
            f"load it with attn_implementation=register_packed_attention(), or collate with collate_padded"
        )
    output = body(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        cu_seq_lens_q=batch.cu_seq_lens,
        cu_seq_lens_k=batch.cu_seq_lens,
        max_length_q=batch.max_length,
        max_length_k=batch.max_length,
        use_cache=False,
    )
    return causal_lm, output.last_hidden_state


def _prompt_hidden_states(
    model: PeftModel, config: PeftConfig, body: torch.nn.Module, batch: PackedBatch
) -> torch.Tensor:
    """As PEFT's own forward: virtual prompt embeddings before the input, mask extended, positions 0.. over both."""
    if config.peft_type not in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        raise ValueError(f"token_loss_sums supports prompt and p-tuning among prompt methods, not {config.peft_type}")
    if batch.packed:
        raise ValueError("prompt tuning takes padded batches: collate with collate_padded")
    rows, virtual = batch.input_ids.shape[0], config.num_virtual_tokens
    embeds = model.get_base_model().get_input_embeddings()(batch.input_ids)
    prompts = model.get_prompt(batch_size=rows).to(embeds.dtype)
    attention_mask = torch.cat([batch.attention_mask.new_ones(rows, virtual), batch.attention_mask], dim=1)
    output = body(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=attention_mask, use_cache=False)
    return output.last_hidden_state[:, virtual:]


def _chunked_cross_entropy(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Per-token losses [S]; each chunk's logits are recomputed in backward instead of kept.

    When the supervised tokens' logits are small (under SMALL_LOGITS_BYTES, e.g. a small vocabulary on
    CPU) they are computed once and kept: recomputing them would cost a second head pass for nothing.
    """
    vocab = head.weight.shape[0] if hasattr(head, "weight") else 0
    if 0 < targets.numel() * vocab * 4 <= SMALL_LOGITS_BYTES:
        return _chunk_cross_entropy(head, hidden, targets)
    # At least one (possibly empty) chunk, so a batch without targets still gives a differentiable zero.
    starts = range(0, max(targets.numel(), 1), chunk_tokens)
    return torch.cat(
        [
            checkpoint(
                _chunk_cross_entropy,
                head,
                hidden[start : start + chunk_tokens],
                targets[start : start + chunk_tokens],
                use_reentrant=False,
            )
            for start in starts
        ]
    )


def _sharded(causal_lm: PreTrainedModel) -> bool:
    """The body is sharded by FSDP2, where the fused loss is off (lean_layers.PLAIN_LAYERS_ENV says why)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(causal_lm.get_decoder(), FSDPModule)


def _fused_applies(head: torch.nn.Module) -> bool:
    """A plain frozen linear head: its gradient is only the hidden states', which the fused loss computes."""
    return type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy (fp32) of hidden·weightᵀ against targets, chunk by chunk; the gradient with
    respect to hidden is made in forward and scaled in backward. Logits are computed in autocast's dtype
    when autocast is on, as the head's own forward would, and their softmax in fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        with torch.autocast(device, enabled=False):
            head = weight.to(dtype)
            for start in range(0, targets.numel(), chunk_tokens):
                chunk_targets = targets[start : start + chunk_tokens]
                chunk_hidden = hidden[start : start + chunk_tokens].to(dtype)
                logits = torch.mm(chunk_hidden, head.t())
                log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                rows = torch.arange(chunk_targets.numel(), device=hidden.device)
                total -= log_probs[rows, chunk_targets].sum()
                if grad_hidden is not None:
                    grad_logits = log_probs.exp_()  # the softmax, in place of the log-probabilities
                    grad_logits[rows, chunk_targets] -= 1.0
                    grad_hidden[start : start + chunk_tokens] = torch.mm(grad_logits.to(dtype), head)
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None


def _chunk_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _liger_applies(cross_entropy: str, head: torch.nn.Module, hidden: torch.Tensor) -> bool:
    usable = _liger_installed() and hidden.is_cuda and isinstance(head, torch.nn.Linear)
    if cross_entropy == "liger" and not usable:
        raise ValueError(
            "cross_entropy 'liger' needs the liger-kernel package, a CUDA device and a plain linear output head; "
            "use 'auto' or 'chunked'"
        )
    return cross_entropy in ("liger", "auto") and usable


@cache
def _liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None
