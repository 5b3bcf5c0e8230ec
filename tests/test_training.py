"""The training worker: assistant-only labels, token-weighted loss, the train verb end to end, warm starts."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from daemon.config import TrainingConfig
from daemon.training.chat_examples import IGNORE_INDEX, tokenize_conversation, tokenize_file
from daemon.training.evaluation import evaluate_all, evaluate_examples
from daemon.training.preparation import Runtime, prepare_model
from daemon.training.spec import parse_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = Runtime(torch.device("cpu"), torch.float32)
PADDED_BY_TWO = TrainingConfig(batch_size=1, max_seq_len=512, packing=False)  # eval batches of 2
SYSTEM = "You are a helpful customer support agent."

# A few support intents: customer phrasings and one templated agent answer each.
INTENTS = {
    "refund": (
        ["I want a refund for order {order}.", "The {item} from order {order} is broken, please refund it."],
        "Hi <CUSTOMER_FIRST_NAME>, I have refunded order {order} in full. The money will be back on your "
        "card within five business days. Best regards, <AGENT_NAME>",
    ),
    "password": (
        ["I cannot sign in, I forgot my password.", "The password reset email never arrived."],
        "Hi <CUSTOMER_FIRST_NAME>, I have sent a new reset link to <EMAIL>. It is valid for one hour, "
        "so please check your spam folder if you do not see it. Best regards, <AGENT_NAME>",
    ),
    "shipping": (
        ["Where is my order {order}?", "My {item} has not arrived yet, order {order}."],
        "Hi <CUSTOMER_FIRST_NAME>, order {order} left our warehouse yesterday and will arrive within "
        "two business days. You can follow it here: <URL>. Best regards, <AGENT_NAME>",
    ),
    "invoice": (
        ["Can I get the invoice for order {order}?", "I need a receipt for my {item}, order {order}."],
        "Hi <CUSTOMER_FIRST_NAME>, I have sent the invoice for order {order} to <EMAIL>. You can also "
        "download it from the Orders page of your account. Best regards, <AGENT_NAME>",
    ),
    "cancel": (
        ["Please cancel my subscription.", "I want to stop my ink subscription."],
        "Hi <CUSTOMER_FIRST_NAME>, I have cancelled your subscription. It stays active until the end of "
        "this billing period and you will not be charged again. Best regards, <AGENT_NAME>",
    ),
}
ITEMS = ["lamp", "desk", "chair", "printer", "headphones", "monitor", "cable"]


def support_examples(count: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    examples = []
    for number in range(count):
        category = rng.choice(sorted(INTENTS))
        phrasings, answer = INTENTS[category]
        fields = {"order": str(rng.randint(1000, 9999)), "item": rng.choice(ITEMS)}
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Hello, " + rng.choice(phrasings).format(**fields)},
            {"role": "assistant", "content": answer.format(**fields)},
        ]
        if rng.random() < 0.3:
            messages += [
                {"role": "user", "content": "Thank you, that helps."},
                {"role": "assistant", "content": "You are welcome, <CUSTOMER_FIRST_NAME>! Have a nice day."},
            ]
        examples.append(
            {
                "ticket_id": f"{prefix}-{number}",
                "messages": messages,
                "category": category,
                "language": "en",
                "placeholders": ["<AGENT_NAME>", "<CUSTOMER_FIRST_NAME>"],
            }
        )
    return examples


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def make_spec(base: Path, out: Path, train_file: Path, eval_files: dict[str, Path], **overrides: Any) -> dict:
    spec = {
        "cycle_id": "c-test",
        "base_model": str(base),
        "base_revision": None,
        "output_dir": str(out),
        "adapter": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
        "init_adapter": None,
        "training": {
            "device": "cpu",
            "epochs": 2.0,
            "max_steps": None,
            "learning_rate": 0.002,
            "batch_size": 8,
            "max_seq_len": 512,
            "row_tokens": 1024,
            "seed": 0,
        },
        "train_file": str(train_file),
        "eval_files": {name: str(path) for name, path in eval_files.items()},
        "compare_adapters": {},
        "evaluate_base": True,
    }
    spec.update(overrides)
    return spec


def run_train_cli(spec: dict[str, Any], spec_path: Path) -> tuple[int, dict[str, Any], str]:
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.training", "train", "--spec", str(spec_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads((Path(spec["output_dir"]) / "result.json").read_text(encoding="utf-8"))
    return completed.returncode, result, completed.stderr


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return runs


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(folder / "train.jsonl", support_examples(96, seed=1, prefix="t")),
        "heldout": write_jsonl(folder / "heldout.jsonl", support_examples(24, seed=2, prefix="h")),
        "empty": write_jsonl(folder / "empty.jsonl", []),
    }


@pytest.fixture(scope="module")
def first_run(tiny_model_dir: Path, data_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cycle1")
    spec = make_spec(
        tiny_model_dir,
        out / "out",
        data_files["train"],
        {"batch_heldout": data_files["heldout"], "trusted": data_files["empty"]},
    )
    code, result, stderr = run_train_cli(spec, out / "spec.json")
    assert code == 0, stderr[-3000:]
    return result


def test_assistant_labels_cover_exactly_the_assistant_turns(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "My order 1182 never came, can you help?"},
        {"role": "assistant", "content": "Hi <CUSTOMER_FIRST_NAME>, I sent a new parcel to <ADDRESS>."},
        {"role": "user", "content": "Thanks! Will I get an email?"},
        {"role": "assistant", "content": "Yes, at <EMAIL>. Café crème is on us ☕."},
    ]
    ids, labels = tokenize_conversation(tokenizer, messages)

    runs = [tokenizer.decode(run) for run in labelled_runs(ids, labels)]
    assert runs == [messages[2]["content"] + "<|end|>", messages[4]["content"] + "<|end|>"]
    unlabelled = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX])
    assert (
        SYSTEM in unlabelled and messages[1]["content"] in unlabelled and messages[3]["content"] in unlabelled
    )
    assert "<CUSTOMER_FIRST_NAME>" not in unlabelled


def test_a_template_that_is_not_prefix_stable_still_labels_only_assistant_turns(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Marks the last message, so a shorter conversation renders its last turn differently.
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}"
        "{% if loop.last %}(latest) {% endif %}{{ m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "Where is my refund?"},
        {"role": "assistant", "content": "It was sent today."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "You are welcome."},
    ]
    ids, labels = tokenize_conversation(tokenizer, messages)
    # " You" carries the space that the template puts before the content; that token is the content's.
    assert [tokenizer.decode(run) for run in labelled_runs(ids, labels)] == [
        "It was sent today.<|end|>",
        " You are welcome.<|end|>",
    ]


def test_truncation_drops_examples_with_no_assistant_token_left(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_user = {"role": "user", "content": "Please read this. " * 60}
    records = [
        {"ticket_id": "long", "messages": [long_user, {"role": "assistant", "content": "Done."}]},
        {
            "ticket_id": "short",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        },
    ]
    tokenized = tokenize_file(write_jsonl(tmp_path / "x.jsonl", records), tokenizer, max_seq_len=64)
    assert [e.ticket_id for e in tokenized.examples] == ["short"]
    assert tokenized.dropped == 1 and tokenized.truncated == 1


def test_eval_loss_is_token_weighted_over_assistant_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = support_examples(3, seed=5, prefix="w")
    records[0]["messages"][-1]["content"] = "Done."  # one short answer, so weighting by tokens matters
    tokenized = tokenize_file(write_jsonl(tmp_path / "w.jsonl", records), tokenizer, max_seq_len=512)

    scores = evaluate_examples(
        model, tokenized.examples, PADDED_BY_TWO, CPU, packing=False, pad_token_id=tokenizer.pad_token_id
    )

    sums, counts = [], []
    with torch.no_grad():
        for example in tokenized.examples:
            labels = torch.tensor([example.labels])
            mean = model(input_ids=torch.tensor([example.input_ids]), labels=labels).loss.item()
            count = int((labels[:, 1:] != IGNORE_INDEX).sum())
            sums.append(mean * count)
            counts.append(count)
    assert scores["tokens"] == sum(counts) and scores["examples"] == 3
    assert scores["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert [row[2] for row in scores["per_example"]] == counts
    assert [row[1] for row in scores["per_example"]] == pytest.approx(sums, rel=1e-5)
    mean_of_means = sum(s / c for s, c in zip(sums, counts, strict=True)) / len(sums)
    assert abs(mean_of_means - scores["loss"]) > 1e-3


def test_train_cli_writes_an_adapter_that_beats_the_base_on_heldout(
    first_run: dict[str, Any], tiny_model_dir: Path, data_files: dict[str, Path]
) -> None:
    assert first_run["status"] == "ok" and first_run["error"] is None and first_run["device"] == "cpu"
    train = first_run["train"]
    assert train["settings"] == {"learning_rate": 0.002, "epochs": 2.0, "row_tokens": 1024, "loss_chunk_tokens": 512,
                                 "gradient_checkpointing": "auto", "precision": "fp32", "base_parameters":
                                 train["settings"]["base_parameters"]}
    assert 0 < train["settings"]["base_parameters"] < 20_000_000
    # the worker exec'd itself with its malloc tunables (glibc), or ran on the system's allocator (musl)
    assert train["allocator"] == ("tuned" if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc") else "system")
    assert train["examples"] == 96 and train["dropped_examples"] == 0 and train["packing"] is True
    assert train["steps"] == train["planned_steps"] == len(train["loss_curve"]) >= 8
    assert 0.8 < train["row_fill"] <= 1.0  # ~10 rows of 1024 tokens: only the last is part-empty
    assert train["supervised_tokens"] < train["tokens"]
    heldout = first_run["eval"]["batch_heldout"]
    assert set(heldout) == {"candidate", "base"}
    assert heldout["candidate"]["examples"] == 24
    assert heldout["candidate"]["loss"] < heldout["base"]["loss"] - 0.1

    adapter_dir = Path(first_run["adapter_dir"])
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    recorded = json.loads((adapter_dir / "ticketune_adapter.json").read_text())
    assert recorded["cycle_id"] == "c-test" and recorded["r"] == 8 and recorded["alpha"] == 16
    assert recorded["chat_template_sha256"] == hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    examples = tokenize_file(data_files["heldout"], tokenizer, 512).examples
    # reloaded with plain sdpa and scored on padded batches: the same loss as packed scoring in the worker
    scores = evaluate_examples(reloaded, examples, PADDED_BY_TWO, CPU, False, tokenizer.pad_token_id)
    assert scores["loss"] == pytest.approx(heldout["candidate"]["loss"], rel=1e-5)


def test_an_empty_eval_file_gives_no_examples_and_a_null_loss(first_run: dict[str, Any]) -> None:
    for model in ("candidate", "base"):
        assert first_run["eval"]["trusted"][model] == {
            "loss": None,
            "tokens": 0,
            "examples": 0,
            "per_example": [],
            "dropped_examples": 0,
        }


def test_warm_start_begins_from_the_init_adapter(
    first_run: dict[str, Any], tiny_model_dir: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    champion = first_run["adapter_dir"]
    spec = make_spec(
        tiny_model_dir,
        tmp_path / "out",
        data_files["train"],
        {"batch_heldout": data_files["heldout"]},
        init_adapter=champion,
        compare_adapters={"champion": champion},
    )
    spec["training"]["max_steps"] = 3
    champion_loss = first_run["eval"]["batch_heldout"]["candidate"]["loss"]

    # In process: the model the recipe starts training from scores exactly like the init adapter.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    heldout = tokenize_file(data_files["heldout"], tokenizer, 512)
    model = prepare_model(parse_spec(spec), CPU)
    options = parse_spec(spec).training
    before = evaluate_examples(model, heldout.examples, options, CPU, True, tokenizer.pad_token_id)["loss"]
    assert before == pytest.approx(champion_loss, rel=1e-5)
    # Scoring another adapter and the base beside it leaves the trained adapter as it was.
    evaluate_all(model, {"batch_heldout": heldout}, parse_spec(spec), CPU, tokenizer.pad_token_id)
    after = evaluate_examples(model, heldout.examples, options, CPU, True, tokenizer.pad_token_id)["loss"]
    assert after == before

    # Through the command line: the first step already sits at the champion's level, far below a fresh start.
    code, result, stderr = run_train_cli(spec, tmp_path / "spec.json")
    assert code == 0, stderr[-3000:]
    assert result["train"]["steps"] == 3 and result["train"]["init_adapter"] == champion
    assert result["train"]["loss_curve"][0][1] < first_run["train"]["loss_curve"][0][1] - 0.3
    heldout_scores = result["eval"]["batch_heldout"]
    assert heldout_scores["champion"]["loss"] == pytest.approx(champion_loss, rel=1e-5)
    assert heldout_scores["base"]["loss"] == pytest.approx(
        first_run["eval"]["batch_heldout"]["base"]["loss"], rel=1e-5
    )


def test_a_missing_base_model_exits_2_with_a_failed_result(
    data_files: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    spec = make_spec(missing, tmp_path / "out", data_files["train"], {})
    code, result, _ = run_train_cli(spec, tmp_path / "spec.json")
    assert code == 2
    assert result["status"] == "failed" and result["cycle_id"] == "c-test"
    assert str(missing) in result["error"] and "make-base-model" in result["error"]
