"""The adapter methods in peft terms: the base model load (full precision or NF4), a fresh or warm-started
adapter on it, and the merged full-weight export.

Supports LoRA (optionally rsLoRA), DoRA, IA3 and prompt tuning; QLoRA is an NF4 base with double
quantisation under LoRA or DoRA. Prompt tuning starts from embeddings of tokens sampled from the
base's vocabulary (peft's SAMPLE_VOCAB): unlike RANDOM it starts on the embedding manifold, and unlike
TEXT it needs no tokenizer path in adapter_config.json, so a saved adapter reloads anywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
    load_peft_weights,
    set_peft_model_state_dict,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from daemon.training.methods import UnsupportedAdapter, check_combination, check_servable
from daemon.training.spec import SpecError

# IA3 scales a feed-forward projection's input (the FFN activations, as in the paper) and every other
# targeted projection's output. Llama-family name; other families get output scaling everywhere. A
# pattern, not a list: peft saves "all-linear" expanded to full module names and then refuses a list of
# short names on reload as "not a subset of target_modules".
IA3_FEEDFORWARD_PATTERN = r"(.*\.)?down_proj"
PEFT_TYPE_METHODS = {"IA3": "ia3", "PROMPT_TUNING": "prompt_tuning"}

log = logging.getLogger(__name__)


def peft_config_for(adapter: Any, *, quantization: str = "none") -> PeftConfig:
    """The peft config for `adapter` (method, r, alpha, dropout, target_modules, use_rslora, num_virtual_tokens)."""
    try:
        check_combination(adapter.method, adapter.use_rslora, quantization)
    except UnsupportedAdapter as exc:
        raise SpecError(str(exc)) from None
    if adapter.method in ("lora", "dora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
            use_dora=adapter.method == "dora",
            use_rslora=adapter.use_rslora,
        )
    if adapter.method == "ia3":
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=adapter.target_modules,
            feedforward_modules=IA3_FEEDFORWARD_PATTERN,
        )
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=adapter.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )


def load_base(
    path: str | Path,
    revision: str | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    liger: bool = False,
) -> transformers.PreTrainedModel:
    """The base on `device`: in `dtype`, or NF4 with double quantisation computing in `dtype` (then frozen,
    its other parameters left in `dtype`). liger=True (for a model that trains on CUDA, wherever it is loaded)
    swaps in Liger's RMSNorm, SwiGLU and RoPE kernels where liger-kernel is installed and knows the model type
    (`model.ticketune_kernels` says which)."""
    device = torch.device(device)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": dtype, "attn_implementation": attn_implementation}
    if quantization == "nf4":
        _check_bitsandbytes(device)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = (
            {"": device.index if device.index is not None else torch.cuda.current_device()}
            if device.type == "cuda"
            else "cpu"
        )
    elif quantization != "none":
        raise SpecError(f"training.quantization {quantization!r} is not supported; use 'none' or 'nf4'")
    try:
        if quantization == "none":
            kwargs["config"] = _float_config(path, revision)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except ImportError as exc:
        if quantization != "nf4":
            raise
        raise SpecError(
            f"training.quantization: nf4 cannot load ({exc}); install bitsandbytes or set training.quantization: none"
        ) from None
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"base model {path} could not be loaded ({reason}); point model.base at a model directory "
            "or a hub id present in the local cache"
        ) from None
    if quantization == "nf4":
        if device.type == "cpu":
            _keep_cpu_4bit_layout(model)
        _freeze_for_kbit_training(model)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if quantization != "nf4":
        model = model.to(device)
    model.ticketune_kernels = apply_liger_kernels(model) if liger else []
    return model


def _float_config(path: str | Path, revision: str | None) -> transformers.PretrainedConfig:
    """The base's config, less a GGUF `quantization_config` that an older `make-base-model` left in the
    config of a directory it had dequantised: transformers would otherwise mark the float model quantized
    (and Trainer refuses to train such a model)."""
    config = transformers.AutoConfig.from_pretrained(str(path), revision=revision)
    quantization = getattr(config, "quantization_config", None)
    method = (quantization.get("quant_method") if isinstance(quantization, dict)
              else getattr(quantization, "quant_method", None))
    if str(getattr(method, "value", method)) == "gguf":
        del config.quantization_config
    return config


def apply_liger_kernels(model: transformers.PreTrainedModel) -> list[str]:
    """Liger's RMSNorm, SwiGLU and RoPE kernels on this model instance (the loss has its own switch,
    training.cross_entropy). Returns the kernels applied: none when liger-kernel is not installed, does
    not know the model type, or fails to apply (logged; the model then runs on its own modules)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as exc:  # noqa: BLE001 - an import of triton code can fail in many ways; training goes on
        log.info("liger kernels not used: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return []
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.info("liger kernels not used: liger-kernel has none for model type %s", model_type)
        return []
    try:
        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    except Exception as exc:  # noqa: BLE001
        log.warning("liger kernels could not be applied (%s); training on the model's own modules", exc)
        return []
    return ["rms_norm", "swiglu", "rope"]


def enable_checkpointing(model: transformers.PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing on every decoder layer: it needs no input that requires grad
    (so no enable_input_require_grads hook) and works under autocast; transformers 5.24 renamed the method."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _freeze_for_kbit_training(model: transformers.PreTrainedModel) -> None:
    """What QLoRA needs of an NF4 base, without peft's prepare_model_for_kbit_training: that casts every
    parameter that is not 4-bit (norms, embeddings, the output head) to fp32, so the hidden states, the
    attention and every 4-bit matmul's output (bitsandbytes returns its input's dtype) become fp32 and
    leave the bf16 kernels. Here they keep the compute dtype; the adapters keep fp32 master weights and
    the training loop runs under bf16 autocast (losses.autocast_for)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def attach_adapter(
    base: transformers.PreTrainedModel, adapter: Any, *, init_adapter: Path | None, seed: int
) -> PeftModel:
    """A trainable adapter on `base`: fresh from the config and the seed, or the saved `init_adapter`
    (whose r, alpha and targets then apply) when its method matches the configured one."""
    quantization = "nf4" if getattr(base, "is_loaded_in_4bit", False) else "none"
    config = peft_config_for(adapter, quantization=quantization)
    transformers.set_seed(seed)
    if init_adapter is None:
        return get_peft_model(base, config)
    saved = saved_method(init_adapter)
    if saved != adapter.method:
        raise SpecError(
            f"init adapter {init_adapter} was trained with adapter.method {saved!r} but the config says "
            f"{adapter.method!r}; set training.warm_start: fresh for one cycle to switch methods"
        )
    log.info("warm start from %s (its settings apply)", init_adapter)
    if adapter.method != "prompt_tuning":
        return PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    # peft's from_pretrained refuses is_trainable for prompt learning: build it from the saved config, then load
    saved_config = PeftConfig.from_pretrained(str(init_adapter))
    saved_config.inference_mode = False
    model = get_peft_model(base, saved_config)
    set_peft_model_state_dict(model, load_peft_weights(str(init_adapter)))
    return model


def saved_method(adapter_dir: Path) -> str:
    """The method of a saved adapter, from peft's adapter_config.json (always written, so the ground truth)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(
            f"adapter directory {adapter_dir} has no readable adapter_config.json ({exc}); "
            "point at a directory the worker saved"
        ) from None
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return "dora" if config.get("use_dora") else "lora"
    if peft_type in PEFT_TYPE_METHODS:
        return PEFT_TYPE_METHODS[peft_type]
    raise SpecError(
        f"adapter directory {adapter_dir} holds a {peft_type} adapter, which ticketune does not use; "
        "point at a lora, dora, ia3 or prompt_tuning adapter"
    )


def export_merged(base_path: str | Path, adapter_dir: Path, out_dir: Path, *, revision: str | None = None) -> Path:
    """Merges the adapter into the full-precision base (never an NF4 one) on the CPU and saves the model,
    in the base's own dtype, with the adapter's tokenizer (the base's when the adapter has none)."""
    try:
        check_servable(saved_method(adapter_dir), "merged")
    except UnsupportedAdapter as exc:
        raise SpecError(str(exc)) from None
    base = load_base(base_path, revision, device=torch.device("cpu"), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    stored_dtype = AutoConfig.from_pretrained(str(base_path), revision=revision).dtype
    if stored_dtype is not None:
        merged = merged.to(getattr(torch, stored_dtype) if isinstance(stored_dtype, str) else stored_dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    has_tokenizer = (Path(adapter_dir) / "tokenizer_config.json").exists()
    tokenizer_source = str(adapter_dir) if has_tokenizer else str(base_path)
    AutoTokenizer.from_pretrained(tokenizer_source, revision=None if has_tokenizer else revision).save_pretrained(
        str(out_dir)
    )
    return out_dir


def _keep_cpu_4bit_layout(model: torch.nn.Module) -> None:
    """Turns off bitsandbytes' AVX512-BF16 repacking of 4-bit weights, which it does in place on the first
    no-grad forward in eval mode: an inference speed-up that asserts out_features % 32 == 0 (the tiny
    model's 344 fails) and that CPU QLoRA, a test and demo path, does not need."""
    import bitsandbytes

    for module in model.modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _check_bitsandbytes(device: torch.device) -> None:
    if device.type not in ("cpu", "cuda"):
        raise SpecError(
            f"training.quantization: nf4 runs on cpu or cuda, not {device.type}; set training.quantization: none"
        )
    try:
        import bitsandbytes  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        raise SpecError(
            f"training.quantization: nf4 needs bitsandbytes, which cannot load here ({exc}); "
            "install bitsandbytes or set training.quantization: none"
        ) from None
