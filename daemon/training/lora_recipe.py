"""The training recipe: a spec in; an adapter directory and the result dict out.

Supports: LoRA (default), DoRA, rsLoRA scaling, IA3 and prompt tuning through PEFT; QLoRA (an NF4
base with double quantisation, bitsandbytes); examples packed best-fit into rows of
`training.row_tokens` with attention kept inside each example (varlen kernel on CUDA, block-diagonal
on CPU) and positions restarting per example; a cross-entropy that never holds full-vocabulary logits
for every token (Liger's fused kernel on CUDA when installed, chunked elsewhere); gradient
checkpointing, bf16 on CUDA, fused AdamW, regional torch.compile; warmup then a cosine/linear/constant
LR schedule; early stop on a validation slice of the new batch, restoring the best weights;
`max_minutes`/`max_tokens` budgets; checkpoints every N steps and on SIGTERM, resumed when the same
cycle and snapshot are retried; data parallelism across GPUs under torchrun. For the gate: general
text scored as the eval set "general" (plain LM loss: the forgetting guard), and after saving, the
probe (`probe.py`) in a fresh process answering the golden prompts (servability and behaviour).
Assumes: a fast tokenizer with a chat template; the base fits on each GPU (QLoRA for the ones that
would not); prompt tuning trains on padded batches (its virtual tokens lead every row).

Loss everywhere is the token-weighted mean cross-entropy over assistant tokens, in nats: the sum of
token losses divided by the number of supervised tokens (of the whole step, across all ranks).
`train.tokens` and `train.supervised_tokens` count the real (non-padding) and labelled tokens of all
steps; `train.final_loss` is the token-weighted loss over the last epoch's worth of steps.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, get_scheduler

from daemon.config import TrainingConfig
from daemon.training.adapters import attach_adapter, load_base, saved_method
from daemon.training.attention import register_packed_attention
from daemon.training.chat_examples import (
    IGNORE_INDEX,
    TokenizedExample,
    TokenizedSet,
    length_grouped_batches,
    tokenize_file,
)
from daemon.training.checkpoints import Checkpointer, fingerprint, load_trainable_state, trainable_state
from daemon.training.contract import ADAPTER_DIR, PROBE_FILE, PROBE_PROMPTS_FILE
from daemon.training.distributed import World, close_world, init_world, sum_gradients, sum_values
from daemon.training.losses import token_loss_sums
from daemon.training.memory_plan import (
    CheckpointPlan,
    decoder_layers,
    plan_checkpointing,
    resolve_sizes,
    set_checkpointed,
)
from daemon.training.methods import describe
from daemon.training.packing import PackedBatch, best_fit_rows, collate_packed, collate_padded
from daemon.training.progress import ProgressReporter
from daemon.training.spec import GENERAL_EVAL_NAME, SpecError, TrainSpec

CANDIDATE = "default"  # peft's name for the adapter being trained
MAX_GRAD_NORM = 1.0
VALIDATIONS_PER_RUN = 10
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}
GENERAL_WINDOW_TOKENS = 512  # general text is scored in windows of at most this many tokens (and max_seq_len)
# torchrun's variables: a probe started from rank 0 must not try to join the training's process group
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_WORLD_SIZE", "ROLE_NAME")

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the retry of this cycle resumes from it."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    world: World = field(default_factory=World)


@dataclass
class LoopState:
    """What a checkpoint carries besides the weights: counters, curves and the early-stop record."""

    step: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    seconds: float = 0.0
    curve: list[list[float]] = field(default_factory=list)
    step_sums: list[list[float]] = field(default_factory=list)
    validation_curve: list[list[float]] = field(default_factory=list)
    best_validation: float | None = None
    best_step: int | None = None
    validations_without_improvement: int = 0
    stopped_by: str | None = None


def run_training(spec: TrainSpec, stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """The whole recipe; returns the result dict on the main rank (None on the others)."""
    started = time.perf_counter()
    runtime = select_runtime(spec.training.device, spec.training.precision)
    try:
        return _run(spec, runtime, started, stop_requested)
    finally:
        close_world(runtime.world)


def _run(
    spec: TrainSpec, runtime: Runtime, started: float, stop_requested: Callable[[], bool]
) -> dict[str, Any] | None:
    spec = with_resolved_sizes(spec, runtime)
    tokenizer = load_tokenizer(spec)
    max_seq_len = effective_max_seq_len(spec, tokenizer)
    train_set = tokenize_file(spec.train_file, tokenizer, max_seq_len)
    if not train_set.examples:
        raise SpecError(
            f"train_file {spec.train_file} has no example with an assistant token "
            f"within max_seq_len={max_seq_len}; check the export and the limit"
        )
    validation = tokenize_file(spec.validation_file, tokenizer, max_seq_len) if spec.validation_file else None
    eval_sets = {name: tokenize_file(path, tokenizer, max_seq_len) for name, path in spec.eval_files.items()}
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
    )
    train.update(
        {
            "dropped_examples": train_set.dropped,
            "truncated_examples": train_set.truncated,
            "init_adapter": None if spec.init_adapter is None else str(spec.init_adapter),
            "checkpointing": getattr(model, "ticketune_checkpointing", None),
            "kernels": getattr(model, "ticketune_kernels", []),
        }
    )

    progress.phase("evaluate", step=train["steps"])
    evaluation = evaluate_all(model, eval_sets, spec, runtime, tokenizer.pad_token_id)
    if not runtime.world.is_main:
        return None
    adapter_dir = spec.output_dir / ADAPTER_DIR
    save_adapter(model, tokenizer, spec, adapter_dir)
    del model  # the probe loads its own copy of the base: the training one must not hold memory meanwhile
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
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


def with_resolved_sizes(spec: TrainSpec, runtime: Runtime) -> TrainSpec:
    """The spec with training.row_tokens and loss_chunk_tokens resolved for this device and base model."""
    settings = spec.training
    if settings.row_tokens != "auto" and settings.loss_chunk_tokens != "auto":
        return spec
    _check_base_exists(spec.base_model)
    try:
        config = transformers.AutoConfig.from_pretrained(spec.base_model, revision=spec.base_revision)
    except (OSError, ValueError) as exc:
        raise SpecError(_base_load_message(spec.base_model, exc)) from None
    return replace(spec, training=resolve_sizes(settings, config, runtime.device))


def sized(settings: TrainingConfig, model: torch.nn.Module, runtime: Runtime) -> TrainingConfig:
    """`settings` with row_tokens and loss_chunk_tokens as numbers, for this model on this device."""
    if settings.row_tokens != "auto" and settings.loss_chunk_tokens != "auto":
        return settings
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    return resolve_sizes(settings, causal_lm.config, runtime.device)


def select_runtime(requested: str, precision: str = "auto") -> Runtime:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    use_cuda = requested in ("auto", "cuda") and torch.cuda.is_available()
    world = init_world(use_cuda)
    if use_cuda:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise SpecError("training.precision is 'bf16' but this GPU has no bf16; use 'auto' or 'fp32'")
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return Runtime(torch.device("cuda", world.local_rank), torch.bfloat16 if bf16 else torch.float32, world)
    if precision == "bf16":
        raise SpecError("training.precision 'bf16' is for CUDA devices; on CPU use 'auto' or 'fp32'")
    return Runtime(torch.device("cpu"), torch.float32, world)


def uses_packing(spec: TrainSpec) -> bool:
    """Prompt tuning's virtual tokens lead a row, so it trains on padded batches."""
    return spec.training.packing and spec.adapter.method != "prompt_tuning"


def load_tokenizer(spec: TrainSpec) -> PreTrainedTokenizerBase:
    _check_base_exists(spec.base_model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.base_model, revision=spec.base_revision)
    except (OSError, ValueError) as exc:
        raise SpecError(_base_load_message(spec.base_model, exc)) from None
    if not tokenizer.is_fast:
        raise SpecError(
            f"base model {spec.base_model} has no fast tokenizer (tokenizer.json), "
            "which assistant masking needs; use a model that ships one"
        )
    if not tokenizer.chat_template:
        raise SpecError(
            f"base model {spec.base_model} has no chat template; use an instruct/chat model "
            "or one made by `ticketune make-base-model`"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_model(spec: TrainSpec, runtime: Runtime) -> PeftModel:
    """The base (quantised when asked) with a trainable adapter: the init adapter or a fresh one.

    On CUDA: Liger's RMSNorm, SwiGLU and RoPE kernels where installed; adapters with fp32 master weights
    whose matmuls run under the base's bf16 autocast (losses.autocast_for); with gradient_checkpointing
    "auto", checkpointing on as few layers as the memory budget needs (memory_plan.py). The plan and the
    kernels are on the model as `ticketune_checkpointing` and `ticketune_kernels`."""
    _check_base_exists(spec.base_model)
    settings = spec.training
    cuda = runtime.device.type == "cuda"
    checkpointing = settings.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = cuda
    attention = register_packed_attention() if uses_packing(spec) else "sdpa"
    base = load_base(
        spec.base_model,
        spec.base_revision,
        device=runtime.device,
        dtype=runtime.dtype,
        quantization=settings.quantization,
        attn_implementation=attention,
        gradient_checkpointing=bool(checkpointing),
        liger=cuda,
    )
    kernels = getattr(base, "ticketune_kernels", [])
    model = attach_adapter(base, spec.adapter, init_adapter=spec.init_adapter, seed=settings.seed)
    if runtime.dtype != torch.float32:
        # every forward runs under autocast: peft's copy of each adapter input to its fp32 weights is waste
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    layers = len(decoder_layers(model))
    plan = CheckpointPlan(layers=layers, checkpointed=layers if checkpointing else 0,
                          reason=f"training.gradient_checkpointing: {settings.gradient_checkpointing}")
    if settings.gradient_checkpointing == "auto" and cuda and uses_packing(spec):
        settings = sized(settings, model, runtime)
        try:
            plan = plan_checkpointing(model, row_tokens=settings.row_tokens, max_seq_len=settings.max_seq_len,
                                      cross_entropy=settings.cross_entropy, chunk_tokens=settings.loss_chunk_tokens,
                                      budget_gib=settings.memory_budget_gib, device=runtime.device)
        except torch.OutOfMemoryError:
            raise SpecError(
                f"a row of training.row_tokens={settings.row_tokens} tokens does not fit on this GPU even with "
                "every layer checkpointed; lower training.row_tokens or use training.quantization: nf4"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the plan is an optimisation: checkpoint everything instead
            log.warning("checkpointing plan failed (%s); checkpointing every layer", exc)
            set_checkpointed(decoder_layers(model), set(range(layers)))
            plan = CheckpointPlan(layers=layers, checkpointed=layers, reason=f"plan failed: {exc}"[:200])
    model.ticketune_checkpointing = plan.as_dict()
    model.ticketune_kernels = kernels
    if settings.compile:
        compile_layers(model)
    return model


def compile_layers(model: PeftModel) -> None:
    """Regional compilation: each decoder layer once (they share one graph), not the whole model."""
    body = getattr(model.get_base_model(), "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise SpecError("training.compile needs a decoder with a `model.layers` list; set training.compile: false")
    for layer in layers:
        layer.compile(dynamic=True)


# the step plan ---------------------------------------------------------------------------------
def epoch_steps(lengths: list[int], settings: TrainingConfig, packing: bool, epoch: int) -> list[list[list[int]]]:
    """One epoch as optimizer steps, each a list of micro-batches (example indices); seeded by seed and epoch.

    Packed: a seeded shuffle, best-fit rows of row_tokens, the rows shuffled, rows_per_step rows a step.
    Padded: length-grouped batches of batch_size examples, rows_per_step batches a step.
    """
    rng = random.Random(f"ticketune-plan:{settings.seed}:{epoch}")
    if packing:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        micro_batches = best_fit_rows(lengths, settings.row_tokens, order)
        rng.shuffle(micro_batches)
    else:
        micro_batches = length_grouped_batches(lengths, settings.batch_size, rng)
    per_step = settings.rows_per_step
    return [micro_batches[i : i + per_step] for i in range(0, len(micro_batches), per_step)]


def plan_from(
    lengths: list[int], settings: TrainingConfig, packing: bool, start_step: int, total_steps: int
) -> Iterator[tuple[int, list[list[int]]]]:
    """(step number from 1, micro-batches) for steps start_step+1 .. total_steps, epoch after epoch."""
    step, epoch = 0, 0
    while step < total_steps:
        for micro_batches in epoch_steps(lengths, settings, packing, epoch):
            step += 1
            if step > total_steps:
                return
            if step > start_step:
                yield step, micro_batches
        epoch += 1


def total_steps_for(
    lengths: list[int], settings: TrainingConfig, packing: bool
) -> tuple[int, list[list[list[int]]]]:
    """(total steps, the first epoch's steps)."""
    first_epoch = epoch_steps(lengths, settings, packing, 0)
    return settings.max_steps or max(1, math.ceil(settings.epochs * len(first_epoch))), first_epoch


# the loop --------------------------------------------------------------------------------------
def train_adapter(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    settings: TrainingConfig,
    runtime: Runtime,
    *,
    pad_token_id: int,
    packing: bool = True,
    validation: list[TokenizedExample] | None = None,
    checkpointer: Checkpointer | None = None,
    progress: ProgressReporter | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Trains the model's trainable parameters on the examples; returns the `train` part of the result."""
    settings = sized(settings, model, runtime)
    world = runtime.world
    lengths = [len(example.input_ids) for example in examples]
    supervised = [example.supervised_tokens for example in examples]
    total_steps, first_epoch = total_steps_for(lengths, settings, packing)
    per_epoch = len(first_epoch)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0, fused=True)
    schedule = get_scheduler(
        "constant_with_warmup" if settings.lr_schedule == "constant" else settings.lr_schedule,
        optimizer,
        num_warmup_steps=math.ceil(settings.warmup_fraction * total_steps),
        num_training_steps=total_steps,
    )
    validate_every = settings.eval_every_steps or max(1, total_steps // VALIDATIONS_PER_RUN)
    early_stop = bool(validation) and settings.early_stop_patience > 0
    if progress is None:
        progress = ProgressReporter(None, "", enabled=False)
    progress.total_steps = total_steps

    state, best_weights, resumed_from = LoopState(), None, None
    if checkpointer is not None:
        found = checkpointer.latest()
        if found is not None:
            path, saved = found
            best_weights = checkpointer.restore(path, model, optimizer, schedule)
            state = LoopState(**saved["loop"])
            resumed_from = state.step
            log.info("resumed from checkpoint %s at step %d of %d", path.name, state.step, total_steps)

    def collate(indices: list[int]) -> PackedBatch:
        chosen = [examples[i] for i in indices]
        batch = collate_packed(chosen) if packing else collate_padded(chosen, pad_token_id)
        return batch.to(runtime.device)

    def save_checkpoint() -> None:
        if checkpointer is not None and world.is_main:
            checkpointer.save(state.step, model, optimizer, schedule, asdict(state), best_weights)

    model.train()
    session_started = time.perf_counter()
    seconds_before, tokens_before = state.seconds, state.tokens
    steps_this_run = 0
    for step, micro_batches in plan_from(lengths, settings, packing, state.step, total_steps):
        torch.manual_seed(hash_seed(settings.seed, step, world.rank))  # dropout: a pure function of the step
        step_supervised = sum(supervised[i] for batch in micro_batches for i in batch)
        step_tokens = sum(lengths[i] for batch in micro_batches for i in batch)
        local_loss = torch.zeros((), dtype=torch.float32, device=runtime.device)  # summed on the device: no sync
        for indices in micro_batches[world.rank :: world.size]:
            total, _ = token_loss_sums(
                model,
                collate(indices),
                cross_entropy=settings.cross_entropy,
                chunk_tokens=settings.loss_chunk_tokens,
                per_example=False,
            )
            (total / step_supervised).backward()
            local_loss += total.detach()
        sum_gradients(world, parameters)
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

        stop_votes = 1.0 if stop_requested() else 0.0
        # one host sync a step, here: the loss for the curve and the progress file
        step_loss, stop_votes = sum_values(world, [float(local_loss), stop_votes], runtime.device)
        steps_this_run += 1
        state.step = step
        state.tokens += step_tokens
        state.supervised_tokens += step_supervised
        state.seconds = seconds_before + (time.perf_counter() - session_started)
        state.step_sums.append([step_loss, step_supervised])
        state.step_sums = state.step_sums[-per_epoch:]
        state.curve.append([step, round(step_loss / step_supervised, 4)])
        run_seconds = state.seconds - seconds_before
        progress.step(
            step,
            step_loss / step_supervised,
            (state.tokens - tokens_before) / max(run_seconds, 1e-9),
            run_seconds,
            steps_this_run,
        )

        if early_stop and (step % validate_every == 0 or step == total_steps):
            progress.phase("validate", step=step)
            loss = evaluate_examples(model, validation, settings, runtime, packing, pad_token_id)["loss"]
            state.validation_curve.append([step, round(loss, 5)])
            if state.best_validation is None or loss < state.best_validation - 1e-6:
                state.best_validation, state.best_step = loss, step
                state.validations_without_improvement = 0
                best_weights = trainable_state(model)
            else:
                state.validations_without_improvement += 1
            log.info(
                "validation step=%d loss=%.4f best=%.4f at step %s", step, loss, state.best_validation, state.best_step
            )
            if state.validations_without_improvement >= settings.early_stop_patience:
                state.stopped_by = "early_stop"
        if settings.max_minutes is not None and state.seconds >= settings.max_minutes * 60:
            state.stopped_by = state.stopped_by or "max_minutes"
        if settings.max_tokens is not None and state.tokens >= settings.max_tokens:
            state.stopped_by = state.stopped_by or "max_tokens"
        if stop_votes > 0:
            save_checkpoint()
            raise Interrupted(f"stopped by SIGTERM at step {step}; checkpoint saved")
        if state.stopped_by:
            log.info("training stops at step %d of %d: %s", step, total_steps, state.stopped_by)
            break
        if step % settings.checkpoint_every_steps == 0 and step < total_steps:
            save_checkpoint()
    model.eval()

    restored_best = False
    if early_stop and best_weights is not None and state.best_step != state.step:
        load_trainable_state(model, best_weights)
        restored_best = True
    sums = state.step_sums or [[0.0, 1]]
    return {
        "examples": len(examples),
        "validation_examples": len(validation or []),
        "steps": state.step,
        "planned_steps": total_steps,
        "epochs": round(state.step / per_epoch, 4),
        "supervised_tokens": state.supervised_tokens,
        "tokens": state.tokens,
        "seconds": round(state.seconds, 2),
        "tokens_per_second": round(state.tokens / state.seconds, 1) if state.seconds else None,
        "loss_curve": state.curve,
        "validation_curve": state.validation_curve,
        "best_step": state.best_step,
        "restored_best_weights": restored_best,
        "final_loss": round(math.fsum(s for s, _ in sums) / sum(n for _, n in sums), 4),
        "stopped_by": state.stopped_by or "steps",
        "resumed_from_step": resumed_from,
        "packing": packing,
        "row_fill": row_fill(first_epoch, lengths, settings) if packing else None,
        "world_size": world.size,
    }


def hash_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def row_fill(first_epoch: list[list[list[int]]], lengths: list[int], settings: TrainingConfig) -> float:
    """Real tokens over row capacity in the first epoch's rows (1.0 = no wasted room)."""
    rows = sum(len(step) for step in first_epoch)
    return round(sum(lengths) / (rows * settings.row_tokens), 4)


def run_manifest(spec: TrainSpec, max_seq_len: int) -> dict[str, str]:
    """What a checkpoint must match to be resumed: this cycle, this snapshot, the same data and plan."""
    shaping = spec.training.model_dump(
        mode="json",
        include={
            "epochs",
            "max_steps",
            "learning_rate",
            "lr_schedule",
            "warmup_fraction",
            "batch_size",
            "packing",
            "row_tokens",
            "rows_per_step",
            "seed",
            "quantization",
            "precision",
        },
    )
    parts = {
        "adapter": spec.adapter.model_dump(mode="json"),
        "training": shaping,
        "max_seq_len": max_seq_len,
        "base": spec.base_model,
        "init_adapter": str(spec.init_adapter),
    }
    files = [spec.train_file] + ([spec.validation_file] if spec.validation_file else [])
    return {"cycle_id": spec.cycle_id, "snapshot_id": spec.snapshot_id, "fingerprint": fingerprint(parts, files)}


# evaluation ------------------------------------------------------------------------------------
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
    for indices in groups[world.rank :: world.size]:
        chosen = [examples[i] for i in indices]
        batch = collate_packed(chosen) if packing else collate_padded(chosen, pad_token_id)
        loss_sums, token_counts = token_loss_sums(
            model,
            batch.to(runtime.device),
            cross_entropy="chunked",
            chunk_tokens=settings.loss_chunk_tokens,
            per_example=True,
        )
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

    def evaluate_into(label: str, scored: torch.nn.Module, packing: bool) -> None:
        for name, eval_set in eval_sets.items():
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
            evaluate_into("base", model, packing)
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


def probe_adapter(spec: TrainSpec, adapter_dir: Path) -> dict[str, Any]:
    """Runs `python -m daemon.training probe` on the saved adapter in a fresh process (as a server would
    load it) and returns its JSON; a probe that crashes or times out is a failed probe, never a failed run."""
    if not spec.probe.enabled:
        return {"status": "off"}
    started = time.perf_counter()
    prompts_file, out_file = spec.output_dir / PROBE_PROMPTS_FILE, spec.output_dir / PROBE_FILE
    prompts_file.write_text(json.dumps([p.model_dump(mode="json", exclude_none=True) for p in spec.golden_prompts]),
                            encoding="utf-8")
    out_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "daemon.training", "probe", "--base", spec.base_model,
               "--adapter", str(adapter_dir), "--prompts", str(prompts_file), "--out", str(out_file),
               "--max-new-tokens", str(spec.probe.max_new_tokens), "--device", spec.training.device]
    if spec.base_revision:
        command += ["--revision", spec.base_revision]
    for label, directory in spec.compare_adapters.items():
        command += ["--compare", f"{label}={directory}"]
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC")}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log.info("probe started prompts=%d compare=%s", len(spec.golden_prompts), ",".join(spec.compare_adapters))
    try:
        completed = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, timeout=spec.probe.timeout_seconds,
                                   check=False)
    except subprocess.TimeoutExpired:
        probe = {"status": "failed", "error": f"the probe did not finish within {spec.probe.timeout_seconds} s"}
    except OSError as exc:
        probe = {"status": "failed", "error": f"the probe could not start ({exc})"}
    else:
        try:
            probe = json.loads(out_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            probe = {"status": "failed",
                     "error": f"the probe exited with code {completed.returncode} and wrote no result"}
    probe["wall_seconds"] = round(time.perf_counter() - started, 2)
    log.info("probe done status=%s wall_seconds=%s", probe.get("status"), probe["wall_seconds"])
    return probe


def save_adapter(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, spec: TrainSpec, adapter_dir: Path
) -> None:
    """Adapter weights, the tokenizer (with its chat template) and ticketune_adapter.json."""
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(adapter_dir), selected_adapters=[CANDIDATE])
    tokenizer.save_pretrained(str(adapter_dir))
    config = model.peft_config[CANDIDATE]
    target_modules = getattr(config, "target_modules", None)
    description = {
        "method": spec.adapter.method,
        "description": describe(spec.adapter.method, spec.adapter.use_rslora, spec.training.quantization),
        "peft_type": str(config.peft_type.value if hasattr(config.peft_type, "value") else config.peft_type),
        "r": getattr(config, "r", None),
        "alpha": getattr(config, "lora_alpha", None),
        "use_rslora": getattr(config, "use_rslora", False),
        "use_dora": getattr(config, "use_dora", False),
        "dropout": getattr(config, "lora_dropout", None),
        "target_modules": sorted(target_modules) if isinstance(target_modules, (set, list)) else target_modules,
        "quantization": spec.training.quantization,
        "base_model": spec.base_model,
        "base_revision": spec.base_revision,
        "chat_template_sha256": hashlib.sha256(tokenizer.chat_template.encode("utf-8")).hexdigest(),
        "cycle_id": spec.cycle_id,
        "snapshot_id": spec.snapshot_id,
        "init_adapter": None if spec.init_adapter is None else str(spec.init_adapter),
    }
    (adapter_dir / "ticketune_adapter.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def effective_max_seq_len(spec: TrainSpec, tokenizer: PreTrainedTokenizerBase) -> int:
    """The spec's limit, capped by the base's context length when the tokenizer declares a real one."""
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:
        return min(spec.training.max_seq_len, declared)
    return spec.training.max_seq_len


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _check_base_exists(base_model: str) -> None:
    looks_like_path = base_model.startswith(("/", ".")) or Path(base_model).exists()
    if looks_like_path and not Path(base_model).is_dir():
        raise SpecError(
            f"base model directory {base_model} does not exist; build it with "
            f"`ticketune make-base-model {base_model}` or point model.base at a model directory"
        )


def _base_load_message(base_model: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"base model {base_model} could not be loaded ({reason}); point model.base at a model directory "
        "or a hub id present in the local cache"
    )
