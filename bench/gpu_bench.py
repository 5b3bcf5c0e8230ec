"""GPU training throughput and memory: ticketune's engine on Llama-3.2-1B and Llama-3.1-8B shapes, QLoRA 8B
peak memory, and a naive HF + PEFT loop on the 1B shape measured in the same run.

Models are random-initialised in bf16 from the shapes below, saved once under --cache-dir and loaded by
the engine's own prepare_model (so the load, attention, checkpointing and quantisation paths are the
service's). Examples are synthetic ticket-like token rows: lengths log-normal (median 300, sigma 0.6,
cap 2048), the first 40% prompt (label -100) and the rest the answer (about the sample tickets' share).
Both sides train LoRA r 16, alpha 32, dropout 0 on all linear layers. ticketune: train_adapter with
best-fit packed rows (1B: the configured row_tokens; 8B and QLoRA: 8,192-token rows), timed by the
engine over `--steps` steps after `--warmup` steps. Naive: random batches of 8 padded to the longest,
sdpa, `model(**batch, labels=...)`, AdamW, no gradient checkpointing, timed the same way.

Figures (tokens are real, non-padding tokens; N is the base's total parameter count, embeddings included):
  MFU = 4·N·tokens/s / 790e12: forward 2N plus the input-gradient half of the backward 2N per token; the
    frozen base gets no weight gradient (LoRA's own FLOPs and attention scores are left out, under 1%).
  HFU = (4N + 2N·c)·tokens/s / 790e12, c the fraction of layers whose forward checkpointing recomputes:
    the work the GPU actually does. 790e12 is the H200's dense bf16 rate (about what a matmul reaches).
  Peak memory: torch.cuda.max_memory_reserved from before the model load to the end of training.
The last line is one JSON object with every figure measured. `--smoke` runs the same code on CPU with
a tiny shape in seconds (MFU there is meaningless).

    python bench/gpu_bench.py [1b] [8b] [qlora] [--steps N] [--set gradient_checkpointing=false ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import AdapterConfig, TrainingConfig  # noqa: E402
from daemon.training.attention import reset_path_counts  # noqa: E402
from daemon.training.chat_examples import IGNORE_INDEX, TokenizedExample  # noqa: E402
from daemon.training.packing import best_fit_rows  # noqa: E402
from daemon.training.preparation import prepare_model, select_runtime, sized, uses_packing, versions  # noqa: E402
from daemon.training.spec import TrainSpec  # noqa: E402
from daemon.training.train_loop import train_adapter  # noqa: E402

PEAK_FLOPS = 790e12
GIB = 1024**3
PAD_ID = 0
LORA = AdapterConfig(method="lora", r=16, alpha=32, dropout=0.0, target_modules="all-linear")
LLAMA_COMMON = {"num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "max_position_embeddings": 131072}
SHAPES = {
    "llama-3.2-1b": {**LLAMA_COMMON, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
                     "tie_word_embeddings": True},
    "llama-3.1-8b": {**LLAMA_COMMON, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                     "tie_word_embeddings": False},
    "tiny-tied": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": False},
}
# part: (shape, smoke shape, ticketune training overrides, targets)
# The 8B and QLoRA parts plan their checkpointing for the memory they are judged on (an 80 GB card, a
# 24 GB card), with some room for the allocator's reserve over what is allocated.
PARTS: dict[str, dict[str, Any]] = {
    "1b": {"shape": "llama-3.2-1b", "smoke": "tiny-tied", "training": {}, "baselines": ("naive", "packed_liger"),
           "target_tokens_per_s": 80_000},
    "8b": {"shape": "llama-3.1-8b", "smoke": "tiny", "training": {"row_tokens": 8192, "memory_budget_gib": 70},
           "target_tokens_per_s": 12_000, "max_peak_gib": 75},
    "qlora": {"shape": "llama-3.1-8b", "smoke": "tiny",
              "training": {"row_tokens": 8192, "quantization": "nf4", "memory_budget_gib": 18},
              "max_peak_gib": 20},
}
LENGTH_MEDIAN, LENGTH_SIGMA, MAX_SEQ_LEN, PROMPT_SHARE = 300, 0.6, 2048, 0.4
RUN_DEFAULTS = {"warmup": 3, "steps": 10, "naive_steps": 30, "examples": 3000}
SMOKE = {"median": 30, "max_seq_len": 256, "row_tokens": 512, "examples": 64, "warmup": 1, "steps": 2,
         "naive_steps": 2}
BASELINE_ROW_TOKENS = 4096  # the packed baseline's rows (its block mask is row_tokens² per row)


def llama_parameters(shape: dict[str, Any]) -> int:
    """Total parameters of a Llama decoder with this shape (no biases), the tied embedding counted once."""
    d, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    head_dim = d // shape["num_attention_heads"]
    attention = 2 * d * shape["num_attention_heads"] * head_dim + 2 * d * shape["num_key_value_heads"] * head_dim
    per_layer = attention + 3 * d * shape["intermediate_size"] + 2 * d
    embeddings = vocab * d * (1 if shape["tie_word_embeddings"] else 2)
    return embeddings + layers * per_layer + d


def synthetic_examples(count: int, median: int, max_len: int, vocab: int, seed: int = 0) -> list[TokenizedExample]:
    """Ticket-like rows: log-normal lengths, the prompt unlabelled, the answer labelled."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(count):
        length = min(max_len, max(8, round(rng.lognormvariate(math.log(median), LENGTH_SIGMA))))
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        prompt = max(1, int(length * PROMPT_SHARE))
        examples.append(TokenizedExample(str(index), ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def random_model_dir(shape_name: str, cache_dir: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """A random-initialised model of the shape, saved once per cache dir (renamed into place when complete)."""
    directory = cache_dir / f"{shape_name}-{str(dtype).removeprefix('torch.')}"
    if directory.is_dir():
        return directory
    started = time.perf_counter()
    config = LlamaConfig(**SHAPES[shape_name], bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    partial.rename(directory)
    del model
    _free(device)
    print(f"  built random {shape_name} in {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def run_ticketune(model_dir: Path, examples: list[TokenizedExample], settings: TrainingConfig,
                  warmup: int, steps: int) -> dict[str, Any]:
    """The engine's own model preparation and training loop; figures of the timed steps only."""
    runtime = select_runtime(settings.device, settings.precision)
    spec = TrainSpec(cycle_id="bench", base_model=str(model_dir), output_dir=model_dir / "unused",
                     train_file=model_dir / "unused.jsonl", adapter=LORA, training=settings)
    packing = uses_packing(spec)
    _reset_peak(runtime.device)
    model = prepare_model(spec, runtime)
    settings = sized(settings, model, runtime)
    plan = model.ticketune_checkpointing
    quantized = getattr(model.get_base_model(), "is_loaded_in_4bit", False)
    if settings.quantization == "nf4" and not quantized:
        raise ValueError("training.quantization nf4 was asked for but the base did not load in 4 bits")
    if warmup:  # first steps pay for kernel selection, allocator growth and lazy initialisation
        train_adapter(model, examples, settings.model_copy(update={"max_steps": warmup}), runtime,
                      pad_token_id=PAD_ID, packing=packing)
    reset_path_counts()
    result = train_adapter(model, examples, settings.model_copy(update={"max_steps": steps}), runtime,
                           pad_token_id=PAD_ID, packing=packing)
    figures = {
        "tokens": result["tokens"],
        "seconds": result["seconds"],
        "tokens_per_s": result["tokens"] / result["seconds"],
        "steps": result["steps"],
        "row_fill": result.get("row_fill"),
        "layout": (f"packed rows of {settings.row_tokens} x {settings.rows_per_step}" if packing
                   else f"padded batches of {settings.batch_size}") + (", nf4" if quantized else ""),
        "checkpointed_fraction": plan["checkpointed"] / max(plan["layers"], 1),
        "checkpointing": plan,
        "kernels": model.ticketune_kernels,
        "attention_calls": reset_path_counts(),
        **_peak(runtime.device),
    }
    del model
    _free(runtime.device)
    return figures


def run_naive(model_dir: Path, examples: list[TokenizedExample], device: torch.device, dtype: torch.dtype,
              warmup: int, steps: int, batch_size: int = 8) -> dict[str, Any]:
    """What a first HF + PEFT script does: padded random batches, sdpa, the model's own loss."""
    _reset_peak(device)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa").to(device)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
        target_modules=LORA.target_modules,
    ))
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) < warmup + steps:
        raise ValueError(f"{len(examples)} examples make fewer than {warmup + steps} batches of {batch_size}")
    figures = _timed_steps(model, [[examples[i] for i in b] for b in batches], _padded, device, warmup, steps,
                           contextlib.nullcontext(), fused=False)
    return figures | {"layout": f"padded batches of {batch_size}", "checkpointed_fraction": 0.0}


def _timed_steps(model: torch.nn.Module, groups: list[list[TokenizedExample]], make_batch, device: torch.device,
                 warmup: int, steps: int, autocast: Any, *, fused: bool) -> dict[str, Any]:
    """A baseline's loop: AdamW over the trainable parameters, the model's own loss, `steps` timed steps
    after `warmup`; tokens are the real ones (the attention mask's, or the whole packed row)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=2e-4, fused=fused)
    model.train()
    tokens, started = 0, 0.0
    for number, chosen in enumerate(groups[: warmup + steps]):
        if number == warmup:
            _synchronize(device)
            tokens, started = 0, time.perf_counter()
        batch = make_batch(chosen, device)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mask = batch["attention_mask"]
        tokens += int(mask.sum()) if mask.dim() == 2 else batch["input_ids"].shape[1]  # a 4D mask: the row is real
    _synchronize(device)
    seconds = time.perf_counter() - started
    figures = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "steps": steps,
               **_peak(device)}
    del model, optimizer
    _free(device)
    return figures


def run_packed_liger(model_dir: Path, examples: list[TokenizedExample], device: torch.device, dtype: torch.dtype,
                     warmup: int, steps: int, row_tokens: int) -> dict[str, Any]:
    """What a careful TRL user runs without flash-attn: rows packed best-fit with no padding, each row's
    examples kept apart by a 4D block-diagonal causal mask under sdpa (the image has no flash-attn, so
    TRL's padding_free is not available), positions restarting per example, Liger's kernels on the model
    (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy), bf16 autocast over fp32 adapters as Trainer's
    bf16=True does, non-reentrant gradient checkpointing (TRL's default), fused AdamW."""
    _reset_peak(device)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa").to(device)
    kernels = "none"
    if device.type == "cuda":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                        fused_linear_cross_entropy=True, cross_entropy=False)
        kernels = "liger"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
        target_modules=LORA.target_modules,
    ))
    rows = best_fit_rows([len(e.input_ids) for e in examples], row_tokens)
    random.Random(0).shuffle(rows)
    if len(rows) < warmup + steps:
        raise ValueError(f"{len(examples)} examples make fewer than {warmup + steps} rows of {row_tokens}")
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    figures = _timed_steps(model, [[examples[i] for i in row] for row in rows], _block_masked_row, device, warmup,
                           steps, autocast, fused=device.type == "cuda")
    return figures | {"layout": f"packed rows of {row_tokens}, 4D mask, {kernels}", "checkpointed_fraction": 1.0}


def _block_masked_row(examples: list[TokenizedExample], device: torch.device) -> dict[str, torch.Tensor]:
    lengths = [len(e.input_ids) for e in examples]
    total = sum(lengths)
    mask = torch.zeros((total, total), dtype=torch.bool)
    labels, start = [], 0
    for example, length in zip(examples, lengths, strict=True):
        mask[start : start + length, start : start + length] = torch.ones(length, length, dtype=torch.bool).tril()
        labels += [IGNORE_INDEX] + example.labels[1:]  # no target across an example boundary
        start += length
    return {
        "input_ids": torch.tensor([[t for e in examples for t in e.input_ids]], device=device),
        "position_ids": torch.tensor([[p for n in lengths for p in range(n)]], device=device),
        "attention_mask": mask[None, None].to(device),
        "labels": torch.tensor([labels], device=device),
    }


def _padded(examples: list[TokenizedExample], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention_mask.to(device)}


def utilisation(figures: dict[str, Any], parameters: int) -> None:
    """Adds MFU and HFU (formulas in the module docstring) to a side's figures."""
    rate = figures["tokens_per_s"]
    figures["parameters"] = parameters
    figures["mfu"] = 4 * parameters * rate / PEAK_FLOPS
    figures["hfu"] = (4 + 2 * figures["checkpointed_fraction"]) * parameters * rate / PEAK_FLOPS


def run_part(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
             overrides: dict[str, Any]) -> dict[str, Any]:
    part = PARTS[name]
    shape_name = part["smoke"] if args.smoke else part["shape"]
    shape = SHAPES[shape_name]
    print(f"[{name}] {shape_name}", flush=True)
    model_dir = random_model_dir(shape_name, args.cache_dir, device, dtype)
    median, max_len = (SMOKE["median"], SMOKE["max_seq_len"]) if args.smoke else (LENGTH_MEDIAN, MAX_SEQ_LEN)
    examples = synthetic_examples(args.examples, median, max_len, shape["vocab_size"])
    training = {"device": device.type, "max_seq_len": max_len, "learning_rate": 2e-4, "seed": 0,
                **({"row_tokens": SMOKE["row_tokens"]} if args.smoke else {}),
                **{k: v for k, v in part["training"].items() if not (args.smoke and k == "row_tokens")},
                **overrides}
    settings = TrainingConfig.model_validate(training)
    parameters = llama_parameters(shape)
    result: dict[str, Any] = {"shape": shape_name, "examples": len(examples)}
    # Baselines first: applying Liger to a model also swaps transformers' Llama module classes for every
    # later load, which would hand the naive loop Liger's kernels. Each side fails on its own.
    for side in part.get("baselines", ()):
        try:
            if side == "naive":
                figures = run_naive(model_dir, examples, device, dtype, args.warmup, args.naive_steps)
            else:
                row = SMOKE["row_tokens"] if args.smoke else BASELINE_ROW_TOKENS
                figures = run_packed_liger(model_dir, examples, device, dtype, args.warmup, args.naive_steps, row)
        except Exception as exc:  # noqa: BLE001 - one side's failure is its result; the run goes on
            result[side] = {"error": _reason(exc)}
            print(f"  {side} not measured: {result[side]['error']}", flush=True)
            _free(device)
            continue
        utilisation(figures, parameters)
        result[side] = figures
        print(f"  {side} {figures['tokens_per_s']:,.0f} tokens/s, peak {figures['peak_reserved_gib']:.1f} GiB",
              flush=True)
    try:
        ours = run_ticketune(model_dir, examples, settings, args.warmup, args.steps)
    except Exception as exc:  # noqa: BLE001 - measure the plainer path rather than nothing
        if settings.gradient_checkpointing is True:
            raise
        print(f"  ticketune failed ({_reason(exc)}); again with every layer checkpointed", flush=True)
        traceback.print_exc()
        result["first_attempt_error"] = _reason(exc)
        _free(device)
        ours = run_ticketune(model_dir, examples, settings.model_copy(update={"gradient_checkpointing": True}),
                             args.warmup, args.steps)
    utilisation(ours, parameters)
    result["ticketune"] = ours
    print(f"  ticketune {ours['tokens_per_s']:,.0f} tokens/s, peak {ours['peak_reserved_gib']:.1f} GiB, "
          f"checkpointing {ours['checkpointing']['checkpointed']}/{ours['checkpointing']['layers']} layers, "
          f"kernels {ours['kernels'] or 'none'}, attention {ours['attention_calls']}", flush=True)
    for side in part.get("baselines", ()):
        if "tokens_per_s" in result.get(side, {}):
            result[f"ratio_{side}"] = ours["tokens_per_s"] / result[side]["tokens_per_s"]
    return result


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def print_table(results: dict[str, dict[str, Any]], smoke: bool) -> None:
    print(f"\n{'part':<7}{'side':<14}{'layout':<40}{'ckpt':<6}{'tokens/s':>10}{'MFU':>7}{'HFU':>7}"
          f"{'peak GiB':>10}  target")
    for name, result in results.items():
        part = PARTS[name]
        if "error" in result:
            print(f"{name:<7}{'ticketune':<14}not measured: {result['error']}")
            continue
        for side in ("ticketune", *part.get("baselines", ())):
            figures = result.get(side)
            if figures is None:
                continue
            if "error" in figures:
                print(f"{name:<7}{side:<14}not measured: {figures['error']}")
                continue
            checkpointing = f"{figures['checkpointed_fraction']:.0%}"
            verdict = _verdict(part, figures, smoke) if side == "ticketune" else ""
            row = (f"{name:<7}{side:<14}{figures['layout']:<40}{checkpointing:<6}{figures['tokens_per_s']:>10,.0f}"
                   f"{figures['mfu']:>7.1%}{figures['hfu']:>7.1%}{figures['peak_reserved_gib']:>10.1f}  {verdict}")
            print(row.rstrip())
        for side in part.get("baselines", ()):
            if f"ratio_{side}" in result:
                print(f"{name:<7}ratio ticketune / {side}: {result[f'ratio_{side}']:.2f}x")


def _verdict(part: dict[str, Any], figures: dict[str, Any], smoke: bool) -> str:
    if smoke:
        return "(smoke: CPU, tiny shape, no targets)"
    checks = []
    if "target_tokens_per_s" in part:
        ok = figures["tokens_per_s"] >= part["target_tokens_per_s"]
        checks.append(f">= {part['target_tokens_per_s']:,} tokens/s {'met' if ok else 'MISSED'}")
    if "max_peak_gib" in part:
        ok = figures["peak_reserved_gib"] <= part["max_peak_gib"]
        checks.append(f"peak <= {part['max_peak_gib']} GiB {'met' if ok else 'MISSED'}")
    return "; ".join(checks)


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    line: dict[str, Any] = {}
    for name, result in results.items():
        if "error" in result:
            line[f"{name}_error"] = result["error"]
            continue
        for side in ("ticketune", *PARTS[name].get("baselines", ())):
            figures = result.get(side)
            if figures is None:
                continue
            if "error" in figures:
                line[f"{side}_{name}_error"] = figures["error"]
                continue
            line[f"{side}_{name}_tokens_per_s"] = round(figures["tokens_per_s"], 1)
            line[f"{side}_{name}_mfu"] = round(figures["mfu"], 4)
            line[f"{side}_{name}_hfu"] = round(figures["hfu"], 4)
            line[f"{side}_{name}_peak_gib"] = round(figures["peak_reserved_gib"], 2)
        for side in PARTS[name].get("baselines", ()):
            if f"ratio_{side}" in result:
                line[f"ratio_{name}_{side}"] = round(result[f"ratio_{side}"], 3)
    return line


def write_json(path: Path | None, results: dict[str, dict[str, Any]]) -> None:
    if path is not None:
        path.write_text(json.dumps({"results": results, "summary": summary(results)}, indent=2) + "\n")


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {"peak_allocated_gib": 0.0, "peak_reserved_gib": 0.0}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, same code path, seconds")
    parser.add_argument("--warmup", type=int, help=f"untimed steps before each measurement ({RUN_DEFAULTS['warmup']})")
    parser.add_argument("--steps", type=int, help=f"timed ticketune steps ({RUN_DEFAULTS['steps']})")
    parser.add_argument("--naive-steps", type=int, help=f"timed naive batches of 8 ({RUN_DEFAULTS['naive_steps']})")
    parser.add_argument("--examples", type=int, help=f"synthetic examples ({RUN_DEFAULTS['examples']})")
    parser.add_argument("--cache-dir", type=Path, help="random models (default: a temp dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training setting for ticketune's side, e.g. gradient_checkpointing=false")
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    parts = args.parts or list(PARTS)
    unknown = [name for name in parts if name not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    overrides = dict(_override(text) for text in args.overrides)
    for key, value in RUN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, SMOKE[key] if args.smoke else value)
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        raise SystemExit("no CUDA device visible; run on the GPU machine, or pass --smoke for the CPU check")

    with tempfile.TemporaryDirectory(prefix="ticketune-gpu-bench-") as scratch:
        args.cache_dir = args.cache_dir or Path(scratch)
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
        stack = ", ".join(f"{name} {version}" for name, version in versions().items())
        print(f"gpu_bench: {gpu}; {stack}; parts {' '.join(parts)}; overrides {overrides or 'none'}", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for name in parts:
            started = time.perf_counter()
            try:
                results[name] = run_part(name, args, device, dtype, overrides)
            except Exception as exc:  # noqa: BLE001 - a Triton, bitsandbytes or CUDA error ends this part only
                results[name] = {"error": _reason(exc)}
                print(f"  {name} not measured: {results[name]['error']}", flush=True)
                traceback.print_exc()
                _free(device)
            except KeyboardInterrupt:  # gpu.sh's time budget: report what was measured
                results[name] = {"error": "stopped by the time budget"}
                break
            finally:
                print(f"  [{name}] {time.perf_counter() - started:.0f} s", flush=True)
            write_json(args.json_out, results)  # after every part: a run cut short still leaves its figures

    write_json(args.json_out, results)
    print_table(results, args.smoke)
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
