"""Correctness of the training engine on CUDA: what the speed figures are worth.

Checks, each on the engine's own model preparation (prepare_model) of a random Llama-shaped base:
  isolation        packed rows under the varlen kernel: changing one example's tokens moves no other
                   example's loss (bitwise, or within --isolation-tol), and moves its own;
  packed_padded    the same examples packed (varlen) and padded (sdpa, one row each) give the same
                   per-example losses and the same LoRA gradients (relative error of the gradient vector);
  liger_sum        Liger's fused linear cross-entropy (sum) equals the chunked cross-entropy;
  attention_path   a training step took the varlen kernel and never the per-example loop, in bf16 LoRA
                   and in QLoRA (NF4) when bitsandbytes loads; adapters keep fp32 weights, the hidden
                   states are bf16, and QLoRA's norms and embeddings stay bf16.
A check that cannot run here (no liger-kernel, no bitsandbytes, CPU) is reported "not run" with the
reason: never a pass. `--smoke` runs every check that applies on CPU with a tiny shape, in fp32 and
tight tolerances, in seconds. Exit status 1 when a check that ran failed. The last line is JSON.

    python bench/gpu_check.py [--smoke] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_bench import LORA, PAD_ID, SHAPES, random_model_dir, synthetic_examples  # noqa: E402

from daemon.config import TrainingConfig  # noqa: E402
from daemon.training.attention import reset_path_counts  # noqa: E402
from daemon.training.chat_examples import IGNORE_INDEX, TokenizedExample  # noqa: E402
from daemon.training.losses import _liger_installed, token_loss_sums  # noqa: E402
from daemon.training.packing import collate_packed, collate_padded  # noqa: E402
from daemon.training.preparation import prepare_model, select_runtime  # noqa: E402
from daemon.training.spec import TrainSpec  # noqa: E402
from daemon.training.train_loop import train_adapter  # noqa: E402

SHAPES["check"] = {"hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 4,
                   "intermediate_size": 2816, "vocab_size": 32000, "tie_word_embeddings": False}
# bf16 on CUDA; fp32 on CPU. Isolation (relative to the largest loss sum) is exact on CPU; on CUDA only the
# order of the atomic adds that sum each example's token losses may differ (about 1e-7).
TOLERANCES = {
    "cuda": {"isolation": 1e-6, "loss_abs": 0.03, "grad_rel": 0.03, "liger_rel": 5e-3},
    "cpu": {"isolation": 0.0, "loss_abs": 1e-4, "grad_rel": 1e-4, "liger_rel": 1e-5},
}


def build(model_dir: Path, device: str, **training: Any):
    settings = TrainingConfig.model_validate({"device": device, "max_seq_len": 512, "row_tokens": 4096,
                                             "gradient_checkpointing": False, "seed": 0, **training})
    runtime = select_runtime(settings.device, settings.precision)
    spec = TrainSpec(cycle_id="check", base_model=str(model_dir), output_dir=model_dir / "unused",
                     train_file=model_dir / "unused.jsonl", adapter=LORA, training=settings)
    model = prepare_model(spec, runtime)
    _randomise_lora_b(model)
    return model, runtime, settings


def _randomise_lora_b(model: torch.nn.Module) -> None:
    """LoRA B starts at zero, which would make every A-gradient zero and the adapters invisible."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def check_isolation(model, runtime, examples, tol: float) -> dict[str, Any]:
    changed = 2
    altered = list(examples)
    ids = list(examples[changed].input_ids)
    vocab = model.get_base_model().get_input_embeddings().weight.shape[0]
    ids[len(ids) // 2 :] = [(token * 7 + 3) % (vocab - 1) + 1 for token in ids[len(ids) // 2 :]]
    labels = [IGNORE_INDEX if label == IGNORE_INDEX else token for label, token in zip(
        examples[changed].labels, ids, strict=True)]
    altered[changed] = TokenizedExample(examples[changed].ticket_id, ids, labels)
    with torch.no_grad():
        before, _ = token_loss_sums(model, collate_packed(examples).to(runtime.device), cross_entropy="chunked")
        after, _ = token_loss_sums(model, collate_packed(altered).to(runtime.device), cross_entropy="chunked")
    others = [i for i in range(len(examples)) if i != changed]
    scale = float(before.abs().max())
    moved = max(float((before[i] - after[i]).abs()) for i in others) / scale
    own = float((before[changed] - after[changed]).abs()) / scale
    return {"passed": moved <= tol and own > 1e-3, "max_other_change_rel": moved, "own_change_rel": own,
            "examples": len(examples), "tolerance": tol}


def check_packed_padded(model, runtime, examples, tols: dict[str, float]) -> dict[str, Any]:
    causal_lm = model.get_base_model()
    packed_attention = causal_lm.config._attn_implementation
    results = {}
    for layout in ("packed", "padded"):
        if layout == "padded":
            causal_lm.set_attn_implementation("sdpa")
        try:
            model.zero_grad(set_to_none=True)
            batch = collate_packed(examples) if layout == "packed" else collate_padded(examples, PAD_ID)
            sums, counts = token_loss_sums(model, batch.to(runtime.device), cross_entropy="chunked")
            sums.sum().backward()
            grads = torch.cat([p.grad.float().reshape(-1) for p in model.parameters() if p.requires_grad])
            results[layout] = ((sums / counts).detach().float().cpu(), grads)
        finally:
            causal_lm.set_attn_implementation(packed_attention)
    model.zero_grad(set_to_none=True)
    loss_diff = float((results["packed"][0] - results["padded"][0]).abs().max())
    grad_packed, grad_padded = results["packed"][1], results["padded"][1]
    grad_rel = float((grad_packed - grad_padded).norm() / grad_padded.norm().clamp_min(1e-30))
    return {"passed": loss_diff <= tols["loss_abs"] and grad_rel <= tols["grad_rel"],
            "max_loss_diff": loss_diff, "grad_rel_error": grad_rel, "grad_norm": float(grad_padded.norm()),
            "tolerance_loss": tols["loss_abs"], "tolerance_grad": tols["grad_rel"]}


def check_liger(model, runtime, examples, tol: float) -> dict[str, Any]:
    if runtime.device.type != "cuda":
        return {"passed": None, "not_run": "Liger's kernels need CUDA"}
    if not _liger_installed():
        return {"passed": None, "not_run": "liger-kernel is not installed"}
    batch = collate_packed(examples).to(runtime.device)
    with torch.no_grad():
        chunked, _ = token_loss_sums(model, batch, cross_entropy="chunked", per_example=False)
        liger, _ = token_loss_sums(model, batch, cross_entropy="liger", per_example=False)
    relative = float((liger - chunked).abs() / chunked.abs())
    return {"passed": relative <= tol, "chunked": float(chunked), "liger": float(liger),
            "rel_diff": relative, "tolerance": tol}


def check_paths(model_dir: Path, device: str, examples, quantization: str) -> dict[str, Any]:
    if quantization == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return {"passed": None, "not_run": f"bitsandbytes does not load ({str(exc).splitlines()[0]})"}
    model, runtime, settings = build(model_dir, device, quantization=quantization,
                                     gradient_checkpointing="auto" if device == "cuda" else False)
    hidden_dtypes = set()
    layers = model.get_base_model().model.layers
    handle = layers[0].register_forward_hook(lambda _m, _i, out: hidden_dtypes.add(
        str((out[0] if isinstance(out, tuple) else out).dtype)))
    reset_path_counts()
    try:
        train_adapter(model, examples, settings.model_copy(update={"max_steps": 2}), runtime,
                      pad_token_id=PAD_ID, packing=True)
    finally:
        handle.remove()
    counts = reset_path_counts()
    adapter_dtypes = sorted({str(p.dtype) for n, p in model.named_parameters() if p.requires_grad})
    base_dtypes = sorted({str(p.dtype) for n, p in model.named_parameters()
                          if not p.requires_grad and p.__class__.__name__ != "Params4bit"})
    want = "torch.bfloat16" if runtime.dtype == torch.bfloat16 else "torch.float32"
    expected_path = "varlen" if runtime.device.type == "cuda" else "segment_loop"
    ok = (counts[expected_path] > 0 and (expected_path == "segment_loop" or counts["segment_loop"] == 0)
          and adapter_dtypes == ["torch.float32"] and hidden_dtypes == {want} and base_dtypes == [want])
    return {"passed": ok, "attention_calls": counts, "adapter_dtypes": adapter_dtypes,
            "hidden_dtypes": sorted(hidden_dtypes), "base_dtypes": base_dtypes,
            "kernels": getattr(model, "ticketune_kernels", []),
            "checkpointing": getattr(model, "ticketune_checkpointing", None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, fp32")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if args.smoke:
        device, dtype, shape = "cpu", torch.float32, "tiny"
    elif torch.cuda.is_available():
        device, dtype, shape = "cuda", torch.bfloat16, "check"
    else:
        raise SystemExit("no CUDA device visible; run on the GPU machine, or pass --smoke for the CPU check")
    tols = TOLERANCES[device]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ticketune-gpu-check-") as scratch:
        cache = args.cache_dir or Path(scratch)
        cache.mkdir(parents=True, exist_ok=True)
        model_dir = random_model_dir(shape, cache, torch.device(device), dtype)
        vocab = SHAPES[shape]["vocab_size"]
        examples = synthetic_examples(6, 60 if args.smoke else 300, 512, vocab, seed=3)
        train_examples = synthetic_examples(64, 60 if args.smoke else 300, 512, vocab, seed=4)
        checks = {
            "isolation": lambda m, r: check_isolation(m, r, examples, tols["isolation"]),
            "packed_padded": lambda m, r: check_packed_padded(m, r, examples, tols),
            "liger_sum": lambda m, r: check_liger(m, r, examples, tols["liger_rel"]),
        }
        model = runtime = None
        for name, check in checks.items():
            started = time.perf_counter()
            try:
                if model is None:
                    model, runtime, _ = build(model_dir, device)
                results[name] = check(model, runtime)
            except Exception as exc:  # noqa: BLE001 - one check's failure is its own result
                results[name] = {"passed": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                traceback.print_exc()
            results[name]["seconds"] = round(time.perf_counter() - started, 2)
            print(f"[{name}] {json.dumps(results[name])}", flush=True)
        del model
        for name, quantization in (("attention_path_bf16_lora", "none"), ("attention_path_qlora", "nf4")):
            started = time.perf_counter()
            try:
                results[name] = check_paths(model_dir, device, train_examples, quantization)
            except Exception as exc:  # noqa: BLE001
                results[name] = {"passed": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                traceback.print_exc()
            results[name]["seconds"] = round(time.perf_counter() - started, 2)
            print(f"[{name}] {json.dumps(results[name])}", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    failed = [name for name, result in results.items() if result.get("passed") is False]
    not_run = [name for name, result in results.items() if result.get("passed") is None]
    line = {"gpu_check": "failed" if failed else "passed", "failed": failed, "not_run": not_run,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"}
    if args.json_out:
        args.json_out.write_text(json.dumps({"results": results, **line}, indent=2) + "\n")
    print(json.dumps(line))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
