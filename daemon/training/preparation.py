"""The recipe's setup steps: the runtime (device, dtype, ranks), the tokenizer, and the model: the base
(quantised when asked) with its adapter, kernels, autocast and checkpointing plan; the auto settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from daemon.config import TrainingConfig
from daemon.training.adapters import attach_adapter, load_base
from daemon.training.attention import register_packed_attention
from daemon.training.auto_settings import BaseFacts, base_facts, cpu_has_bf16_units, cpu_precision, resolve_training
from daemon.training.distributed import World, init_world, shard_model
from daemon.training.lean_layers import plain_layers, use_lean_layers
from daemon.training.lora_linear import use_lean_lora
from daemon.training.memory_plan import (
    CheckpointPlan,
    decoder_layers,
    plan_checkpointing,
    plan_cpu_checkpointing,
    resolve_sizes,
    set_checkpointed,
    spread,
)
from daemon.training.spec import SpecError, TrainSpec

log = logging.getLogger(__name__)
CANDIDATE = "default"  # peft's name for the adapter being trained
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    world: World = field(default_factory=World)

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype == torch.float32 else "bf16"


def read_base_facts(spec: TrainSpec) -> BaseFacts:
    """The base's config and parameter count, for the auto settings (a SpecError when it cannot be read)."""
    _check_base_exists(spec.base_model)
    try:
        config = transformers.AutoConfig.from_pretrained(spec.base_model, revision=spec.base_revision)
    except (OSError, ValueError) as exc:
        raise SpecError(_base_load_message(spec.base_model, exc)) from None
    return base_facts(config)


def with_resolved_settings(spec: TrainSpec, runtime: Runtime, facts: BaseFacts) -> TrainSpec:
    """The spec with every `auto` training setting resolved for this device and base model (auto_settings.py)."""
    resolved = resolve_training(spec.training, facts, runtime.device)
    return spec.model_copy(update={"training": resolved})


def sized(settings: TrainingConfig, model: torch.nn.Module, runtime: Runtime) -> TrainingConfig:
    """`settings` with its auto values resolved for this model on this device (a no-op once resolved)."""
    if "auto" not in (settings.learning_rate, settings.epochs, settings.row_tokens, settings.loss_chunk_tokens):
        return settings
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    facts = BaseFacts(config=causal_lm.config, parameters=sum(p.numel() for p in causal_lm.parameters()))
    return resolve_training(settings, facts, runtime.device)


def select_runtime(requested: str, precision: str = "auto", facts: BaseFacts | None = None,
                   sharding: str = "none") -> Runtime:
    """Device, dtype and ranks (sharding "fsdp": the ranks shard the model). On CPU, precision auto is bf16
    only for a base `facts` describes as large enough on a CPU with AMX (auto_settings.cpu_precision);
    without facts it is fp32."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    use_cuda = requested in ("auto", "cuda") and torch.cuda.is_available()
    world = init_world(use_cuda, sharding)
    if use_cuda:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise SpecError("training.precision is 'bf16' but this GPU has no bf16; use 'auto' or 'fp32'")
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return Runtime(torch.device("cuda", world.local_rank), torch.bfloat16 if bf16 else torch.float32, world)
    if precision == "bf16" and not (cpu_has_bf16_units() or getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()):
        raise SpecError("training.precision 'bf16' on CPU needs bf16 instructions (AVX512-BF16 or AMX), which "
                        "this CPU lacks; use 'auto' or 'fp32'")
    chosen = cpu_precision(precision, facts) if facts is not None or precision != "auto" else "fp32"
    return Runtime(torch.device("cpu"), torch.bfloat16 if chosen == "bf16" else torch.float32, world)


def uses_packing(spec: TrainSpec) -> bool:
    """Prompt tuning's virtual tokens lead a row, so it trains on padded batches."""
    return spec.training.packing and spec.adapter.method != "prompt_tuning"


def load_tokenizer(spec: TrainSpec) -> PreTrainedTokenizerBase:
    _check_base_exists(spec.base_model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.base_model, revision=spec.base_revision)
    except (OSError, ValueError) as exc:
        raise SpecError(_base_load_message(spec.base_model, exc)) from None
    if not tokenizer.is_fast:
        raise SpecError(
            f"base model {spec.base_model} has no fast tokenizer (tokenizer.json), "
            "which assistant masking needs; use a model that ships one"
        )
    if not tokenizer.chat_template:
        raise SpecError(
            f"base model {spec.base_model} has no chat template; use an instruct/chat model "
            "or one made by `ticketune make-base-model`"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_model(spec: TrainSpec, runtime: Runtime) -> PeftModel:
    """The base (quantised when asked) with a trainable adapter: the init adapter or a fresh one.

    On CUDA: Liger's RMSNorm, SwiGLU and RoPE kernels where installed; elsewhere Llama-style norms and
    feed-forwards as autograd functions that keep less (lean_layers.py); everywhere each plain LoRA layer as
    one function (lora_linear.py); adapters with fp32 master weights whose matmuls run under the base's bf16
    autocast (losses.autocast_for); with gradient_checkpointing "auto", checkpointing on as few layers as the
    memory budget needs (memory_plan.py: measured on CUDA, estimated on CPU once the lean layers are known).
    The plan and the kernels are on the model as `ticketune_checkpointing` and `ticketune_kernels`. When the
    ranks shard the model (FSDP2), a float base is read into host memory and each layer moves to the GPU as a
    shard; gradient_checkpointing "auto" then checkpoints every layer on CUDA (the plan measures a whole model
    on one device)."""
    _check_base_exists(spec.base_model)
    settings = spec.training
    cuda = runtime.device.type == "cuda"
    sharded = runtime.world.sharded and spec.adapter.method != "prompt_tuning"  # a prompt-tuned compare adapter
    load_device = torch.device("cpu") if sharded and settings.quantization == "none" else runtime.device
    checkpointing = settings.gradient_checkpointing
    plan_on_cpu = checkpointing == "auto" and not cuda and uses_packing(spec)
    if checkpointing == "auto":
        checkpointing = cuda or plan_on_cpu  # on CPU the plan below then leaves as many layers whole as fit
    attention = register_packed_attention() if uses_packing(spec) else "sdpa"
    base = load_base(
        spec.base_model,
        spec.base_revision,
        device=load_device,
        dtype=runtime.dtype,
        quantization=settings.quantization,
        attn_implementation=attention,
        gradient_checkpointing=bool(checkpointing),
        liger=cuda,
    )
    kernels = list(getattr(base, "ticketune_kernels", []))
    if not sharded and not plain_layers():  # lean_layers.PLAIN_LAYERS_ENV says why not under FSDP2
        kernels += use_lean_layers(base)
    cpu_plan = None
    if plan_on_cpu:
        cpu_plan = plan_cpu_checkpointing(base.config, row_tokens=resolve_sizes(settings, runtime.device).row_tokens,
                                          precision=runtime.precision,
                                          lean={"lean_rms_norm", "lean_swiglu"} <= set(kernels))
    model = attach_adapter(base, spec.adapter, init_adapter=spec.init_adapter, seed=settings.seed)
    if use_lean_lora(model):
        kernels.append("lean_lora")
    if runtime.dtype != torch.float32:
        # every forward runs under autocast: peft's copy of each adapter input to its fp32 weights is waste
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    layers = len(decoder_layers(model))
    plan = CheckpointPlan(layers=layers, checkpointed=layers if checkpointing else 0,
                          reason=f"training.gradient_checkpointing: {settings.gradient_checkpointing}")
    if cpu_plan is not None and cpu_plan.layers == layers:
        set_checkpointed(decoder_layers(model), spread(cpu_plan.checkpointed, layers))
        plan = cpu_plan
    if settings.gradient_checkpointing == "auto" and cuda and uses_packing(spec) and not sharded:
        settings = sized(settings, model, runtime)
        try:
            plan = plan_checkpointing(model, row_tokens=settings.row_tokens, max_seq_len=settings.max_seq_len,
                                      cross_entropy=settings.cross_entropy, chunk_tokens=settings.loss_chunk_tokens,
                                      budget_gib=settings.memory_budget_gib, device=runtime.device)
        except torch.OutOfMemoryError:
            raise SpecError(
                f"a row of training.row_tokens={settings.row_tokens} tokens does not fit on this GPU even with "
                "every layer checkpointed; lower training.row_tokens or use training.quantization: nf4"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the plan is an optimisation: checkpoint everything instead
            log.warning("checkpointing plan failed (%s); checkpointing every layer", exc)
            set_checkpointed(decoder_layers(model), set(range(layers)))
            plan = CheckpointPlan(layers=layers, checkpointed=layers, reason=f"plan failed: {exc}"[:200])
    model.ticketune_checkpointing = plan.as_dict()
    model.ticketune_kernels = kernels
    if settings.compile:
        compile_layers(model)
    if sharded:
        shard_model(decoder_layers(model), model.get_base_model().get_decoder(), runtime.world, runtime.device,
                    runtime.dtype)
        model.to(runtime.device)  # what the body does not hold (the output head) follows its shards
    return model


def compile_layers(model: PeftModel) -> None:
    """Regional compilation: each decoder layer once (they share one graph), not the whole model."""
    body = getattr(model.get_base_model(), "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise SpecError("training.compile needs a decoder with a `model.layers` list; set training.compile: false")
    for layer in layers:
        layer.compile(dynamic=True)


def effective_max_seq_len(spec: TrainSpec, tokenizer: PreTrainedTokenizerBase) -> int:
    """The spec's limit, capped by the base's context length when the tokenizer declares a real one."""
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:
        return min(spec.training.max_seq_len, declared)
    return spec.training.max_seq_len


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _check_base_exists(base_model: str) -> None:
    looks_like_path = base_model.startswith(("/", ".")) or Path(base_model).exists()
    if looks_like_path and not Path(base_model).is_dir():
        raise SpecError(
            f"base model directory {base_model} does not exist; build it with "
            f"`ticketune make-base-model {base_model}` or point model.base at a model directory"
        )


def _base_load_message(base_model: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"base model {base_model} could not be loaded ({reason}); point model.base at a model directory "
        "or a hub id present in the local cache"
    )
