"""The probe (a fresh process that loads base + saved adapter as a server would and answers golden prompts
greedily), its wiring into the training recipe, and the general-text eval set of the forgetting guard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_training import REPO_ROOT, SYSTEM, make_spec, run_train_cli, support_examples, write_jsonl
from transformers import AutoTokenizer

from daemon.gate.golden import general_text_path, load_golden, spec_prompts
from daemon.training.adapters import attach_adapter, load_base
from daemon.training.chat_examples import IGNORE_INDEX
from daemon.training.evaluation import tokenize_general_text
from daemon.training.outputs import probe_adapter
from daemon.training.spec import parse_spec

MAX_NEW_TOKENS = 12
PROMPTS = [
    {"id": "refund", "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": "Hello, I want a refund for order 1182."}]},
    {"id": "login", "messages": [{"role": "user", "content": "I cannot sign in, I forgot my password."}],
     "max_new_tokens": 5},
]


def save_adapter(model_dir: Path, out: Path, method: str, perturb: float = 0.0) -> Path:
    settings = SimpleNamespace(method=method, r=4, alpha=8, dropout=0.0, target_modules="all-linear",
                               use_rslora=False, num_virtual_tokens=4)
    model = attach_adapter(load_base(model_dir, None, device=torch.device("cpu"), dtype=torch.float32), settings,
                           init_adapter=None, seed=0)
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.add_(perturb * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe-adapters")
    found = {
        "candidate": save_adapter(tiny_model_dir, root / "candidate", "lora"),  # B = 0: answers as the base does
        "champion": save_adapter(tiny_model_dir, root / "champion", "lora", perturb=0.5),
        "prompt_tuning": save_adapter(tiny_model_dir, root / "prompt_tuning", "prompt_tuning"),
    }
    broken = shutil.copytree(found["candidate"], root / "broken")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))  # weights saved with r=4
    found["broken"] = broken
    return found


def run_probe_cli(model_dir: Path, adapter: Path, out: Path, *compare: str) -> tuple[int, dict, float]:
    prompts = out.parent / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS), encoding="utf-8")
    command = [sys.executable, "-m", "daemon.training", "probe", "--base", str(model_dir), "--adapter", str(adapter),
               "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS),
               "--device", "cpu"]
    for item in compare:
        command += ["--compare", item]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    return completed.returncode, json.loads(out.read_text(encoding="utf-8")), wall


def base_greedy(model_dir: Path, prompt: dict, max_new_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_base(model_dir, None, device=torch.device("cpu"), dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_probe_loads_each_adapter_in_a_fresh_process_and_answers_greedily(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    code, result, wall = run_probe_cli(tiny_model_dir, adapters["candidate"], tmp_path / "probe.json",
                                       f"champion={adapters['champion']}", f"pt={adapters['prompt_tuning']}")
    assert code == 0 and result["status"] == "ok" and result["error"] is None, result
    assert set(result["answers"]) == {"candidate", "champion", "pt"}
    for answers in result["answers"].values():
        assert [a["id"] for a in answers] == ["refund", "login"]
        assert 0 < answers[0]["new_tokens"] <= MAX_NEW_TOKENS and 0 < answers[1]["new_tokens"] <= 5
    candidate = result["answers"]["candidate"]
    # a zero LoRA is the base: the probe's greedy answer is the base's own, through the chat template
    assert candidate[0]["text"] == base_greedy(tiny_model_dir, PROMPTS[0], MAX_NEW_TOKENS)
    assert result["answers"]["champion"][0]["text"] != candidate[0]["text"]
    assert 0 < result["load_seconds"] <= result["seconds"] < wall
    print(f"probe wall time {wall:.2f} s, in process {result['seconds']} s, load {result['load_seconds']} s")


def test_an_adapter_that_does_not_load_is_a_failed_probe_with_its_error(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    code, result, _ = run_probe_cli(tiny_model_dir, adapters["broken"], tmp_path / "probe.json")
    assert code == 1 and result["status"] == "failed" and result["answers"] == {}
    assert "size mismatch" in result["error"] and result["error"].startswith("RuntimeError: ")


def test_general_text_is_scored_in_labelled_windows_of_plain_text(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    general = tokenize_general_text(general_text_path(None), tokenizer, window=96)
    examples = general.examples
    assert len(examples) > 20 and [e.ticket_id for e in examples[:2]] == ["general-0000", "general-0001"]
    for example in examples:
        assert len(example.input_ids) <= 96 and example.input_ids[0] == tokenizer.bos_token_id
        assert example.labels[0] == IGNORE_INDEX and example.labels[1:] == example.input_ids[1:]
    text = "".join(tokenizer.decode(e.input_ids[1:]) for e in examples)
    assert text.startswith("When in the Course of human events") and "Call me Ishmael." in text
    assert "<|user|>" not in text and text.rstrip().endswith("honour and reputation.")


def test_the_recipe_scores_general_text_and_attaches_the_probe_result(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", support_examples(24, seed=3, prefix="t"))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", support_examples(8, seed=4, prefix="h"))
    golden = load_golden(None, "demo")
    spec = make_spec(tiny_model_dir, tmp_path / "out", train, {"trusted": heldout},
                     general_text_file=str(general_text_path(None)), golden_prompts=spec_prompts(golden, SYSTEM),
                     probe={"enabled": True, "max_new_tokens": 8})
    spec["training"].update(max_steps=2, epochs=1.0)
    code, result, stderr = run_train_cli(spec, tmp_path / "spec.json")
    assert code == 0, stderr[-3000:]
    general = result["eval"]["general"]
    assert set(general) == {"candidate", "base"} and general["candidate"]["examples"] == general["base"]["examples"] > 5
    assert general["base"]["per_example"][0][0] == "general-0000" and general["base"]["loss"] > 0
    probe = result["probe"]
    assert probe["status"] == "ok" and probe["wall_seconds"] >= probe["seconds"]
    assert [a["id"] for a in probe["answers"]["candidate"]] == [p.id for p in golden.prompts]
    assert all(0 < a["new_tokens"] <= 8 for a in probe["answers"]["candidate"])
    assert "probe done status=ok" in stderr


def test_the_probe_is_off_unless_enabled_and_a_hung_probe_is_a_failed_one(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", support_examples(4, seed=3, prefix="t"))
    raw = make_spec(tiny_model_dir, tmp_path / "out", train, {}, golden_prompts=PROMPTS)
    assert probe_adapter(parse_spec(raw), adapters["candidate"]) == {"status": "off"}
    hung = parse_spec({**raw, "probe": {"enabled": True, "timeout_seconds": 1}})
    (tmp_path / "out").mkdir()
    started = time.perf_counter()
    failed = probe_adapter(hung, adapters["candidate"])
    assert failed["status"] == "failed" and failed["error"] == "the probe did not finish within 1 s"
    assert time.perf_counter() - started < 10
    with pytest.raises(Exception, match="probe.enabled needs golden_prompts"):
        parse_spec({**raw, "golden_prompts": None, "probe": {"enabled": True}})
    with pytest.raises(Exception, match="golden_prompts.0.messages"):
        parse_spec({**raw, "golden_prompts": [{"id": "x", "messages": "hi"}]})
