"""The worker's lean forwards give the functions they replace: peft's LoRA linear, Llama's RMSNorm and SwiGLU
feed-forward, and the cross-entropy of the chunked loss; they keep less for backward, and the CPU
checkpointing plan's estimate of what a token keeps matches what autograd keeps."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from daemon.training import lean_layers, lora_linear
from daemon.training.attention import register_packed_attention
from daemon.training.lean_layers import use_lean_layers
from daemon.training.lora_linear import use_lean_lora
from daemon.training.losses import token_loss_sums
from daemon.training.memory_plan import plan_cpu_checkpointing
from daemon.training.packing import collate_packed

SHAPE = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 96, "tie_word_embeddings": True}


def tiny_llama(seed: int = 0, **extra) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, **extra))
    model.requires_grad_(False)
    return model


def with_lora(model: torch.nn.Module, dropout: float = 0.0):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                        init_lora_weights=False)  # B not zero, so the adapter's path carries a signal
    return get_peft_model(model, config)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(model: torch.nn.Module, ids: torch.Tensor, autocast: bool = False) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    return logits.detach().float(), lora_grads(model)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the lean LoRA function ran."""
    counted: list[int] = []
    apply = lora_linear._LoRALinear.apply
    monkeypatch.setattr(lora_linear._LoRALinear, "apply", lambda *a: (counted.append(1), apply(*a))[1])
    return counted


def test_the_lean_lora_linear_gives_peft_outputs_and_gradients(calls: list[int]) -> None:
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    reference = with_lora(tiny_llama())
    lean = copy.deepcopy(reference)
    assert use_lean_lora(lean) == 14  # q, k, v, o, gate, up, down in each of 2 layers

    logits, grads = run(reference, ids)
    assert not calls
    lean_logits, lean_grads = run(lean, ids)
    assert len(calls) == 14
    assert relative(lean_logits, logits) < 1e-5
    assert grads.keys() == lean_grads.keys()
    assert max(relative(lean_grads[n], grads[n]) for n in grads) < 1e-4

    # bf16 autocast: within bf16 rounding of the fp32 result, as peft's own is
    bf16_logits, bf16_grads = run(reference, ids, autocast=True)
    lean_bf16_logits, lean_bf16_grads = run(lean, ids, autocast=True)
    assert relative(lean_bf16_logits, logits) < 3 * relative(bf16_logits, logits) + 1e-3
    assert max(relative(lean_bf16_grads[n], grads[n]) for n in grads) < 0.1


def test_the_lean_lora_linear_steps_aside_where_it_would_not_be_peft(calls: list[int]) -> None:
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(2))
    lean = with_lora(tiny_llama())
    use_lean_lora(lean)
    with lean.disable_adapter(), torch.no_grad():
        disabled = lean(input_ids=ids).logits
    assert not calls
    with torch.no_grad():
        assert torch.equal(disabled, tiny_llama()(input_ids=ids).logits)  # the base alone

    with_dropout = with_lora(tiny_llama(), dropout=0.1)
    use_lean_lora(with_dropout)
    with torch.no_grad():
        with_dropout(input_ids=ids)
    assert not calls  # dropout's random mask is peft's to draw


@pytest.mark.parametrize(("dtype", "tolerance", "share"), [(torch.float32, 1e-4, 0.85), (torch.bfloat16, 2e-2, 0.75)],
                         ids=["fp32", "bf16"])
def test_lean_norms_and_feed_forwards_give_llama_gradients_and_keep_less(dtype, tolerance, share) -> None:
    reference = tiny_llama().to(dtype)
    lean = copy.deepcopy(reference)
    assert use_lean_layers(lean) == ["lean_rms_norm", "lean_swiglu"]
    generator = torch.Generator().manual_seed(3)
    embeds = torch.randn(1, 20, SHAPE["hidden_size"], generator=generator).to(dtype)
    # A random direction: a norm's output has no gradient along itself, so |output|² would compare rounding noise
    direction = torch.randn(1, 20, SHAPE["hidden_size"], generator=generator).to(dtype)

    def forward_backward(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs = embeds.clone().requires_grad_()
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def keep(tensor: torch.Tensor) -> torch.Tensor:  # activations kept for backward, weights aside
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            hidden = model.model(inputs_embeds=inputs).last_hidden_state
        (hidden * direction).float().sum().backward()
        return hidden.detach().float(), inputs.grad.float(), sum(saved.values())

    hidden, grad, kept = forward_backward(reference)
    lean_hidden, lean_grad, lean_kept = forward_backward(lean)
    assert relative(lean_hidden, hidden) < tolerance / 10
    assert relative(lean_grad, grad) < tolerance
    assert lean_kept < share * kept, (lean_kept, kept)


def test_modules_that_are_not_llamas_keep_their_own_forward() -> None:
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm  # 1 + weight: another function

    holder = torch.nn.Module()
    holder.norm = GemmaRMSNorm(8)
    holder.feed_forward = tiny_llama(hidden_act="gelu").model.layers[0].mlp
    assert use_lean_layers(holder) == []
    assert "forward" not in vars(holder.norm) and "forward" not in vars(holder.feed_forward)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_the_fused_chunked_loss_of_a_step_equals_the_full_one(autocast: bool) -> None:
    model = with_lora(tiny_llama(attn_implementation=register_packed_attention()))
    use_lean_lora(model)
    use_lean_layers(model)
    if autocast:
        model.get_base_model().to(torch.bfloat16)
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    generator = torch.Generator().manual_seed(4)
    from daemon.training.chat_examples import TokenizedExample

    examples = []
    for index, length in enumerate((30, 17, 41)):
        ids = torch.randint(0, SHAPE["vocab_size"], (length,), generator=generator).tolist()
        labels = [-100] * (length // 3) + ids[length // 3 :]
        examples.append(TokenizedExample(f"e{index}", ids, labels))
    batch = collate_packed(examples)

    def step(mode: str) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        total, count = token_loss_sums(model, batch, cross_entropy=mode, chunk_tokens=16, per_example=False)
        total.backward()
        return float(total), lora_grads(model)

    full, full_grads = step("full")
    fused, fused_grads = step("chunked")
    assert fused == pytest.approx(full, rel=1e-6 if not autocast else 1e-4)
    assert max(relative(fused_grads[n], full_grads[n]) for n in full_grads) < (1e-5 if not autocast else 2e-2)


def test_the_cpu_plan_estimates_what_a_lean_layer_keeps_a_token() -> None:
    model = with_lora(tiny_llama(attn_implementation=register_packed_attention()))
    use_lean_lora(model)
    assert use_lean_layers(model) == ["lean_rms_norm", "lean_swiglu"]
    model.get_base_model().to(torch.bfloat16)
    from daemon.training.chat_examples import TokenizedExample

    generator = torch.Generator().manual_seed(5)
    examples = [TokenizedExample(f"e{i}", ids, ids) for i, ids in enumerate(
        torch.randint(0, SHAPE["vocab_size"], (4, 128), generator=generator).tolist())]
    batch = collate_packed(examples)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    body = model.get_base_model().model
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        body(input_ids=batch.input_ids, position_ids=batch.position_ids, cu_seq_lens_q=batch.cu_seq_lens,
             cu_seq_lens_k=batch.cu_seq_lens, max_length_q=batch.max_length, max_length_k=batch.max_length)
    measured = sum(saved.values()) / SHAPE["num_hidden_layers"]
    plan = plan_cpu_checkpointing(model.config, row_tokens=batch.input_ids.numel(), precision="bf16",
                                  available_bytes=64 * 1024**3, lean=True)
    estimated = plan.layer_activations_gib * 1024**3
    assert 0.85 < estimated / measured < 1.2, (estimated, measured)
    assert lean_layers.use_lean_layers(torch.nn.Linear(2, 2)) == []
