"""Packing: rows from best-fit, targets that stay inside their example, attention that keeps packed
examples apart (each example's loss and gradient as if it ran alone), and the chunked loss."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.attention.varlen
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from daemon.training import attention as packed_attention
from daemon.training import losses
from daemon.training.attention import register_packed_attention
from daemon.training.chat_examples import IGNORE_INDEX, TokenizedExample
from daemon.training.losses import token_loss_sums
from daemon.training.packing import (
    best_fit_rows,
    collate_packed,
    collate_padded,
    real_tokens,
    supervised_tokens,
)

LENGTHS = (37, 81, 15, 120, 54)


def chat_like_examples(vocab_size: int, lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> list[TokenizedExample]:
    """Random ids; labels on two assistant-like spans of each example, -100 on the rest."""
    rng = random.Random(seed)
    examples = []
    for number, length in enumerate(lengths):
        ids = [rng.randrange(3, vocab_size) for _ in range(length)]
        labels = [IGNORE_INDEX] * length
        for start, end in ((length // 4, length // 2), (2 * length // 3, length)):
            labels[start:end] = ids[start:end]
        examples.append(TokenizedExample(ticket_id=f"t-{number}", input_ids=ids, labels=labels))
    return examples


def load_base(model_dir: Path, attention: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir: Path) -> PeftModel:
    """A LoRA adapter with random (non-zero) A and B on every linear layer, under the packed attention."""
    torch.manual_seed(0)
    base = load_base(tiny_model_dir, register_packed_attention())
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config)


@contextmanager
def using_attention(model: PeftModel, name: str) -> Iterator[None]:
    previous = model.get_base_model().config._attn_implementation
    model.get_base_model().set_attn_implementation(name)
    try:
        yield
    finally:
        model.get_base_model().set_attn_implementation(previous)


def token_losses(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """Per-token loss of one example from its own logits [L, V], the textbook shift."""
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[:-1][keep], targets[keep], reduction="none")


def alone_token_losses(model: PeftModel, example: TokenizedExample) -> torch.Tensor:
    with using_attention(model, "sdpa"):
        logits = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
    return token_losses(logits, example.labels)


def packed_row_logits(model: PeftModel, examples: list[TokenizedExample], *, boundaries: bool) -> list[torch.Tensor]:
    """Logits of each example, cut from one forward over the packed row."""
    batch = collate_packed(examples)
    varlen = {}
    if boundaries:
        varlen = {
            "cu_seq_lens_q": batch.cu_seq_lens,
            "cu_seq_lens_k": batch.cu_seq_lens,
            "max_length_q": batch.max_length,
            "max_length_k": batch.max_length,
        }
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **varlen).logits[0]
    bounds = batch.cu_seq_lens.tolist()
    return [logits[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def lora_parameters(model: PeftModel) -> list[torch.nn.Parameter]:
    return [parameter for name, parameter in model.named_parameters() if "lora_" in name]


def assert_gradients_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    for got, want in zip(actual, expected, strict=True):
        scale = want.abs().max().item()
        assert scale > 0
        assert (got - want).abs().max().item() <= rtol * scale


def test_packed_examples_lose_and_learn_exactly_as_alone(lora_model: PeftModel) -> None:
    examples = chat_like_examples(lora_model.config.vocab_size)
    alone = [alone_token_losses(lora_model, example) for example in examples]
    packed = packed_row_logits(lora_model, examples, boundaries=True)
    for example, logits, expected in zip(examples, packed, alone, strict=True):
        torch.testing.assert_close(token_losses(logits, example.labels), expected, rtol=0, atol=1e-4)

    batch = collate_packed(examples)
    sums, counts = token_loss_sums(lora_model, batch)
    # a sum of hundreds of token losses carries their float32 rounding (1.8e-4 of ~570 nats on an AMX Xeon):
    # relative there; each token above is held to 1e-4, and a leak across examples moves tokens by > 1e-3
    torch.testing.assert_close(sums, torch.stack([losses.sum() for losses in alone]), rtol=2e-6, atol=1e-4)
    assert counts.tolist() == [losses.numel() for losses in alone] == [e.supervised_tokens for e in examples]

    parameters = lora_parameters(lora_model)
    packed_grads = torch.autograd.grad(sums.sum(), parameters)
    alone_total = sum(alone_token_losses(lora_model, example).sum() for example in examples)
    alone_grads = torch.autograd.grad(alone_total, parameters)
    assert_gradients_close(packed_grads, alone_grads, rtol=1e-4)


def sdpa_logits_with_cache(model: PeftModel, examples: list[TokenizedExample]) -> list[torch.Tensor]:
    """Plain sdpa given only restarting position_ids and the config's use_cache=True.

    (With use_cache=False, transformers 5.24 spots the restarts itself and builds a dense [T, T] mask.)
    """
    batch = collate_packed(examples)
    with using_attention(model, "sdpa"):
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[0]
    bounds = batch.cu_seq_lens.tolist()
    return [logits[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def test_packed_row_without_boundaries_leaks_between_examples(lora_model: PeftModel) -> None:
    """The control for the test above: without cu_seq_lens, or under sdpa, the second example sees the first."""
    examples = chat_like_examples(lora_model.config.vocab_size)
    expected = alone_token_losses(lora_model, examples[1]).detach()
    with torch.no_grad():
        no_boundaries = packed_row_logits(lora_model, examples, boundaries=False)[1]
        positions_only = sdpa_logits_with_cache(lora_model, examples)[1]
    for logits in (no_boundaries, positions_only):
        assert (token_losses(logits, examples[1].labels) - expected).abs().max().item() > 1e-3


@pytest.mark.skipif(not getattr(torch.cpu, "_is_avx512_bf16_supported", bool)(), reason="no bf16 units on this CPU")
def test_a_bf16_base_on_cpu_keeps_packed_examples_apart_and_close_to_fp32(lora_model: PeftModel, tiny_model_dir: Path):
    """training.precision bf16 on CPU (auto on AMX for large bases): the base in bf16 under autocast, the CPU
    attention upcast to fp32. Each packed example's loss sum stays within bf16 rounding of the fp32 one,
    and of its own bf16 loss run alone (the fp32 test above pins the boundaries exactly)."""
    examples = chat_like_examples(lora_model.config.vocab_size)
    batch = collate_packed(examples)
    with torch.no_grad():
        fp32_sums, _ = token_loss_sums(lora_model, batch)
    torch.manual_seed(0)
    base = load_base(tiny_model_dir, register_packed_attention()).to(torch.bfloat16)
    bf16 = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    bf16.load_state_dict({k: v.to(torch.bfloat16) if "lora_" not in k else v
                          for k, v in lora_model.state_dict().items()})
    assert bf16.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    with torch.no_grad():
        packed, counts = token_loss_sums(bf16, batch)
        alone = torch.cat([token_loss_sums(bf16, collate_packed([example]))[0] for example in examples])
    assert counts.tolist() == [e.supervised_tokens for e in examples]
    torch.testing.assert_close(packed, fp32_sums, rtol=0.02, atol=0)
    torch.testing.assert_close(packed, alone, rtol=0.01, atol=0)


@pytest.mark.parametrize("small_logits_bytes", [0, 1 << 30], ids=["recomputed-chunks", "kept-logits"])
def test_chunked_loss_and_gradients_match_full_logits(
    lora_model: PeftModel, small_logits_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(losses, "SMALL_LOGITS_BYTES", small_logits_bytes)
    batch = collate_packed(chat_like_examples(lora_model.config.vocab_size, seed=1))
    assert supervised_tokens(batch) > 4 * 16
    parameters = lora_parameters(lora_model)
    full_sums, full_counts = token_loss_sums(lora_model, batch, cross_entropy="full")
    full_grads = torch.autograd.grad(full_sums.sum(), parameters)
    chunked_sums, chunked_counts = token_loss_sums(lora_model, batch, cross_entropy="chunked", chunk_tokens=16)
    chunked_grads = torch.autograd.grad(chunked_sums.sum(), parameters)
    torch.testing.assert_close(chunked_sums, full_sums, rtol=1e-5, atol=0)
    assert torch.equal(chunked_counts, full_counts)
    assert_gradients_close(chunked_grads, full_grads, rtol=1e-5)

    total, count = token_loss_sums(lora_model, batch, chunk_tokens=16, per_example=False)
    torch.testing.assert_close(total, full_sums.sum(), rtol=1e-5, atol=0)
    assert count.item() == supervised_tokens(batch)


def test_prompt_tuning_losses_match_peft_forward(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        load_base(tiny_model_dir, "sdpa"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    examples = chat_like_examples(model.config.vocab_size, lengths=(23, 40, 9), seed=2)
    batch = collate_padded(examples, pad_token_id=0)
    sums, counts = token_loss_sums(model, batch)

    labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    for row, example in enumerate(examples):
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels)
    logits = output.logits[:, model.peft_config["default"].num_virtual_tokens :]
    expected = torch.stack(
        [token_losses(logits[row, : len(e.labels)], e.labels).sum() for row, e in enumerate(examples)]
    )
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(sums.sum() / counts.sum(), output.loss, rtol=0, atol=1e-5)


def test_plain_model_gives_alone_losses_packed_and_padded(tiny_model_dir: Path) -> None:
    examples = chat_like_examples(2048, seed=3)
    reference = load_base(tiny_model_dir, "sdpa")
    expected = []
    for example in examples:
        logits = reference(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
        expected.append(token_losses(logits, example.labels).sum())
    packed_sums, _ = token_loss_sums(load_base(tiny_model_dir, register_packed_attention()), collate_packed(examples))
    padded_sums, _ = token_loss_sums(reference, collate_padded(examples, pad_token_id=0))
    torch.testing.assert_close(packed_sums, torch.stack(expected), rtol=0, atol=1e-4)
    torch.testing.assert_close(padded_sums, torch.stack(expected), rtol=0, atol=1e-4)


def test_batch_and_attention_that_do_not_fit_say_what_to_use(tiny_model_dir: Path) -> None:
    examples = chat_like_examples(2048, lengths=(12, 20))
    with pytest.raises(ValueError, match="attn_implementation=register_packed_attention"):
        token_loss_sums(load_base(tiny_model_dir, "sdpa"), collate_packed(examples))
    with pytest.raises(ValueError, match="attn_implementation='sdpa' for padded batches"):
        token_loss_sums(load_base(tiny_model_dir, register_packed_attention()), collate_padded(examples, 0))


def test_packed_attention_generates_as_sdpa_does(tiny_model_dir: Path) -> None:
    prompt = torch.tensor([chat_like_examples(2048, lengths=(17,))[0].input_ids])
    outputs = [
        load_base(tiny_model_dir, implementation).generate(prompt, max_new_tokens=6, do_sample=False)
        for implementation in ("sdpa", register_packed_attention())
    ]
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("has_enable_gqa", [True, False])
def test_cuda_varlen_path_lays_out_heads_as_the_cpu_path(monkeypatch: pytest.MonkeyPatch, has_enable_gqa: bool) -> None:
    """varlen_attn is CUDA-only: a stand-in with its signature and [tokens, heads, dim] layout checks our side."""

    def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        assert window_size == (-1, 0) and query.shape[1] == key.shape[1] and cu_seq_q.dtype == torch.int32
        bounds = cu_seq_q.tolist()
        return torch.cat(
            [
                F.scaled_dot_product_attention(
                    *(tensor[start:end].transpose(0, 1) for tensor in (query, key, value)), scale=scale, is_causal=True
                ).transpose(0, 1)
                for start, end in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )

    def reference_varlen_gqa(*args, scale=None, window_size=(-1, -1), enable_gqa=False):
        query, key, value, *rest = args
        repeats = query.shape[1] // key.shape[1]
        assert enable_gqa
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        return reference_varlen(query, key, value, *rest, scale=scale, window_size=window_size)

    monkeypatch.setattr(
        torch.nn.attention.varlen, "varlen_attn", reference_varlen_gqa if has_enable_gqa else reference_varlen
    )
    packed_attention._varlen_parameters.cache_clear()
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 30, 8), torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    cu_seq_lens = torch.tensor([0, 7, 19, 30])
    try:
        varlen = packed_attention._varlen(query, key, value, cu_seq_lens, 12, 0.3)
    finally:
        packed_attention._varlen_parameters.cache_clear()
    torch.testing.assert_close(varlen, packed_attention._segment_loop(query, key, value, cu_seq_lens, 0.3))


def test_targets_never_cross_an_example_boundary() -> None:
    examples = [
        TokenizedExample(ticket_id=str(n), input_ids=list(range(100 * n, 100 * n + size)), labels=[])
        for n, size in enumerate((3, 1, 4), start=1)
    ]
    examples = [TokenizedExample(e.ticket_id, e.input_ids, list(e.input_ids)) for e in examples]
    packed = collate_packed(examples)
    assert packed.input_ids.tolist() == [[100, 101, 102, 200, 300, 301, 302, 303]]
    assert packed.targets.tolist() == [[101, 102, -100, -100, 301, 302, 303, -100]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert packed.segment_ids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert packed.cu_seq_lens.tolist() == [0, 3, 4, 8] and packed.cu_seq_lens.dtype == torch.int32
    assert (packed.max_length, packed.num_examples) == (4, 3)
    assert (supervised_tokens(packed), real_tokens(packed)) == (5, 8)

    padded = collate_padded(examples, pad_token_id=7)
    assert padded.input_ids.tolist() == [[100, 101, 102, 7], [200, 7, 7, 7], [300, 301, 302, 303]]
    assert padded.targets.tolist() == [[101, 102, -100, -100], [-100] * 4, [301, 302, 303, -100]]
    assert padded.segment_ids.tolist() == [0, 0, 0, -1, 1, -1, -1, -1, 2, 2, 2, 2]
    assert padded.attention_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert (supervised_tokens(padded), real_tokens(padded)) == (5, 8)


def next_fit_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """The naive packer: in order, a new row whenever the next example does not fit."""
    rows, room = [], 0
    for index, length in enumerate(lengths):
        if length > room:
            rows.append([])
            room = row_tokens
        rows[-1].append(index)
        room -= length
    return rows


def assert_valid_rows(rows: list[list[int]], lengths: list[int], row_tokens: int) -> None:
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    for row in rows:
        assert len(row) == 1 or sum(lengths[index] for index in row) <= row_tokens


def test_best_fit_rows_fill_rows_better_than_packing_in_order() -> None:
    rng = random.Random(0)
    lengths = [min(2048, max(8, round(rng.lognormvariate(5.5, 0.8)))) for _ in range(5000)]
    rows = best_fit_rows(lengths, 4096)
    assert_valid_rows(rows, lengths, 4096)
    lower_bound = -(-sum(lengths) // 4096)
    assert len(rows) < len(next_fit_rows(lengths, 4096))
    assert len(rows) <= lower_bound + 1


def test_best_fit_rows_gives_a_long_example_its_own_row() -> None:
    rows = best_fit_rows([30, 5000, 40, 4096], 4096)
    assert sorted(map(sorted, rows)) == [[0, 2], [1], [3]]


def test_best_fit_rows_order_breaks_ties() -> None:
    lengths = [100] * 12 + [50] * 12
    order = list(range(len(lengths)))
    random.Random(3).shuffle(order)
    first, second = best_fit_rows(lengths, 250), best_fit_rows(lengths, 250, order)
    assert_valid_rows(first, lengths, 250)
    assert_valid_rows(second, lengths, 250)
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))
    assert len(first) == len(second)


def test_best_fit_rows_packs_100k_examples_quickly() -> None:
    rng = random.Random(1)
    lengths = [min(4096, max(8, round(rng.lognormvariate(5.5, 0.8)))) for _ in range(100_000)]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    rows = best_fit_rows(lengths, 8192, order)
    assert_valid_rows(rows, lengths, 8192)


def test_bf16_attention_on_cpu_keeps_examples_apart_and_matches_fp32_within_bf16_rounding() -> None:
    """The CPU bf16 path (flash forward in bf16, backward in fp32): each example's output and gradients match
    per-example fp32 attention to bf16 rounding, and changing one example moves nothing of the others."""
    torch.manual_seed(0)
    sizes = [37, 5, 90, 61]
    cu_seq_lens = torch.tensor([0, 37, 42, 132, 193])
    shapes = ((1, 6, 193, 32), (1, 2, 193, 32), (1, 2, 193, 32))  # grouped query attention, as SmolLM2's
    inputs = [torch.randn(shape).to(torch.bfloat16) for shape in shapes]
    grad = torch.randn(1, 193, 6, 32).to(torch.bfloat16)

    def run(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [t.clone().requires_grad_() for t in tensors]
        output = packed_attention._segment_loop(*leaves, cu_seq_lens, 0.2)
        output.backward(grad)
        return output.detach(), [leaf.grad for leaf in leaves]

    output, grads = run(inputs)
    assert output.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    reference, reference_grads = [], [[], [], []]
    for q, k, v, g in zip(*(t.float().split(sizes, dim=2) for t in inputs), grad.float().split(sizes, dim=1),
                          strict=True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        piece = F.scaled_dot_product_attention(*leaves, scale=0.2, is_causal=True, enable_gqa=True).transpose(1, 2)
        piece.backward(g)
        reference.append(piece.detach())
        for collected, leaf in zip(reference_grads, leaves, strict=True):
            collected.append(leaf.grad)
    torch.testing.assert_close(output.float(), torch.cat(reference, dim=1), atol=2e-2, rtol=2e-2)
    for got, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got.float(), torch.cat(expected, dim=2), atol=3e-2, rtol=3e-2)

    changed = [t.clone() for t in inputs]
    for t in changed:
        t[:, :, 42:132] = torch.randn_like(t[:, :, 42:132])  # the third example only
    output2, grads2 = run(changed)
    others = torch.cat([torch.arange(0, 42), torch.arange(132, 193)])
    assert torch.equal(output2[:, others], output[:, others])
    for before, after in zip(grads, grads2, strict=True):
        assert torch.equal(after[:, :, others], before[:, :, others])
