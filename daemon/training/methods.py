"""Adapter methods the worker trains, which combinations it accepts, and where each can be served.

Light on purpose (no torch, transformers or peft): the service imports it to validate the config, to tag
model versions and to refuse a deployment before it is attempted.
"""

from __future__ import annotations

METHODS = ("lora", "dora", "ia3", "prompt_tuning")
QUANTIZATIONS = ("none", "nf4")
RSLORA_METHODS = ("lora", "dora")
NF4_METHODS = ("lora", "dora")  # QLoRA: a frozen NF4 base under a LoRA or DoRA adapter

# vLLM's runtime loading (/v1/load_lora_adapter) parses adapter_config.json as plain LoRA: it honours
# use_rslora, refuses use_dora ("vLLM does not yet support DoRA"), needs r and lora_alpha (IA3 has
# neither) and dropped prompt adapters in v0.10. A merged export folds weight deltas into the base; a
# prompt-tuning adapter adds virtual input tokens, which no weight can hold.
SERVING_TARGETS = {
    "vllm": ("lora",),
    "merged": ("lora", "dora", "ia3"),
}


class UnsupportedAdapter(ValueError):
    """A method, combination or serving target that cannot work; the message says what to change."""


def check_combination(method: str, use_rslora: bool, quantization: str) -> None:
    if method not in METHODS:
        raise UnsupportedAdapter(f"adapter.method {method!r} is not supported; use one of {', '.join(METHODS)}")
    if quantization not in QUANTIZATIONS:
        raise UnsupportedAdapter(
            f"training.quantization {quantization!r} is not supported; use one of {', '.join(QUANTIZATIONS)}"
        )
    if use_rslora and method not in RSLORA_METHODS:
        raise UnsupportedAdapter(
            f"adapter.use_rslora applies to lora and dora only; set it to false for adapter.method {method!r}"
        )
    if quantization == "nf4" and method not in NF4_METHODS:
        raise UnsupportedAdapter(
            f"training.quantization: nf4 (QLoRA) takes adapter.method lora or dora, not {method!r}; "
            "set training.quantization: none"
        )


def check_servable(method: str, target: str) -> None:
    if target not in SERVING_TARGETS:
        raise UnsupportedAdapter(f"serving target {target!r} is unknown; use one of {', '.join(SERVING_TARGETS)}")
    if method in SERVING_TARGETS[target]:
        return
    if target == "merged":
        raise UnsupportedAdapter(
            f"adapter.method {method!r} cannot be merged into the base weights (target 'merged'); "
            "train with adapter.method lora, dora or ia3 to export a merged model"
        )
    fix = (
        "serve it merged (`ticketune export VERSION --merged DIR`) or train with adapter.method: lora"
        if method in SERVING_TARGETS["merged"]
        else "train with adapter.method: lora, which vLLM loads at runtime"
    )
    raise UnsupportedAdapter(f"adapter.method {method!r} cannot be loaded by vLLM at runtime (target 'vllm'); {fix}")


def describe(method: str, use_rslora: bool, quantization: str) -> str:
    """The adapter tag stored on a model version: "lora", "lora+rslora", "qlora", "qdora+rslora", "ia3", ..."""
    check_combination(method, use_rslora, quantization)
    name = f"q{method}" if quantization == "nf4" else method
    return f"{name}+rslora" if use_rslora else name
