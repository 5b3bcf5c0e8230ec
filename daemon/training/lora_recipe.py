"""The training recipe: a spec in; an adapter directory and the result dict out.

Supports: LoRA (default), DoRA, rsLoRA scaling, IA3 and prompt tuning through PEFT; QLoRA (an NF4
base with double quantisation, bitsandbytes); examples packed best-fit into rows of
`training.row_tokens` with attention kept inside each example (varlen kernel on CUDA, block-diagonal
on CPU) and positions restarting per example; a cross-entropy that never holds full-vocabulary logits
for every token (Liger's fused kernel on CUDA when installed, chunked elsewhere); gradient
checkpointing, bf16 on CUDA, fused AdamW, regional torch.compile; warmup then a cosine/linear/constant
LR schedule; early stop on a validation slice of the new batch, restoring the best weights;
`max_minutes`/`max_tokens` budgets; checkpoints every N steps and on SIGTERM, resumed when the same
cycle and snapshot are retried; data parallelism across GPUs under torchrun, or FSDP2 sharding
(`training.sharding: fsdp`: LoRA, DoRA, IA3 and QLoRA, objective sft) for a base too large for one GPU.
For the gate: general text scored as the eval set "general" (plain LM loss: the forgetting guard), and
after saving, the probe (`probe.py`) in a fresh process answering the golden prompts (servability and
behaviour).
`training.objective` kto/dpo (alone or beside sft) adds the preference losses of preference.py: KTO on
CSAT thumbs, DPO on agents' edits of drafts, against the champion's (or the base's) log-probs.
Assumes: a fast tokenizer with a chat template; the base fits on each GPU (QLoRA or FSDP2 for the ones
that would not; the probe still loads it on one device); prompt tuning trains on padded batches (its
virtual tokens lead every row).

Loss everywhere is the token-weighted mean cross-entropy over assistant tokens, in nats: the sum of
token losses divided by the number of supervised tokens (of the whole step, across all ranks).
`train.tokens` and `train.supervised_tokens` count the real (non-padding) and labelled tokens of all
steps; `train.final_loss` is the token-weighted loss over the last epoch's worth of steps.

The steps, in order, each in its own module: preparation.py (runtime, tokenizer, model), train_loop.py
(the step plan and the loop), evaluation.py (the eval sets), outputs.py (the adapter and the probe).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from daemon.training.allocator import allocator_in_use
from daemon.training.auto_settings import BaseFacts, resolved_report
from daemon.training.chat_examples import (
    tokenize_file,
)
from daemon.training.checkpoints import Checkpointer, trainable_state
from daemon.training.contract import ADAPTER_DIR
from daemon.training.distributed import close_world
from daemon.training.evaluation import GENERAL_WINDOW_TOKENS, evaluate_all, tokenize_general_text
from daemon.training.memory_plan import return_freed_memory
from daemon.training.methods import describe
from daemon.training.outputs import probe_adapter, save_adapter
from daemon.training.preference import PreferenceObjective, load_preference_data
from daemon.training.preparation import (
    Runtime,
    count_trainable,
    effective_max_seq_len,
    load_tokenizer,
    prepare_model,
    read_base_facts,
    select_runtime,
    sized,
    uses_packing,
    versions,
    with_resolved_settings,
)
from daemon.training.progress import ProgressReporter
from daemon.training.spec import GENERAL_EVAL_NAME, SpecError, TrainSpec
from daemon.training.train_loop import run_manifest, train_adapter

log = logging.getLogger(__name__)


def run_training(spec: TrainSpec, stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """The whole recipe; returns the result dict on the main rank (None on the others)."""
    started = time.perf_counter()
    facts = read_base_facts(spec)
    runtime = select_runtime(spec.training.device, spec.training.precision, facts, spec.training.sharding)
    try:
        return _run(spec, runtime, facts, started, stop_requested)
    finally:
        close_world(runtime.world)


def _run(
    spec: TrainSpec, runtime: Runtime, facts: BaseFacts, started: float, stop_requested: Callable[[], bool]
) -> dict[str, Any] | None:
    spec = with_resolved_settings(spec, runtime, facts)
    tokenizer = load_tokenizer(spec)
    max_seq_len = effective_max_seq_len(spec, tokenizer)
    masked = spec.supervised_placeholders
    train_set = tokenize_file(spec.train_file, tokenizer, max_seq_len, masked)
    if not train_set.examples and spec.training.trains_sft:
        raise SpecError(
            f"train_file {spec.train_file} has no example with an assistant token "
            f"within max_seq_len={max_seq_len}; check the export and the limit"
        )
    validation = tokenize_file(spec.validation_file, tokenizer, max_seq_len, masked) if spec.validation_file else None
    eval_sets = {name: tokenize_file(path, tokenizer, max_seq_len, masked) for name, path in spec.eval_files.items()}
    if spec.general_text_file is not None:
        window = min(max_seq_len, GENERAL_WINDOW_TOKENS)
        eval_sets[GENERAL_EVAL_NAME] = tokenize_general_text(spec.general_text_file, tokenizer, window)

    model = prepare_model(spec, runtime)
    log.info(
        "model ready device=%s dtype=%s method=%s trainable_params=%d train_examples=%d world=%d packing=%s",
        runtime.device,
        runtime.dtype,
        describe(spec.adapter.method, spec.adapter.use_rslora, spec.training.quantization),
        count_trainable(model),
        len(train_set.examples),
        runtime.world.size,
        uses_packing(spec),
    )
    preference = _preference_objective(spec, model, runtime, tokenizer, max_seq_len)
    checkpointer = None
    if spec.checkpoint_dir is not None:
        checkpointer = Checkpointer(spec.checkpoint_dir, run_manifest(spec, max_seq_len))
    progress = ProgressReporter(spec.progress_file, spec.cycle_id, enabled=runtime.world.is_main)
    train = train_adapter(
        model,
        train_set.examples,
        spec.training,
        runtime,
        pad_token_id=tokenizer.pad_token_id,
        packing=uses_packing(spec),
        validation=validation.examples if validation else None,
        checkpointer=checkpointer,
        progress=progress,
        stop_requested=stop_requested,
        preference=preference,
    )
    train.update(
        {
            "objective": spec.training.objective,
            "preference_examples": len(preference.data) if preference is not None else None,
            "preference_weights": preference.weights if preference is not None and preference.data.kind == "kto"
            else None,
        }
    )
    train.update(
        {
            "dropped_examples": train_set.dropped,
            "truncated_examples": train_set.truncated,
            "init_adapter": None if spec.init_adapter is None else str(spec.init_adapter),
            "checkpointing": getattr(model, "ticketune_checkpointing", None),
            "kernels": getattr(model, "ticketune_kernels", []),
            "allocator": allocator_in_use(),
            "settings": resolved_report(spec.training, facts, runtime.precision),
        }
    )

    gc.collect()  # the optimizer and the last step's graph are gone: their memory goes back before evaluation
    return_freed_memory()
    progress.phase("evaluate", step=train["steps"])
    evaluation = evaluate_all(model, eval_sets, spec, runtime, tokenizer.pad_token_id)
    weights = trainable_state(model) if runtime.world.sharded else None  # gathered from every rank
    if not runtime.world.is_main:
        return None
    adapter_dir = spec.output_dir / ADAPTER_DIR
    save_adapter(model, tokenizer, spec, adapter_dir, weights)
    del model  # the probe loads its own copy of the base: the training one must not hold memory meanwhile
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    return_freed_memory()
    probe = probe_adapter(spec, adapter_dir)
    return {
        "status": "ok",
        "error": None,
        "cycle_id": spec.cycle_id,
        "snapshot_id": spec.snapshot_id,
        "adapter_dir": str(adapter_dir.resolve()),
        "adapter_method": describe(spec.adapter.method, spec.adapter.use_rslora, spec.training.quantization),
        "device": runtime.device.type,
        "world_size": runtime.world.size,
        "train": train,
        "eval": evaluation,
        "probe": probe,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": versions(),
    }


def _preference_objective(spec: TrainSpec, model: torch.nn.Module, runtime: Runtime, tokenizer: Any,
                          max_seq_len: int) -> PreferenceObjective | None:
    """The objective's preference part with its reference log-probs, or None under sft (or, beside sft,
    when the snapshot holds no thumbs or pairs of its kind: the cycle then trains the supervised part)."""
    kind = spec.training.preference
    if kind is None or spec.preference_file is None:
        return None
    data = load_preference_data(spec.preference_file, kind, tokenizer, max_seq_len, spec.supervised_placeholders)
    if not len(data):
        if spec.training.trains_sft:
            log.warning("objective %s: no %s examples in the snapshot; training the supervised part only",
                        spec.training.objective, "thumbs" if kind == "kto" else "pairs")
            return None
        raise SpecError(f"training.objective {kind} needs {'CSAT-rated' if kind == 'kto' else 'edited-draft'} "
                        f"examples and the snapshot has none; use objective sft+{kind} or wait for feedback")
    settings = sized(spec.training, model, runtime)
    objective = PreferenceObjective(
        data=data, beta=spec.preference_beta, weight=spec.preference_weight, batch_size=settings.batch_size,
        seed=settings.seed, packing=uses_packing(spec), row_tokens=int(settings.row_tokens),
        chunk_tokens=int(settings.loss_chunk_tokens), pad_token_id=tokenizer.pad_token_id,
        with_sft=spec.training.trains_sft,
    )
    objective.compute_reference(model, spec.compare_adapters.get("champion"), spec.init_adapter, runtime.device)
    return objective
