"""LoRA training recipe: a spec in; an adapter directory and the result dict out.

Supports: LoRA on any causal LM that transformers loads (a local directory or a hub id in the local
cache), `target_modules="all-linear"` or a list, a warm start from a previous adapter, epochs or a
step budget, evaluation of the candidate, of other adapters and of the base on every eval file.
Assumes: a fast tokenizer with a chat template; one device (cuda in bf16 when available, else cpu in
float32); the whole base fits on it. Not yet: QLoRA, packing, resume, several GPUs.

Loss everywhere is the token-weighted mean cross-entropy over assistant tokens, in nats: the sum of
token losses divided by the number of supervised tokens. `train.tokens` and `train.supervised_tokens`
count the non-padding and the labelled tokens processed by all steps; `train.final_loss` is the
token-weighted loss over the last epoch's worth of steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from daemon.training.chat_examples import (
    IGNORE_INDEX,
    TokenizedExample,
    TokenizedSet,
    collate,
    eval_batches,
    length_grouped_batches,
    steps_per_epoch,
    tokenize_file,
)
from daemon.training.spec import SpecError, TrainSpec

CANDIDATE = "default"  # peft's name for the adapter being trained
WARMUP_FRACTION = 0.05
MAX_GRAD_NORM = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype


def run_training(spec: TrainSpec) -> dict[str, Any]:
    """The whole recipe; returns the result dict (the caller writes it)."""
    started = time.perf_counter()
    runtime = select_runtime(spec.training.device)
    tokenizer = load_tokenizer(spec)
    max_seq_len = effective_max_seq_len(spec, tokenizer)
    train_set = tokenize_file(spec.train_file, tokenizer, max_seq_len)
    if not train_set.examples:
        raise SpecError(
            f"train_file {spec.train_file} has no example with an assistant token "
            f"within max_seq_len={max_seq_len}; check the export and the limit"
        )
    eval_sets = {name: tokenize_file(path, tokenizer, max_seq_len) for name, path in spec.eval_files.items()}

    model = prepare_model(spec, runtime)
    log.info(
        "model ready device=%s dtype=%s trainable_params=%d train_examples=%d",
        runtime.device,
        runtime.dtype,
        count_trainable(model),
        len(train_set.examples),
    )
    train = train_adapter(model, train_set, spec, runtime, tokenizer.pad_token_id)

    adapter_dir = spec.output_dir / "adapter"
    save_adapter(model, tokenizer, spec, adapter_dir)
    evaluation = evaluate_all(model, eval_sets, spec, runtime, tokenizer.pad_token_id)
    return {
        "status": "ok",
        "error": None,
        "cycle_id": spec.cycle_id,
        "adapter_dir": str(adapter_dir.resolve()),
        "device": runtime.device.type,
        "train": train,
        "eval": evaluation,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": versions(),
    }


def select_runtime(requested: str) -> Runtime:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return Runtime(torch.device("cuda"), dtype)
    return Runtime(torch.device("cpu"), torch.float32)


def load_tokenizer(spec: TrainSpec) -> PreTrainedTokenizerBase:
    _check_base_exists(spec.base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model, revision=spec.base_revision)
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


def load_base_model(spec: TrainSpec, runtime: Runtime) -> torch.nn.Module:
    _check_base_exists(spec.base_model)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.base_model, revision=spec.base_revision, dtype=runtime.dtype
        )
    except (OSError, ValueError) as exc:
        raise SpecError(_base_load_message(spec.base_model, exc)) from None
    return model.to(runtime.device)


def prepare_model(spec: TrainSpec, runtime: Runtime) -> PeftModel:
    """The base with a trainable adapter: the init adapter when given, else a fresh LoRA from the seed."""
    transformers.set_seed(spec.training.seed)
    base = load_base_model(spec, runtime)
    if spec.init_adapter is not None:
        model = PeftModel.from_pretrained(base, str(spec.init_adapter), is_trainable=True)
        log.info("warm start from %s (its r and alpha apply)", spec.init_adapter)
    else:
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=spec.adapter.r,
            lora_alpha=spec.adapter.alpha,
            lora_dropout=spec.adapter.dropout,
            target_modules=spec.adapter.target_modules,
        )
        model = get_peft_model(base, config)
    return model.to(runtime.device)


def train_adapter(
    model: PeftModel, train_set: TokenizedSet, spec: TrainSpec, runtime: Runtime, pad_token_id: int
) -> dict[str, Any]:
    settings = spec.training
    examples = train_set.examples
    per_epoch = steps_per_epoch(len(examples), settings.batch_size)
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * per_epoch))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0, fused=True)
    schedule = get_linear_schedule_with_warmup(
        optimizer, math.ceil(WARMUP_FRACTION * total_steps), total_steps
    )
    rng = random.Random(settings.seed)
    lengths = [len(example.input_ids) for example in examples]
    log_every = max(1, total_steps // 20)

    curve: list[list[float]] = []
    step_sums: list[tuple[float, int]] = []
    tokens = supervised = 0
    batches: list[list[int]] = []
    model.train()
    started = time.perf_counter()
    for step in range(1, total_steps + 1):
        if not batches:
            batches = length_grouped_batches(lengths, settings.batch_size, rng)
        batch = collate([examples[i] for i in batches.pop()], pad_token_id)
        loss_sums, counts = example_loss_sums(model, batch, runtime.device)
        batch_tokens = int(counts.sum())
        (loss_sums.sum() / batch_tokens).backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

        loss_sum = float(loss_sums.detach().sum())
        step_sums.append((loss_sum, batch_tokens))
        curve.append([step, round(loss_sum / batch_tokens, 4)])
        tokens += int(batch["attention_mask"].sum())
        supervised += batch_tokens
        if step % log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - started
            log.info(
                "train step=%d/%d loss=%.4f tokens_per_s=%.0f",
                step,
                total_steps,
                curve[-1][1],
                tokens / elapsed,
            )
    seconds = time.perf_counter() - started
    model.eval()

    last_epoch = step_sums[-min(per_epoch, len(step_sums)) :]
    return {
        "examples": len(examples),
        "dropped_examples": train_set.dropped,
        "truncated_examples": train_set.truncated,
        "steps": total_steps,
        "epochs": round(total_steps / per_epoch, 4),
        "supervised_tokens": supervised,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "loss_curve": curve,
        "final_loss": round(sum(s for s, _ in last_epoch) / sum(n for _, n in last_epoch), 4),
        "init_adapter": None if spec.init_adapter is None else str(spec.init_adapter),
    }


def example_loss_sums(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed next-token cross-entropy over supervised tokens, and their count."""
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    logits = model(
        input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False
    ).logits
    targets = labels[:, 1:]
    token_losses = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    return token_losses.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


@torch.inference_mode()
def evaluate_examples(
    model: torch.nn.Module,
    examples: list[TokenizedExample],
    batch_size: int,
    device: torch.device,
    pad_token_id: int,
) -> dict[str, Any]:
    """Token-weighted loss over the set, and `[ticket_id, loss_sum, tokens]` per example for bootstraps."""
    was_training = model.training
    model.eval()
    per_example: list[list[Any]] = []
    for indices in eval_batches([len(e.input_ids) for e in examples], batch_size):
        chunk = [examples[i] for i in indices]
        sums, counts = example_loss_sums(model, collate(chunk, pad_token_id), device)
        for example, loss_sum, count in zip(chunk, sums.tolist(), counts.tolist(), strict=True):
            per_example.append([example.ticket_id, loss_sum, int(count)])
    model.train(was_training)
    total_tokens = sum(row[2] for row in per_example)
    per_example.sort(key=lambda row: row[0])
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
    batch_size = spec.training.batch_size * 2
    results: dict[str, dict[str, Any]] = {name: {} for name in eval_sets}

    def evaluate_into(label: str) -> None:
        for name, eval_set in eval_sets.items():
            scores = evaluate_examples(model, eval_set.examples, batch_size, runtime.device, pad_token_id)
            results[name][label] = {**scores, "dropped_examples": eval_set.dropped}
            log.info(
                "eval set=%s model=%s loss=%s examples=%d", name, label, scores["loss"], scores["examples"]
            )

    evaluate_into("candidate")
    for label, adapter_dir in spec.compare_adapters.items():
        name = f"compare-{label}"
        model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        try:
            evaluate_into(label)
        finally:
            model.set_adapter(CANDIDATE)
            model.delete_adapter(name)
    if spec.evaluate_base:
        with model.disable_adapter():
            evaluate_into("base")
    return results


def save_adapter(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, spec: TrainSpec, adapter_dir: Path
) -> None:
    """Adapter weights, the tokenizer (with its chat template) and ticketune_adapter.json."""
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(adapter_dir), selected_adapters=[CANDIDATE])
    tokenizer.save_pretrained(str(adapter_dir))
    config = model.peft_config[CANDIDATE]
    description = {
        "method": "lora",
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules) if config.target_modules else None,
        "base_model": spec.base_model,
        "base_revision": spec.base_revision,
        "chat_template_sha256": hashlib.sha256(tokenizer.chat_template.encode("utf-8")).hexdigest(),
        "cycle_id": spec.cycle_id,
        "init_adapter": None if spec.init_adapter is None else str(spec.init_adapter),
    }
    (adapter_dir / "ticketune_adapter.json").write_text(
        json.dumps(description, indent=2) + "\n", encoding="utf-8"
    )


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
