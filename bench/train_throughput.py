"""Training throughput on CPU: ticketune's worker against HF Trainer + PEFT and a plain HF + PEFT loop.

Pinned: the tiny model `make-base-model --seed 0 --steps 30` builds (or `--base DIR`, e.g. the real
SmolLM2-135M-Instruct from `make-base-model DIR --pretrained smollm2-135m-instruct`), and the chat
examples that the ingest's ticket_to_example makes of 400 `produce-sample` tickets (seed 7; 60 with
`--base`, whose model is 130 times larger; `--tickets` changes it). Every side trains one epoch
of LoRA (r 16, alpha 32, dropout 0, all-linear) on the same token ids
(chat_examples.tokenize_file) with the same number of torch threads, each side `--repeats` times,
alternating; the best run of each side counts (the one least disturbed by other load).
ticketune runs as the service runs it, `python -m daemon.training train --spec`, with the service's
defaults for the row and loss-chunk sizes, checkpointing and precision (`auto`: on a CPU with AMX and a
real model, bf16 autocast over fp32 adapters; the baselines run in the precision the worker ran,
`--baseline-precision` says otherwise); its figure is the worker's own `train.tokens /
train.seconds` (training loop only). The baseline is `transformers.Trainer` with
batches of 8 padded to the longest (DataCollatorForSeq2Seq), in random order without length grouping,
labels -100 off the assistant turns, timed around `trainer.train()`: what users run. The loop is a
plain HF + PEFT loop with its best batching: batches of 8 of similar length (sorted, then the batches
shuffled), the model's own loss, AdamW, timed around the loop. Tokens are the real (non-padding)
tokens each side processed. The last line printed is a JSON object: {"ticketune_tokens_per_s": x,
"baseline_tokens_per_s": y, "ratio": z, "loop_tokens_per_s": u, "loop_ratio": v}, the baseline being
Trainer + PEFT.

    python bench/train_throughput.py [--base DIR] [--tickets N] [--work-dir DIR] [--threads N] [--repeats N]
                                     [--worker-precision auto|fp32|bf16] [--baseline-precision same|fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICKETS = 400
BASE_TICKETS = 60  # with --base: a real model is about 130 times the tiny one
TICKET_SEED = 7
MODEL_SEED = 0
MODEL_STEPS = 30
LORA = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
BATCH_SIZE = 8
MAX_SEQ_LEN = 2048
EPOCHS = 1
LEARNING_RATE = 2e-4
SEED = 0
REPO = Path(__file__).resolve().parents[1]


def base_model(work_dir: Path) -> Path:
    """The pinned tiny model, built once per work dir (`ticketune_base.json` marks a finished build)."""
    directory = work_dir / f"base-seed{MODEL_SEED}-steps{MODEL_STEPS}"
    if not (directory / "ticketune_base.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "daemon.training", "make-base-model", str(directory),
             "--seed", str(MODEL_SEED), "--steps", str(MODEL_STEPS)],
            check=True, cwd=REPO, stderr=subprocess.DEVNULL,
        )
    return directory


def write_train_file(path: Path, tickets: int = TICKETS) -> int:
    """The chat examples of the pinned sample tickets, one JSON record per line; returns how many."""
    from daemon.config import ModelConfig
    from daemon.demo.samples import generate_tickets
    from daemon.ingest.pairs import Example, ticket_to_example
    from daemon.tickets import Ticket

    system_prompt = ModelConfig().system_prompt
    records = []
    for raw in generate_tickets(tickets, seed=TICKET_SEED):
        example = ticket_to_example(Ticket.model_validate(raw), system_prompt)
        if isinstance(example, Example):
            records.append({"ticket_id": example.ticket_id, "messages": example.messages})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)


def run_ticketune(base: Path, train_file: Path, run_dir: Path, threads: int, precision: str = "auto") -> dict:
    """One worker run as the service starts it; returns result.json's `train` section."""
    out_dir = run_dir / "out"
    spec = {
        "cycle_id": "bench",
        "snapshot_id": "bench",
        "base_model": str(base),
        "output_dir": str(out_dir),
        "train_file": str(train_file),
        "eval_files": {},
        "evaluate_base": False,
        "adapter": LORA,
        "training": {
            "device": "cpu",
            "epochs": EPOCHS,
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
            "max_seq_len": MAX_SEQ_LEN,
            "packing": True,
            "row_tokens": "auto",
            "loss_chunk_tokens": "auto",
            "rows_per_step": 1,
            "cross_entropy": "auto",
            "gradient_checkpointing": "auto",
            "precision": precision,
            "seed": SEED,
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "daemon.training", "train", "--spec", str(spec_path)],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )
    stderr = worker.stderr.read()
    _, status, usage = os.wait4(worker.pid, 0)  # this process's own peak RSS, not the largest child's so far
    worker.returncode = returncode = os.waitstatus_to_exitcode(status)
    result_path = out_dir / "result.json"
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
    if returncode != 0 or result.get("status") != "ok":
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"ticketune worker failed: {result.get('error') or f'exit {returncode}'}")
    peak_gib = usage.ru_maxrss * 1024 / 2**30  # kilobytes on Linux
    return result["train"] | {"versions": result.get("versions", {}), "peak_rss_gib": round(peak_gib, 2)}


def load_model(base: Path):
    """The base in fp32 with sdpa, for both baselines. A directory converted from GGUF by an older
    `make-base-model` keeps the GGUF `quantization_config` in its config.json although its weights are
    plain float; Trainer refuses such a model, so the config is loaded without it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    if getattr(config, "quantization_config", None) is not None and \
            dict(config.quantization_config).get("quant_method") == "gguf":
        del config.quantization_config
    return AutoModelForCausalLM.from_pretrained(base, config=config, dtype=torch.float32, attn_implementation="sdpa")


def run_baseline(base: Path, train_file: Path, out_dir: Path, threads: int, bf16: bool = False) -> dict:
    """The naive recipe: Trainer + get_peft_model, padded batches of 8 in random order, HF's own loss;
    `bf16`: Trainer's bf16 mixed precision (autocast on CPU)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from daemon.training.chat_examples import tokenize_file

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenized = tokenize_file(train_file, tokenizer, MAX_SEQ_LEN)
    dataset = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
        for e in tokenized.examples
    ]
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")
    real_tokens = 0

    def collate(features: list[dict]) -> dict:
        nonlocal real_tokens
        batch = pad(features)
        real_tokens += int(batch["attention_mask"].sum())
        return batch

    model = load_model(base)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    ))
    arguments = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=EPOCHS,
        learning_rate=LEARNING_RATE,  # defaults otherwise: random order, no length grouping, fused AdamW
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        bf16=bf16,
        seed=SEED,
    )
    trainer = Trainer(model=model, args=arguments, data_collator=collate, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would interleave the table
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "examples": len(dataset),
        "steps": trainer.state.global_step,
        "tokens": real_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(real_tokens / seconds, 1),
    }


def run_loop(base: Path, train_file: Path, threads: int, bf16: bool = False) -> dict:
    """A plain HF + PEFT loop with its best batching: similar lengths together, the model's own loss;
    `bf16`: the forward under bf16 autocast (fp32 adapters and optimizer, as the worker's bf16)."""
    import random

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer

    from daemon.training.chat_examples import tokenize_file

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_file(train_file, tokenizer, MAX_SEQ_LEN).examples
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    random.Random(SEED).shuffle(batches)
    model = load_model(base)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    ))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    model.train()
    tokens, started = 0, time.perf_counter()
    for indices in batches:
        width = max(len(examples[i].input_ids) for i in indices)
        input_ids = torch.full((len(indices), width), pad_id)
        labels = torch.full((len(indices), width), -100)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            example = examples[index]
            size = len(example.input_ids)
            input_ids[row, :size], labels[row, :size], mask[row, :size] = (
                torch.tensor(example.input_ids), torch.tensor(example.labels), 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    seconds = time.perf_counter() - started
    return {"examples": len(examples), "steps": len(batches), "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a base model directory instead of the pinned tiny model")
    parser.add_argument("--tickets", type=int, help=f"sample tickets ({TICKETS}; {BASE_TICKETS} with --base)")
    parser.add_argument("--work-dir", type=Path, help="keeps the built tiny model between runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; the best counts")
    parser.add_argument("--worker-precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the worker's training.precision")
    parser.add_argument("--baseline-precision", choices=("same", "fp32", "bf16"), default="same",
                        help="the baselines' precision; same (default): what the worker ran, so bf16 on AMX "
                             "is compared with bf16")
    args = parser.parse_args()

    tickets = args.tickets or (BASE_TICKETS if args.base else TICKETS)
    ours_runs, naive_runs, loop_runs = [], [], []
    with tempfile.TemporaryDirectory(prefix="ticketune-bench-") as scratch:
        scratch_dir = Path(scratch)
        work_dir = args.work_dir or scratch_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        base = args.base.resolve() if args.base else base_model(work_dir)
        train_file = scratch_dir / "train.jsonl"
        examples = write_train_file(train_file, tickets)
        for repeat in range(args.repeats):
            ours_runs.append(run_ticketune(base, train_file, scratch_dir / f"ticketune-{repeat}", args.threads,
                                           args.worker_precision))
            worker_bf16 = (ours_runs[-1].get("settings") or {}).get("precision") == "bf16"
            bf16 = worker_bf16 if args.baseline_precision == "same" else args.baseline_precision == "bf16"
            naive_runs.append(run_baseline(base, train_file, scratch_dir / f"baseline-{repeat}", args.threads, bf16))
            loop_runs.append(run_loop(base, train_file, args.threads, bf16))

    def best(runs: list[dict]) -> dict:
        return max(runs, key=lambda run: run["tokens_per_second"])

    ours, naive, loop = best(ours_runs), best(naive_runs), best(loop_runs)
    ratio = ours["tokens_per_second"] / naive["tokens_per_second"]
    loop_ratio = ours["tokens_per_second"] / loop["tokens_per_second"]
    stack = ", ".join(f"{name} {version}" for name, version in ours["versions"].items())
    model = (f"base {args.base}" if args.base
             else f"tiny model (seed {MODEL_SEED}, {MODEL_STEPS} steps)")
    print(f"train throughput: {examples} examples of {tickets} sample tickets (seed {TICKET_SEED}), {model}, "
          f"LoRA r {LORA['r']} all-linear, {EPOCHS} epoch, {args.threads} threads on {cpu_name()} "
          f"({os.cpu_count()} CPUs); {stack}")
    print(f"{'':<22}{'steps':>7}{'real tokens':>13}{'seconds':>9}{'tokens/s':>10}  (best of {args.repeats}; all runs)")
    for name, chosen, runs in (("ticketune worker", ours, ours_runs), ("Trainer + PEFT", naive, naive_runs),
                               ("HF + PEFT loop", loop, loop_runs)):
        every = ", ".join(f"{run['tokens_per_second']:,.0f}" for run in runs)
        print(f"{name:<22}{chosen['steps']:>7}{chosen['tokens']:>13,}{chosen['seconds']:>9.2f}"
              f"{chosen['tokens_per_second']:>10,.0f}  ({every})")
    settings, plan = ours.get("settings") or {}, ours.get("checkpointing") or {}
    print(f"worker settings: precision {settings.get('precision')}, rows of {settings.get('row_tokens')} tokens, "
          f"loss chunks of {settings.get('loss_chunk_tokens')}, {plan.get('checkpointed')} of {plan.get('layers')} "
          f"layers checkpointed, lean forwards {', '.join(ours.get('kernels') or []) or 'none'}, peak RSS "
          f"{ours.get('peak_rss_gib')} GiB; baselines in {'bf16 autocast' if bf16 else 'fp32'}")
    print(f"ratio {ratio:.2f}x against Trainer + PEFT, {loop_ratio:.2f}x against the loop")
    print(json.dumps({
        "ticketune_tokens_per_s": ours["tokens_per_second"],
        "baseline_tokens_per_s": naive["tokens_per_second"],
        "ratio": round(ratio, 3),
        "loop_tokens_per_s": loop["tokens_per_second"],
        "loop_ratio": round(loop_ratio, 3),
        "worker_precision": settings.get("precision"),
        "worker_peak_rss_gib": ours.get("peak_rss_gib"),
        "baseline_precision": "bf16" if bf16 else "fp32",
        "cpu": cpu_name(),
    }))


if __name__ == "__main__":
    main()
