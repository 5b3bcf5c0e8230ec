"""The training loop: the step plan (packed rows or padded batches, seeded by epoch), the steps with their
budgets, early stopping, checkpoints and SIGTERM, and the `train` part of the result. A preference objective
(preference.py) adds its loss to each step; alone (kto, dpo) its examples make the plan."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import get_scheduler

from daemon.config import TrainingConfig
from daemon.training.chat_examples import (
    TokenizedExample,
    length_grouped_batches,
)
from daemon.training.checkpoints import Checkpointer, fingerprint, load_trainable_state, trainable_state
from daemon.training.distributed import rank_share, sum_gradients, sum_values
from daemon.training.evaluation import evaluate_examples
from daemon.training.losses import token_loss_sums
from daemon.training.memory_plan import return_freed_memory
from daemon.training.packing import PackedBatch, best_fit_rows, collate_packed, collate_padded
from daemon.training.preference import PreferenceObjective
from daemon.training.preparation import Runtime, sized
from daemon.training.progress import ProgressReporter
from daemon.training.spec import TrainSpec

log = logging.getLogger(__name__)
MAX_GRAD_NORM = 1.0
TRIM_EVERY_STEPS = 10  # on CPU, freed heap pages go back to the system this often (each trim costs about 0.5 s)
VALIDATIONS_PER_RUN = 10


class Interrupted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the retry of this cycle resumes from it."""


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
    preference_curve: list[list[float]] = field(default_factory=list)
    best_validation: float | None = None
    best_step: int | None = None
    validations_without_improvement: int = 0
    stopped_by: str | None = None


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
    preference: PreferenceObjective | None = None,
) -> dict[str, Any]:
    """Trains the model's trainable parameters on the examples (and the preference objective's, when given);
    returns the `train` part of the result."""
    settings = sized(settings, model, runtime)
    world = runtime.world
    only_preference = preference is not None and not preference.with_sft
    if only_preference:
        examples, validation = [], None  # no supervised part: its loss neither trains nor stops training
    lengths = [len(example.input_ids) for example in examples]
    supervised = [example.supervised_tokens for example in examples]
    if only_preference:
        per_epoch = preference.steps_per_epoch
        total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * per_epoch))
        first_epoch: list[list[list[int]]] = [[] for _ in range(per_epoch)]
    else:
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
        if checkpointer is not None:
            checkpointer.save(state.step, model, optimizer, schedule, asdict(state), best_weights,
                              writer=world.is_main)

    model.train()
    session_started = time.perf_counter()
    seconds_before, tokens_before = state.seconds, state.tokens
    steps_this_run = 0
    plan = (((step, []) for step in range(state.step + 1, total_steps + 1)) if only_preference
            else plan_from(lengths, settings, packing, state.step, total_steps))
    for step, micro_batches in plan:
        torch.manual_seed(hash_seed(settings.seed, step, world.rank))  # dropout: a pure function of the step
        step_supervised = sum(supervised[i] for batch in micro_batches for i in batch)
        step_tokens = sum(lengths[i] for batch in micro_batches for i in batch)
        local_loss = torch.zeros((), dtype=torch.float32, device=runtime.device)  # summed on the device: no sync
        for indices in rank_share(micro_batches, world):
            total, _ = token_loss_sums(
                model,
                collate(indices or micro_batches[0][:1]),  # None: a pass for FSDP's collectives, weighted 0
                cross_entropy=settings.cross_entropy,
                chunk_tokens=settings.loss_chunk_tokens,
                per_example=False,
            )
            if indices is None:
                total = total * 0.0
            (total / step_supervised).backward()
            local_loss += total.detach()
        preference_loss = torch.zeros((), dtype=torch.float32, device=runtime.device)
        if preference is not None:
            preference_loss = preference.step_loss(model, step, world, runtime.device)
            preference_loss.backward()
            preference_loss = preference_loss.detach()
        sum_gradients(world, parameters)
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if runtime.device.type == "cpu" and step % TRIM_EVERY_STEPS == 0:
            return_freed_memory()  # glibc keeps freed activations: RSS would creep ~0.1 GiB a step on a long run

        stop_votes = 1.0 if stop_requested() else 0.0
        # one host sync a step, here: the loss for the curve and the progress file
        step_loss, stop_votes, step_preference = sum_values(
            world, [float(local_loss), stop_votes, float(preference_loss)], runtime.device)
        steps_this_run += 1
        state.step = step
        state.tokens += step_tokens
        state.supervised_tokens += step_supervised
        state.seconds = seconds_before + (time.perf_counter() - session_started)
        if not only_preference:
            state.step_sums.append([step_loss, step_supervised])
            state.step_sums = state.step_sums[-per_epoch:]
            state.curve.append([step, round(step_loss / step_supervised, 4)])
        if preference is not None:
            state.preference_curve.append([step, round(step_preference, 4)])
        run_seconds = state.seconds - seconds_before
        progress.step(
            step,
            step_preference if only_preference else step_loss / step_supervised,
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
        "preference_curve": state.preference_curve,
        "best_step": state.best_step,
        "restored_best_weights": restored_best,
        "final_loss": round(math.fsum(s for s, _ in sums) / sum(n for _, n in sums), 4),
        "stopped_by": state.stopped_by or "steps",
        "resumed_from_step": resumed_from,
        "packing": packing,
        "row_fill": row_fill(first_epoch, lengths, settings) if packing and lengths else None,
        "world_size": world.size,
        "sharding": "fsdp" if world.sharded else "none",
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
            "objective",
        },
    )
    parts = {
        "adapter": spec.adapter.model_dump(mode="json"),
        "training": shaping,
        "max_seq_len": max_seq_len,
        "base": spec.base_model,
        "init_adapter": str(spec.init_adapter),
    }
    files = [spec.train_file] + ([spec.validation_file] if spec.validation_file else []) + (
        [spec.preference_file] if spec.preference_file and spec.training.preference else [])
    return {"cycle_id": spec.cycle_id, "snapshot_id": spec.snapshot_id, "fingerprint": fingerprint(parts, files)}
