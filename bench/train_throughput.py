"""Training throughput on CPU: ticketune's worker against a naive HF Trainer + PEFT run of the same job.

Pinned: the tiny model `make-base-model --seed 0 --steps 30` builds, and the chat examples that the
ingest's ticket_to_example makes of 400 `produce-sample` tickets (seed 7). Both sides train one epoch
of LoRA (r 16, alpha 32, dropout 0, all-linear) in fp32 on the same token ids
(chat_examples.tokenize_file) with the same number of torch threads, each side `--repeats` times,
alternating; the best run of each side counts (the one least disturbed by other load).
ticketune runs as the service runs it, `python -m daemon.training train --spec`, packing rows of 4,096
tokens; its figure is the worker's own `train.tokens / train.seconds` (training loop only). The
baseline is `transformers.Trainer` with batches of 8 padded to the longest (DataCollatorForSeq2Seq),
in random order without length grouping, labels -100 off the assistant turns, timed around
`trainer.train()`. Tokens are the real (non-padding) tokens each side processed. The last line
printed is a JSON object: {"ticketune_tokens_per_s": x, "baseline_tokens_per_s": y, "ratio": z}.

    python bench/train_throughput.py [--work-dir DIR] [--threads N] [--repeats N]
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
TICKET_SEED = 7
MODEL_SEED = 0
MODEL_STEPS = 30
LORA = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
BATCH_SIZE = 8
MAX_SEQ_LEN = 2048
ROW_TOKENS = 4096  # ticketune packs examples into rows of this many tokens, one row a step
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


def write_train_file(path: Path) -> int:
    """The chat examples of the pinned sample tickets, one JSON record per line; returns how many."""
    from daemon.config import ModelConfig
    from daemon.demo.samples import generate_tickets
    from daemon.ingest.pairs import Example, ticket_to_example
    from daemon.tickets import Ticket

    system_prompt = ModelConfig().system_prompt
    records = []
    for raw in generate_tickets(TICKETS, seed=TICKET_SEED):
        example = ticket_to_example(Ticket.model_validate(raw), system_prompt)
        if isinstance(example, Example):
            records.append({"ticket_id": example.ticket_id, "messages": example.messages})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)


def run_ticketune(base: Path, train_file: Path, run_dir: Path, threads: int) -> dict:
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
            "row_tokens": ROW_TOKENS,
            "rows_per_step": 1,
            "cross_entropy": "auto",
            "gradient_checkpointing": False,
            "seed": SEED,
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.training", "train", "--spec", str(spec_path)],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )
    result_path = out_dir / "result.json"
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
    if completed.returncode != 0 or result.get("status") != "ok":
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"ticketune worker failed: {result.get('error') or f'exit {completed.returncode}'}")
    return result["train"] | {"versions": result.get("versions", {})}


def run_baseline(base: Path, train_file: Path, out_dir: Path, threads: int) -> dict:
    """The naive recipe: Trainer + get_peft_model, padded batches of 8 in random order, HF's own loss."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
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

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
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
    parser.add_argument("--work-dir", type=Path, help="keeps the built tiny model between runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; the best counts")
    args = parser.parse_args()

    ours_runs, naive_runs = [], []
    with tempfile.TemporaryDirectory(prefix="ticketune-bench-") as scratch:
        scratch_dir = Path(scratch)
        work_dir = args.work_dir or scratch_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        base = base_model(work_dir)
        train_file = scratch_dir / "train.jsonl"
        examples = write_train_file(train_file)
        for repeat in range(args.repeats):
            ours_runs.append(run_ticketune(base, train_file, scratch_dir / f"ticketune-{repeat}", args.threads))
            naive_runs.append(run_baseline(base, train_file, scratch_dir / f"baseline-{repeat}", args.threads))

    ours = max(ours_runs, key=lambda run: run["tokens_per_second"])
    naive = max(naive_runs, key=lambda run: run["tokens_per_second"])
    ratio = ours["tokens_per_second"] / naive["tokens_per_second"]
    stack = ", ".join(f"{name} {version}" for name, version in ours["versions"].items())
    print(f"train throughput: {examples} examples of {TICKETS} sample tickets (seed {TICKET_SEED}), tiny model "
          f"(seed {MODEL_SEED}, {MODEL_STEPS} steps), LoRA r {LORA['r']} all-linear, fp32, {EPOCHS} epoch, "
          f"{args.threads} threads on {cpu_name()} ({os.cpu_count()} CPUs); {stack}")
    print(f"{'':<22}{'steps':>7}{'real tokens':>13}{'seconds':>9}{'tokens/s':>10}  (best of {args.repeats}; all runs)")
    for name, best, runs in (("ticketune worker", ours, ours_runs), ("Trainer + PEFT", naive, naive_runs)):
        every = ", ".join(f"{run['tokens_per_second']:,.0f}" for run in runs)
        print(f"{name:<22}{best['steps']:>7}{best['tokens']:>13,}{best['seconds']:>9.2f}"
              f"{best['tokens_per_second']:>10,.0f}  ({every})")
    print(f"ratio {ratio:.2f}x")
    print(json.dumps({
        "ticketune_tokens_per_s": ours["tokens_per_second"],
        "baseline_tokens_per_s": naive["tokens_per_second"],
        "ratio": round(ratio, 3),
    }))


if __name__ == "__main__":
    main()
