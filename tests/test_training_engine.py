"""The training loop: resume after a kill, data parallel = one process, FSDP2 = one process (LoRA and QLoRA),
budgets, early stop, switches that must not change the maths (gradient checkpointing, chunked cross-entropy),
and the progress file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_training import REPO_ROOT, make_spec, support_examples, write_jsonl
from transformers import AutoTokenizer

from daemon.config import TrainingConfig
from daemon.training.chat_examples import tokenize_file
from daemon.training.lean_layers import PLAIN_LAYERS_ENV
from daemon.training.preparation import Runtime, prepare_model
from daemon.training.spec import parse_spec
from daemon.training.train_loop import plan_from, total_steps_for, train_adapter

CPU = Runtime(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def engine_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-data")
    return {
        "train": write_jsonl(root / "train.jsonl", support_examples(160, seed=11, prefix="t")),
        "validation": write_jsonl(root / "validation.jsonl", support_examples(24, seed=12, prefix="v")),
        "heldout": write_jsonl(root / "heldout.jsonl", support_examples(16, seed=13, prefix="h")),
    }


def engine_spec(tiny_model_dir: Path, data: dict[str, Path], out: Path, **training: Any) -> dict[str, Any]:
    spec = make_spec(tiny_model_dir, out / "out", data["train"], {"heldout": data["heldout"]})
    spec.update(snapshot_id="snap-1", checkpoint_dir=str(out / "checkpoints"),
                progress_file=str(out / "out" / "progress.json"))
    spec["adapter"]["dropout"] = 0.0
    spec["training"].update({"row_tokens": 512, "max_steps": 24, "learning_rate": 0.003,
                             "checkpoint_every_steps": 4, **training})
    return spec


def start_worker(
    spec: dict[str, Any], spec_path: Path, *, nproc: int = 1, threads: int | None = None, plain: bool = False
) -> subprocess.Popen:
    """plain: without the lean norms, feed-forwards and fused loss, which FSDP2 runs without."""
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    if plain:
        env[PLAIN_LAYERS_ENV] = "1"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "daemon.training", "train", "--spec", str(spec_path)]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "daemon.training", "train", "--spec", str(spec_path)]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return json.loads((Path(spec["output_dir"]) / "result.json").read_text(encoding="utf-8")), output


def adapter_weights(result: dict[str, Any]) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result["adapter_dir"]) / "adapter_model.safetensors"))


def losses(curve: list[list[float]]) -> list[float]:
    return [loss for _, loss in curve]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"largest difference {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("uninterrupted")
    spec = engine_spec(tiny_model_dir, engine_data, root)
    result, _ = finish(start_worker(spec, root / "spec.json"), spec)
    return result


def test_a_killed_worker_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_run_ends(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    spec = engine_spec(tiny_model_dir, engine_data, tmp_path)
    checkpoints = Path(spec["checkpoint_dir"])
    proc = start_worker(spec, tmp_path / "spec.json")
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-*/state.json")):
        assert proc.poll() is None, "the worker ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (Path(spec["output_dir"]) / "result.json").exists()
    saved = sorted(checkpoints.glob("step-*"))
    assert saved, "the kill must leave the checkpoint it had written"

    resumed, log_text = finish(start_worker(spec, tmp_path / "spec.json"), spec)
    train = resumed["train"]
    assert train["resumed_from_step"] is not None and 4 <= train["resumed_from_step"] < 24
    assert "resumed from checkpoint" in log_text
    assert train["steps"] == 24 and [s for s, _ in train["loss_curve"]] == list(range(1, 25))
    assert losses(train["loss_curve"]) == pytest.approx(losses(uninterrupted["train"]["loss_curve"]), abs=1e-4)
    assert_same_weights(adapter_weights(resumed), adapter_weights(uninterrupted), atol=1e-5)
    assert resumed["eval"]["heldout"]["candidate"]["loss"] == pytest.approx(
        uninterrupted["eval"]["heldout"]["candidate"]["loss"], rel=1e-5)


def test_checkpoints_of_another_snapshot_are_not_resumed(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path
) -> None:
    first = engine_spec(tiny_model_dir, engine_data, tmp_path, max_steps=8)
    finish(start_worker(first, tmp_path / "spec.json"), first)
    assert list(Path(first["checkpoint_dir"]).glob("step-*"))
    other = {**first, "snapshot_id": "snap-2"}
    result, log_text = finish(start_worker(other, tmp_path / "spec.json"), other)
    assert result["train"]["resumed_from_step"] is None
    assert "belong to another run (snapshot_id differs" in log_text


# three rows a step over two ranks: one rank trains two rows, the other one (and, under FSDP, a pass weighted 0)
TWO_RANK_RUN = {"rows_per_step": 3, "max_steps": 6}


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("one-process")
    spec = engine_spec(tiny_model_dir, engine_data, root, **TWO_RANK_RUN)
    result, _ = finish(start_worker(spec, root / "spec.json", threads=1), spec)
    return result


def test_two_gloo_processes_train_the_same_adapter_as_one(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path, one_process: dict[str, Any]
) -> None:
    single = one_process
    double_spec = engine_spec(tiny_model_dir, engine_data, tmp_path, **TWO_RANK_RUN)
    double, _ = finish(start_worker(double_spec, tmp_path / "spec.json", nproc=2, threads=1), double_spec)
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert double["train"]["tokens"] == single["train"]["tokens"]
    assert losses(double["train"]["loss_curve"]) == pytest.approx(losses(single["train"]["loss_curve"]), abs=1e-4)
    # float sums in another order, through six Adam steps: equal to about 1e-5 (weights are ~1e-2)
    assert_same_weights(adapter_weights(double), adapter_weights(single), atol=1e-4)
    assert double["eval"]["heldout"]["candidate"]["loss"] == pytest.approx(
        single["eval"]["heldout"]["candidate"]["loss"], rel=1e-4)


def assert_same_adapter_to_fp32_rounding(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Every LoRA tensor within rtol 1e-5: the same sums in another order (two ranks' partial gradients) through
    six Adam steps differ by ~5e-8 (|w| ~ 1e-2); atol 1e-7 covers entries near zero, where rtol means nothing."""
    assert a.keys() == b.keys() and len(a) == 56  # lora_A and lora_B of 7 linear layers in each of 4 layers
    for name, weight in b.items():
        torch.testing.assert_close(a[name], weight, rtol=1e-5, atol=1e-7, msg=name)


def fsdp_trains_as_one_process(spec: dict[str, Any], spec_path: Path, one: dict[str, Any]) -> None:
    """FSDP2 over two gloo ranks against one process; then, rerun, it resumes from the step-4 checkpoint (saved
    whole from the shards, loaded back into them with the optimizer's moments) and ends in the same place."""
    sharded, _ = finish(start_worker(spec, spec_path, nproc=2, threads=1), spec)
    assert sharded["train"]["sharding"] == "fsdp" and sharded["world_size"] == 2
    assert sharded["train"]["tokens"] == one["train"]["tokens"]
    assert losses(sharded["train"]["loss_curve"]) == pytest.approx(losses(one["train"]["loss_curve"]), abs=1e-5)
    assert_same_adapter_to_fp32_rounding(adapter_weights(sharded), adapter_weights(one))
    assert sharded["eval"]["heldout"]["candidate"]["loss"] == pytest.approx(
        one["eval"]["heldout"]["candidate"]["loss"], rel=1e-5)
    resumed, _ = finish(start_worker(spec, spec_path, nproc=2, threads=1), spec)
    assert resumed["train"]["resumed_from_step"] == 4 and resumed["train"]["steps"] == 6
    assert_same_adapter_to_fp32_rounding(adapter_weights(resumed), adapter_weights(one))


def test_fsdp2_across_two_gloo_processes_trains_and_resumes_the_same_adapter_as_one_process(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path
) -> None:
    one_spec = engine_spec(tiny_model_dir, engine_data, tmp_path / "one", **TWO_RANK_RUN)
    (tmp_path / "one").mkdir()
    one, _ = finish(start_worker(one_spec, tmp_path / "one" / "spec.json", threads=1, plain=True), one_spec)
    assert "lean_rms_norm" not in one["train"]["kernels"] and "lean_lora" in one["train"]["kernels"]
    spec = engine_spec(tiny_model_dir, engine_data, tmp_path, sharding="fsdp", **TWO_RANK_RUN)
    fsdp_trains_as_one_process(spec, tmp_path / "spec.json", one)


@pytest.mark.slow  # three workers on the 4-bit base: about 65 s on 2 cores
def test_fsdp2_shards_a_qlora_base_and_trains_the_same_adapter_as_one_process(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path
) -> None:
    one_spec = engine_spec(tiny_model_dir, engine_data, tmp_path / "one", quantization="nf4", **TWO_RANK_RUN)
    (tmp_path / "one").mkdir()
    one, _ = finish(start_worker(one_spec, tmp_path / "one" / "spec.json", threads=1, plain=True), one_spec)
    spec = engine_spec(tiny_model_dir, engine_data, tmp_path, quantization="nf4", sharding="fsdp", **TWO_RANK_RUN)
    fsdp_trains_as_one_process(spec, tmp_path / "spec.json", one)


# in process: the loop itself --------------------------------------------------------------------
@pytest.fixture(scope="module")
def loop_inputs(tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path_factory) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("loop")
    return {
        "tokenizer": tokenizer,
        "train": tokenize_file(engine_data["train"], tokenizer, 512).examples,
        "validation": tokenize_file(engine_data["validation"], tokenizer, 512).examples,
        "spec": parse_spec(engine_spec(tiny_model_dir, engine_data, out)),
    }


def run_loop(loop_inputs: dict[str, Any], **settings: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    spec = loop_inputs["spec"]
    options = spec.training.model_copy(update=settings)
    spec = type(spec)(**{**spec.__dict__, "training": options})
    model = prepare_model(spec, CPU)
    validation = loop_inputs["validation"] if options.early_stop_patience else None
    pad = loop_inputs["tokenizer"].pad_token_id
    result = train_adapter(model, loop_inputs["train"], options, CPU, pad_token_id=pad, validation=validation)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, weights


def test_gradient_checkpointing_and_the_cross_entropy_mode_do_not_change_the_update(loop_inputs) -> None:
    reference, weights = run_loop(loop_inputs, max_steps=3, early_stop_patience=0, cross_entropy="full")
    for variant in ({"gradient_checkpointing": True}, {"cross_entropy": "chunked", "loss_chunk_tokens": 64}):
        result, other = run_loop(loop_inputs, max_steps=3, early_stop_patience=0, **variant)
        assert losses(result["loss_curve"]) == pytest.approx(losses(reference["loss_curve"]), abs=1e-5), variant
        assert_same_weights(other, weights, atol=1e-5)


def test_token_and_time_budgets_stop_training_early(loop_inputs) -> None:
    by_tokens, _ = run_loop(loop_inputs, max_steps=20, max_tokens=1500, early_stop_patience=0)
    assert by_tokens["stopped_by"] == "max_tokens" and by_tokens["steps"] < 20
    assert by_tokens["tokens"] >= 1500
    by_time, _ = run_loop(loop_inputs, max_steps=20, max_minutes=1e-6, early_stop_patience=0)
    assert by_time["stopped_by"] == "max_minutes" and by_time["steps"] == 1


def test_early_stop_on_the_validation_slice_restores_the_best_weights(loop_inputs) -> None:
    # A learning rate that warms up to far too high: validation loss falls while it is small, rises once it is
    # not, and training stops. (Without the warmup the first step blows the loss up and the rest of the run
    # recovers from it: whether validation ever rose twice in a row was down to rounding.)
    result, _ = run_loop(loop_inputs, max_steps=24, learning_rate=0.5, eval_every_steps=2, early_stop_patience=2,
                         lr_schedule="constant", warmup_fraction=0.5)
    assert result["stopped_by"] == "early_stop" and result["steps"] < 24
    curve = losses(result["validation_curve"])
    assert result["best_step"] == result["validation_curve"][curve.index(min(curve))][0]
    assert result["restored_best_weights"] is True


def test_the_step_plan_packs_every_example_once_per_epoch_and_restarts_identically() -> None:
    lengths = [37 + (i * 53) % 400 for i in range(300)]
    settings = TrainingConfig(row_tokens=1024, rows_per_step=2, epochs=1, max_seq_len=512, seed=3)
    total, first_epoch = total_steps_for(lengths, settings, packing=True)
    steps = list(plan_from(lengths, settings, True, 0, total))
    assert total == len(first_epoch) == len(steps)
    assert [micro for _, micro in steps] == first_epoch
    seen = sorted(i for _, micro in steps for row in micro for i in row)
    assert seen == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 1024 for _, micro in steps for row in micro)
    assert list(plan_from(lengths, settings, True, 5, total)) == steps[5:]


def test_sigterm_saves_a_checkpoint_and_exits_3_with_an_interrupted_result(
    tiny_model_dir: Path, engine_data: dict[str, Path], tmp_path: Path
) -> None:
    spec = engine_spec(tiny_model_dir, engine_data, tmp_path, max_steps=200, checkpoint_every_steps=1000)
    progress = Path(spec["progress_file"])
    proc = start_worker(spec, tmp_path / "spec.json")
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output[-3000:]
    result = json.loads((Path(spec["output_dir"]) / "result.json").read_text())
    assert result["status"] == "interrupted" and "checkpoint saved" in result["error"]
    saved = sorted(Path(spec["checkpoint_dir"]).glob("step-*"))
    assert len(saved) == 1 and 2 <= int(saved[0].name.split("-")[1]) < 200
    state = json.loads((saved[0] / "state.json").read_text())
    assert state["manifest"]["cycle_id"] == "c-test" and state["manifest"]["snapshot_id"] == "snap-1"
    assert progress.exists() and json.loads(progress.read_text())["total_steps"] == 200


SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


def test_auto_learning_rate_and_epochs_follow_the_base_size_and_explicit_values_stay(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, LlamaConfig

    from daemon.training.auto_settings import base_facts, resolve_training

    tiny = base_facts(AutoConfig.from_pretrained(tiny_model_dir))
    real = base_facts(LlamaConfig(**SMOLLM2_SHAPE))
    assert tiny.parameters < 20_000_000 < 130_000_000 < real.parameters < 140_000_000
    cpu = torch.device("cpu")
    assert resolve_training(TrainingConfig(), tiny, cpu).model_dump(include={"learning_rate", "epochs"}) == {
        "learning_rate": 0.01, "epochs": 6.0}
    assert resolve_training(TrainingConfig(), real, cpu).model_dump(include={"learning_rate", "epochs"}) == {
        "learning_rate": 2e-4, "epochs": 2.0}
    explicit = TrainingConfig(learning_rate=0.003, epochs=1)
    assert resolve_training(explicit, tiny, cpu).model_dump(include={"learning_rate", "epochs"}) == {
        "learning_rate": 0.003, "epochs": 1.0}
    assert TrainingConfig.model_validate({"learning_rate": "auto", "epochs": "auto"}).learning_rate == "auto"
    with pytest.raises(ValueError):
        TrainingConfig(learning_rate=0)


def test_cpu_precision_auto_is_bf16_only_for_a_large_base_on_a_cpu_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import LlamaConfig

    from daemon.training import auto_settings
    from daemon.training.auto_settings import BaseFacts, cpu_precision

    large, small = BaseFacts(LlamaConfig(), 134_515_008), BaseFacts(LlamaConfig(), 1_000_000)
    monkeypatch.setattr(auto_settings, "cpu_has_bf16_units", lambda: True)
    assert [cpu_precision("auto", large), cpu_precision("auto", small), cpu_precision("fp32", large)] == [
        "bf16", "fp32", "fp32"]
    monkeypatch.setattr(auto_settings, "cpu_has_bf16_units", lambda: False)
    assert cpu_precision("auto", large) == "fp32"


def test_cpu_checkpointing_plan_keeps_as_many_layers_whole_as_the_memory_allows() -> None:
    from transformers import LlamaConfig

    from daemon.training.memory_plan import GIB, plan_cpu_checkpointing

    real = LlamaConfig(**SMOLLM2_SHAPE)
    roomy = plan_cpu_checkpointing(real, row_tokens=2048, precision="bf16", available_bytes=64 * GIB)
    assert roomy.layers == 30 and 0 < roomy.checkpointed < 30  # the 0.75 GiB cap binds even with room to spare
    fp32 = plan_cpu_checkpointing(real, row_tokens=2048, precision="fp32", available_bytes=64 * GIB)
    assert fp32.checkpointed > roomy.checkpointed  # fp32 activations are twice as large
    short = plan_cpu_checkpointing(real, row_tokens=2048, precision="bf16", available_bytes=GIB // 2)
    assert short.checkpointed == 30
    tiny = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4)
    assert plan_cpu_checkpointing(tiny, row_tokens=1024, precision="fp32", available_bytes=8 * GIB).checkpointed == 0
