"""What the recipe leaves behind: the adapter directory (weights, tokenizer, ticketune_adapter.json) and the
probe's answers, from a fresh process that loads the adapter as a server would."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from daemon.training.contract import PROBE_FILE, PROBE_PROMPTS_FILE, PROBE_SAMPLES_FILE
from daemon.training.methods import describe
from daemon.training.preparation import CANDIDATE
from daemon.training.spec import TrainSpec

log = logging.getLogger(__name__)



# torchrun's variables: a probe started from rank 0 must not try to join the training's process group
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_WORLD_SIZE", "ROLE_NAME")


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
    if spec.probe.with_base:
        command.append("--with-base")
    if spec.answer_prompts:
        samples_file = spec.output_dir / PROBE_SAMPLES_FILE
        samples_file.write_text(json.dumps([p.model_dump(mode="json", exclude_none=True) for p in spec.answer_prompts]),
                                encoding="utf-8")
        command += ["--samples", str(samples_file), "--sample-max-new-tokens", str(spec.probe.answer_max_new_tokens)]
        if spec.probe.embedding_model:
            command += ["--embedding-model", spec.probe.embedding_model]
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC")}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log.info("probe started prompts=%d samples=%d compare=%s", len(spec.golden_prompts), len(spec.answer_prompts),
             ",".join(spec.compare_adapters) + (",base" if spec.probe.with_base else ""))
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
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, spec: TrainSpec, adapter_dir: Path,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Adapter weights (`weights` when given: the whole trainable state of a sharded model), the tokenizer
    (with its chat template) and ticketune_adapter.json."""
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(adapter_dir), selected_adapters=[CANDIDATE],
                          **({"state_dict": weights} if weights is not None else {}))
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
