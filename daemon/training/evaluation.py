"""Scoring: token-weighted loss per example on every eval set, under the candidate, each compare adapter
and the base, spread over the ranks; general text in windows (the forgetting guard)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from daemon.config import TrainingConfig
from daemon.training.adapters import saved_method
from daemon.training.chat_examples import (
    IGNORE_INDEX,
    TokenizedExample,
    TokenizedSet,
)
from daemon.training.distributed import rank_share, sum_values
from daemon.training.losses import token_loss_sums
from daemon.training.packing import best_fit_rows, collate_packed, collate_padded
from daemon.training.preparation import CANDIDATE, PEFT_TYPES, Runtime, prepare_model, sized, uses_packing
from daemon.training.spec import SpecError, TrainSpec

log = logging.getLogger(__name__)
GENERAL_WINDOW_TOKENS = 512  # general text is scored in windows of at most this many tokens (and max_seq_len)


@torch.inference_mode()
def evaluate_examples(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    settings: TrainingConfig,
    runtime: Runtime,
    packing: bool,
    pad_token_id: int,
) -> dict[str, Any]:
    """Token-weighted loss over the set, and `[ticket_id, loss_sum, tokens]` per example for bootstraps.

    Examples are spread over the ranks and gathered; every rank returns the whole result."""
    settings = sized(settings, model, runtime)
    world = runtime.world
    was_training = model.training
    model.eval()
    lengths = [len(e.input_ids) for e in examples]
    if packing:
        groups = best_fit_rows(lengths, settings.row_tokens)
    else:
        order = sorted(range(len(examples)), key=lambda i: lengths[i])
        size = settings.batch_size * 2
        groups = [order[i : i + size] for i in range(0, len(order), size)]
    sums = [0.0] * len(examples)
    counts = [0.0] * len(examples)
    for indices in rank_share(groups, world):
        chosen = [examples[i] for i in indices or groups[0][:1]]  # None: a pass for FSDP's collectives, unscored
        batch = collate_packed(chosen) if packing else collate_padded(chosen, pad_token_id)
        loss_sums, token_counts = token_loss_sums(
            model,
            batch.to(runtime.device),
            cross_entropy="chunked",
            chunk_tokens=settings.loss_chunk_tokens,
            per_example=True,
        )
        if indices is None:
            continue
        for index, loss_sum, count in zip(indices, loss_sums.tolist(), token_counts.tolist(), strict=True):
            sums[index], counts[index] = loss_sum, count
    if world.active:
        gathered = sum_values(world, sums + counts, runtime.device)
        sums, counts = gathered[: len(examples)], gathered[len(examples) :]
    model.train(was_training)
    per_example = sorted(
        ([e.ticket_id, s, int(c)] for e, s, c in zip(examples, sums, counts, strict=True)), key=lambda row: row[0]
    )
    total_tokens = sum(row[2] for row in per_example)
    return {
        "loss": math.fsum(row[1] for row in per_example) / total_tokens if total_tokens else None,
        "tokens": total_tokens,
        "examples": len(per_example),
        "per_example": per_example,
    }


def evaluate_all(
    model: PeftModel, eval_sets: dict[str, TokenizedSet], spec: TrainSpec, runtime: Runtime, pad_token_id: int
) -> dict[str, dict[str, Any]]:
    """Every eval file under the candidate, each compare adapter (loaded beside it) and the base."""
    results: dict[str, dict[str, Any]] = {name: {} for name in eval_sets}

    def evaluate_into(label: str, scored: torch.nn.Module, packing: bool, only: list[str] | None = None) -> None:
        for name, eval_set in eval_sets.items():
            if only is not None and name not in only:
                continue
            scores = evaluate_examples(scored, eval_set.examples, spec.training, runtime, packing, pad_token_id)
            results[name][label] = {**scores, "dropped_examples": eval_set.dropped}
            if runtime.world.is_main:
                log.info("eval set=%s model=%s loss=%s examples=%d", name, label, scores["loss"], scores["examples"])

    packing = uses_packing(spec)
    evaluate_into("candidate", model, packing)
    for label, adapter_dir in spec.compare_adapters.items():
        method = saved_method(adapter_dir)
        if PEFT_TYPES[method] != PEFT_TYPES[spec.adapter.method]:
            # peft holds one adapter type per model: an adapter of another method gets its own copy of the base
            adapter = spec.adapter.model_copy(update={"method": method, "use_rslora": False})
            other_spec = spec.model_copy(update={"init_adapter": adapter_dir, "adapter": adapter})
            evaluate_into(label, prepare_model(other_spec, runtime), uses_packing(other_spec))
            continue
        name = f"compare-{label}"
        model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        try:
            evaluate_into(label, model, packing)
        finally:
            model.set_adapter(CANDIDATE)
            model.delete_adapter(name)
    if spec.evaluate_base:
        with model.disable_adapter():
            evaluate_into("base", model, packing, spec.base_eval_sets)
    return results


def tokenize_general_text(path: Path, tokenizer: PreTrainedTokenizerBase, window: int) -> TokenizedSet:
    """Plain text as eval examples (ticket ids "general-0000", ...): paragraphs (blank-line separated)
    packed into windows of at most `window` tokens, each opened by the bos token when there is one, and
    every token a label: the plain language-model loss, no chat template."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"general_text_file {path} is not readable UTF-8 text ({exc}); fix or replace it") from None
    opener = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = window - len(opener)
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    windows: list[list[int]] = []
    current: list[int] = []
    for number, paragraph in enumerate(paragraphs):
        ids = tokenizer(("\n\n" if number else "") + paragraph, add_special_tokens=False)["input_ids"]
        if current and len(current) + len(ids) > room:
            windows.append(current)
            current = []
        for start in range(0, len(ids), room):  # a paragraph longer than a window is split
            piece = ids[start : start + room]
            if current and len(current) + len(piece) > room:
                windows.append(current)
                current = []
            current = current + piece
    if current:
        windows.append(current)
    examples = [
        TokenizedExample(f"general-{index:04d}", opener + ids, [IGNORE_INDEX] * len(opener) + ids)
        for index, ids in enumerate(windows)
        if len(ids) > 1
    ]
    if not examples:
        raise SpecError(f"general_text_file {path} has no text to score; point gate.general_text at a text file")
    return TokenizedSet(examples, dropped=0, truncated=0)
