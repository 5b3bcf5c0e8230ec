"""The training settings left `auto`, resolved in the worker from the base model and the device.

- learning_rate and epochs, from the base's parameter count: under SMALL_BASE_PARAMS (the ~1M-parameter
  Llama that `make-base-model` builds from scratch for the demo and the tests) 0.01 for 6 epochs, which
  such a model needs to learn anything in one cycle; otherwise 2e-4 for 2 epochs, the usual LoRA values
  for a pretrained model (the tiny model's would wreck what it knows).
- precision: bf16 on CUDA where the card has it; on CPU, bf16 where the CPU has AMX (its bf16 matrix
  units ran a LoRA step of SmolLM2-135M 2.4 times as fast as fp32, bench/RESULTS.md) and the base has at
  least SMALL_BASE_PARAMS parameters (a tiny model's step is overhead, not matrix products); else fp32.
- row_tokens and loss_chunk_tokens: memory_plan.resolve_sizes; gradient_checkpointing auto is planned
  when the model is prepared (memory_plan: measured on CUDA, estimated on CPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from daemon.config import TrainingConfig
from daemon.training.memory_plan import resolve_sizes

SMALL_BASE_PARAMS = 20_000_000
SMALL_BASE_LR, SMALL_BASE_EPOCHS = 0.01, 6.0
PRETRAINED_LR, PRETRAINED_EPOCHS = 2e-4, 2.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseFacts:
    """What the auto settings need to know of the base: its config and its parameter count."""

    config: Any
    parameters: int | None  # None when the architecture cannot be built on the meta device

    @property
    def small(self) -> bool:
        return self.parameters is not None and self.parameters < SMALL_BASE_PARAMS


def base_facts(config: Any) -> BaseFacts:
    """The parameter count of the model `config` describes, built on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        parameters = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # noqa: BLE001 - a custom architecture: the defaults for a pretrained model apply
        log.info("base parameter count unknown (%s); auto settings assume a pretrained model", exc)
        parameters = None
    return BaseFacts(config=config, parameters=parameters)


def cpu_has_bf16_units() -> bool:
    """AMX tiles (Intel Sapphire Rapids and later): the CPUs where bf16 matrix products beat fp32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def cpu_precision(requested: str, facts: BaseFacts | None) -> str:
    """`bf16` or `fp32` for training on CPU (the module docstring says when auto picks bf16)."""
    if requested != "auto":
        return requested
    large = facts is None or not facts.small
    return "bf16" if large and cpu_has_bf16_units() else "fp32"


def resolve_training(settings: TrainingConfig, facts: BaseFacts, device: torch.device) -> TrainingConfig:
    """`settings` with learning_rate, epochs, row_tokens and loss_chunk_tokens as numbers."""
    updates: dict[str, Any] = {}
    if settings.learning_rate == "auto":
        updates["learning_rate"] = SMALL_BASE_LR if facts.small else PRETRAINED_LR
    if settings.epochs == "auto":
        updates["epochs"] = SMALL_BASE_EPOCHS if facts.small else PRETRAINED_EPOCHS
    if updates:
        log.info("training auto settings for a base of %s parameters: %s",
                 "unknown" if facts.parameters is None else f"{facts.parameters / 1e6:.1f}M", updates)
    resolved = settings.model_copy(update=updates)
    return resolve_sizes(resolved, device)


def resolved_report(settings: TrainingConfig, facts: BaseFacts, precision: str) -> dict[str, Any]:
    """The `train.settings` part of the result: what training ran with, each auto resolved."""
    return {
        "learning_rate": settings.learning_rate,
        "epochs": settings.epochs,
        "row_tokens": settings.row_tokens,
        "loss_chunk_tokens": settings.loss_chunk_tokens,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "precision": precision,
        "base_parameters": facts.parameters,
    }
