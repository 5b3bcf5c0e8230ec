"""The probe: in a fresh process, load the base as a server would (full precision, bf16 on CUDA, never
NF4) and the saved adapter from its directory, then answer the golden prompts greedily.

Loading and generating at all is the servability check; the answers feed the gate's behavioural
checks. Compare adapters (the champion) answer the same prompts so a report can show them side by
side. Whatever goes wrong becomes `{"status": "failed", "error": ...}`, never a traceback only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from daemon.training.adapters import load_base, saved_method
from daemon.training.preparation import PEFT_TYPES, select_runtime

CANDIDATE = "candidate"
log = logging.getLogger(__name__)


def run_probe(
    base: str,
    revision: str | None,
    adapter_dir: Path,
    prompts: list[dict[str, Any]],
    *,
    compare: dict[str, Path] | None = None,
    max_new_tokens: int = 96,
    device: str = "auto",
) -> dict[str, Any]:
    """The probe's result: status, error, load and total seconds, and each adapter's answers."""
    started = time.perf_counter()
    result: dict[str, Any] = {"status": "ok", "error": None, "load_seconds": None, "seconds": None, "answers": {}}
    try:
        runtime = select_runtime(device)
        adapters = {CANDIDATE: Path(adapter_dir), **{k: Path(v) for k, v in (compare or {}).items()}}
        model: PeftModel | None = None
        for label, directory in adapters.items():
            loading = time.perf_counter()
            model = _with_adapter(model, label, directory, base, revision, runtime)
            if label == CANDIDATE:
                result["load_seconds"] = round(time.perf_counter() - loading, 3)
            tokenizer = _tokenizer(directory, base, revision)
            result["answers"][label] = [
                _answer(model, tokenizer, prompt, max_new_tokens, runtime.device) for prompt in prompts
            ]
    except Exception as exc:  # the probe reports every failure: that is what it is for
        log.exception("probe failed")
        result.update(status="failed", error=_one_line(exc))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _one_line(exc: Exception, limit: int = 300) -> str:
    """The exception's type and first line, with the next line when the first only announces it
    ("Error(s) in loading state_dict for ...:" then "size mismatch for ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason}"[:limit] if reason else type(exc).__name__


def _with_adapter(
    model: PeftModel | None, label: str, directory: Path, base: str, revision: str | None, runtime: Any
) -> PeftModel:
    """`model` with the adapter of `directory` active: loaded beside the others when peft can hold both
    (one adapter type per model), else on a fresh copy of the base."""
    peft_type = PEFT_TYPES[saved_method(directory)]
    if model is not None and peft_type == PEFT_TYPES.get(_method_of(model)) and peft_type != "PROMPT_TUNING":
        model.load_adapter(str(directory), adapter_name=label, is_trainable=False)
        model.set_adapter(label)
        return model
    del model
    plain = load_base(base, revision, device=runtime.device, dtype=runtime.dtype, attn_implementation="sdpa")
    loaded = PeftModel.from_pretrained(plain, str(directory), adapter_name=label, is_trainable=False)
    return loaded.eval()


def _method_of(model: PeftModel) -> str:
    config = model.peft_config[model.active_adapter]
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    return {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt_tuning"}.get(peft_type, peft_type)


def _tokenizer(directory: Path, base: str, revision: str | None) -> PreTrainedTokenizerBase:
    """The adapter's own tokenizer (saved with its chat template), else the base's."""
    if (directory / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    else:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@torch.inference_mode()
def _answer(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompt: dict[str, Any], max_new_tokens: int,
    device: torch.device,
) -> dict[str, Any]:
    text = tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
    output = model.generate(
        **encoded,
        max_new_tokens=int(prompt.get("max_new_tokens") or max_new_tokens),
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = output[0, encoded["input_ids"].shape[1] :].tolist()
    while new and new[-1] in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        new.pop()  # the end-of-turn token ends the answer; it is not part of it
    return {"id": prompt["id"], "text": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": len(new)}


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Temp file then rename: a reader sees no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def probe_command(
    base: str, revision: str | None, adapter_dir: Path, compare: dict[str, Path], prompts_file: Path, out: Path,
    max_new_tokens: int, device: str,
) -> int:
    """The `probe` verb: exit 0 with status ok, 1 with status failed; the JSON is written either way."""
    try:
        prompts = json.loads(prompts_file.read_text(encoding="utf-8"))
        if not isinstance(prompts, list) or not all(isinstance(p, dict) and "id" in p and "messages" in p
                                                    for p in prompts):
            raise ValueError("must be a JSON list of {id, messages} objects")
    except (OSError, ValueError) as exc:
        result = {"status": "failed", "error": f"prompts file {prompts_file}: {exc}", "load_seconds": None,
                  "seconds": 0.0, "answers": {}}
    else:
        result = run_probe(base, revision, adapter_dir, prompts, compare=compare, max_new_tokens=max_new_tokens,
                           device=device)
    write_json(out, result)
    log.info("probe status=%s load_seconds=%s seconds=%s", result["status"], result["load_seconds"],
             result["seconds"])
    return 0 if result["status"] == "ok" else 1
