"""Each adapter method trains, saves and reloads on the tiny model; serving refusals; the merged export."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from daemon.training.adapters import attach_adapter, export_merged, load_base, peft_config_for, saved_method
from daemon.training.methods import UnsupportedAdapter, check_servable, describe
from daemon.training.spec import SpecError

CPU = torch.device("cpu")
TOKENS = torch.randint(4, 2048, (2, 24), generator=torch.Generator().manual_seed(0))


def adapter_settings(method: str, **overrides: object) -> SimpleNamespace:
    settings = {
        "method": method,
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "use_rslora": False,
        "num_virtual_tokens": 8,
    }
    return SimpleNamespace(**(settings | overrides))


def base(model_dir: Path, quantization: str = "none") -> torch.nn.Module:
    return load_base(model_dir, None, device=CPU, dtype=torch.float32, quantization=quantization)


def logits(model: torch.nn.Module) -> torch.Tensor:
    """Logits for TOKENS; prompt tuning's virtual-token positions at the front are dropped."""
    return model(input_ids=TOKENS, attention_mask=torch.ones_like(TOKENS), use_cache=False).logits[:, -TOKENS.size(1) :]


def loss(model: torch.nn.Module) -> torch.Tensor:
    out = logits(model)
    return F.cross_entropy(out[:, :-1].reshape(-1, out.size(-1)), TOKENS[:, 1:].reshape(-1))


def eval_loss(model: torch.nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return float(loss(model))


@pytest.mark.parametrize(
    ("method", "use_rslora", "quantization", "learning_rate"),
    [
        ("lora", False, "none", 1e-2),
        ("lora", True, "none", 1e-2),
        ("dora", False, "none", 1e-2),
        ("ia3", False, "none", 3e-2),
        ("prompt_tuning", False, "none", 3e-2),
        ("lora", False, "nf4", 1e-2),
    ],
    ids=["lora", "lora+rslora", "dora", "ia3", "prompt_tuning", "qlora"],
)
def test_method_trains_and_reloads_to_the_same_eval_loss(
    tiny_model_dir: Path, tmp_path: Path, method: str, use_rslora: bool, quantization: str, learning_rate: float
) -> None:
    settings = adapter_settings(method, use_rslora=use_rslora)
    model = attach_adapter(base(tiny_model_dir, quantization), settings, init_adapter=None, seed=0)
    before = eval_loss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    for _ in range(20):
        loss(model).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = eval_loss(model)
    assert trained < before - 0.5

    model.save_pretrained(tmp_path)
    assert saved_method(tmp_path) == method
    reloaded = attach_adapter(base(tiny_model_dir, quantization), settings, init_adapter=tmp_path, seed=1)
    # Also for QLoRA: NF4 quantisation of the same float32 checkpoint is deterministic, so the reloaded
    # base holds the very same 4-bit blocks and the loss agrees to float32 rounding.
    assert eval_loss(reloaded) == pytest.approx(trained, abs=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_scaling_is_alpha_over_sqrt_r_with_rslora(tiny_model_dir: Path, method: str, use_rslora: bool) -> None:
    settings = adapter_settings(method, r=4, alpha=8, use_rslora=use_rslora)
    model = attach_adapter(base(tiny_model_dir), settings, init_adapter=None, seed=0)
    scalings = [m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(scalings) == 28  # 7 projections x 4 layers
    assert set(scalings) == {8 / math.sqrt(4) if use_rslora else 8 / 4}


@pytest.mark.parametrize(
    ("method", "target"),
    [("dora", "vllm"), ("ia3", "vllm"), ("prompt_tuning", "vllm"), ("prompt_tuning", "merged")],
)
def test_check_servable_refuses_naming_method_and_target(method: str, target: str) -> None:
    with pytest.raises(UnsupportedAdapter, match=rf"'{method}'.*'{target}'"):
        check_servable(method, target)


def test_check_servable_accepts_what_the_target_loads() -> None:
    for method, target in [("lora", "vllm"), ("lora", "merged"), ("dora", "merged"), ("ia3", "merged")]:
        check_servable(method, target)


@pytest.mark.parametrize(
    ("method", "use_rslora", "quantization", "tag"),
    [
        ("lora", False, "none", "lora"),
        ("lora", True, "none", "lora+rslora"),
        ("lora", False, "nf4", "qlora"),
        ("dora", True, "nf4", "qdora+rslora"),
        ("ia3", False, "none", "ia3"),
        ("prompt_tuning", False, "none", "prompt_tuning"),
    ],
)
def test_describe_tags(method: str, use_rslora: bool, quantization: str, tag: str) -> None:
    assert describe(method, use_rslora, quantization) == tag


@pytest.mark.parametrize(
    ("settings", "quantization", "field"),
    [
        (adapter_settings("ia3", use_rslora=True), "none", "adapter.use_rslora"),
        (adapter_settings("prompt_tuning"), "nf4", "training.quantization"),
        (adapter_settings("vera"), "none", "adapter.method"),
    ],
)
def test_impossible_combinations_raise_spec_error(settings: SimpleNamespace, quantization: str, field: str) -> None:
    with pytest.raises(SpecError, match=field):
        peft_config_for(settings, quantization=quantization)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_export_merged_gives_the_logits_of_base_plus_adapter(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    model = attach_adapter(base(tiny_model_dir), adapter_settings(method), init_adapter=None, seed=0)
    with torch.no_grad():  # a fresh adapter is the identity; move it away so merging has something to merge
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "adapter")
    merged_dir = export_merged(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    model.eval()
    with torch.no_grad():
        expected, actual = logits(model), logits(merged)
        assert not torch.allclose(expected, logits(base(tiny_model_dir).eval()), atol=1e-2)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert (merged_dir / "tokenizer.json").exists()


def test_export_merged_refuses_prompt_tuning(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = attach_adapter(base(tiny_model_dir), adapter_settings("prompt_tuning"), init_adapter=None, seed=0)
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(SpecError, match="'prompt_tuning'.*'merged'"):
        export_merged(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_warm_start_with_another_method_raises(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = attach_adapter(base(tiny_model_dir), adapter_settings("lora"), init_adapter=None, seed=0)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with pytest.raises(SpecError, match="'lora'.*'dora'.*training.warm_start: fresh"):
        attach_adapter(base(tiny_model_dir), adapter_settings("dora"), init_adapter=tmp_path, seed=0)


def test_nf4_without_bitsandbytes_says_how_to_fix(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(SpecError, match="install bitsandbytes or set training.quantization: none"):
        base(tiny_model_dir, "nf4")
