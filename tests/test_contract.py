"""The worker contract (daemon/training/contract.py): torch-free, one place for the spec, the result,
the exit codes and the file names; the JSON on disk keeps its shape."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import AdapterConfig, TrainingConfig
from daemon.training import contract
from daemon.training.contract import (
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    WORKER_TRAINING_FIELDS,
    SpecError,
    TrainResult,
    TrainSpec,
    failure_result,
    parse_spec_json,
    read_result,
    write_result,
)


def test_importing_the_contract_imports_no_torch_transformers_or_peft():
    code = ("import sys, daemon.training.contract, daemon.training.spec, daemon.training.job, connectors.executors, "
            "daemon.cycle.runner; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_exit_codes_are_defined_once_and_shared():
    import connectors.executors as executors
    import daemon.training.job as job

    assert (EXIT_FAILED, EXIT_BAD_SPEC, EXIT_INTERRUPTED) == (1, 2, 3)
    assert executors.contract is contract and job.EXIT_BAD_SPEC is contract.EXIT_BAD_SPEC
    for module in ("__main__.py", "job.py"):
        text = Path(contract.__file__).with_name(module).read_text()
        assert "EXIT_BAD_SPEC = " not in text and "EXIT_" in text
    assert "EXIT_BAD_SPEC = " not in Path(executors.__file__).read_text()


def test_the_bench_constructor_works_and_a_spec_round_trips(tmp_path):
    spec = TrainSpec(cycle_id="bench", base_model="m", output_dir=tmp_path / "out", train_file=tmp_path / "t.jsonl",
                     adapter=AdapterConfig(), training=TrainingConfig(max_steps=3, work_dir=tmp_path / "cycles"))
    assert spec.progress_file == tmp_path / "out" / "progress.json" and not spec.probe.enabled
    again = parse_spec_json(spec.to_json())
    assert again == spec and again.worker_settings() == spec.worker_settings()
    assert set(json.loads(spec.to_json())["training"]) == WORKER_TRAINING_FIELDS  # the service's fields stay home
    assert again.training.work_dir == TrainingConfig().work_dir


@pytest.mark.parametrize(("change", "field"), [
    ({"training": {"gpus": 0}}, "spec field training.gpus"),
    ({"probe": {"enabled": "yes"}}, "spec field probe.enabled"),
    ({"cycle_id": ""}, "spec field cycle_id"),
    ({"golden_prompts": [{"id": "x", "messages": "hi"}]}, "spec field golden_prompts.0.messages"),
    ({"compare_adapters": {"base": "/x"}}, "reserved name 'base'"),
    ({"training": {"sharding": "fsdp", "compile": True}},
     "spec field training: sharding fsdp does not run with compile"),
    ({"adapter": {"method": "prompt_tuning"}, "training": {"sharding": "fsdp"}},
     "training.sharding fsdp cannot train adapter.method prompt_tuning"),
])
def test_a_bad_spec_is_a_spec_error_naming_the_field(tmp_path, change, field):
    raw = {"cycle_id": "c1", "base_model": "m", "output_dir": str(tmp_path), "train_file": "t.jsonl", **change}
    with pytest.raises(SpecError, match=field):
        parse_spec_json(json.dumps(raw))
    with pytest.raises(SpecError, match="not readable JSON"):
        parse_spec_json("{not json")


def test_nulls_the_service_writes_are_defaults(tmp_path):
    raw = {"cycle_id": "c1", "base_model": "m", "output_dir": "out", "train_file": "t.jsonl", "golden_prompts": None,
           "init_adapter": None, "probe": {"enabled": False, "max_new_tokens": None}, "snapshot_id": None}
    spec = parse_spec_json(json.dumps(raw))
    assert spec.golden_prompts == [] and spec.probe.max_new_tokens == contract.DEFAULT_PROBE_TOKENS
    assert spec.snapshot_id == "" and spec.init_adapter is None


RESULT = {
    "status": "ok", "error": None, "cycle_id": "c1", "snapshot_id": "s1", "adapter_dir": "/o/adapter",
    "adapter_method": "lora", "device": "cpu", "world_size": 1,
    "train": {"examples": 4, "steps": 2, "loss_curve": [[1, 2.5], [2, float("nan")]], "validation_curve": [],
              "tokens_per_second": None, "stopped_by": "steps", "row_fill": 0.9,
              "checkpointing": {"layers": 2, "checkpointed": 1, "budget_gib": 20.0, "reason": "plan"},
              "kernels": ["rms_norm", "swiglu"], "future_field": {"kept": True}},
    "eval": {"trusted": {"candidate": {"loss": 1.5, "tokens": 10, "examples": 2, "per_example": [["a", 3.0, 2]],
                                       "dropped_examples": 0}}},
    "probe": {"status": "ok", "error": None, "answers": {"candidate": [{"id": "p", "text": "hi", "new_tokens": 1}]},
              "wall_seconds": 1.0},
    "seconds": 3.2, "versions": {"torch": "2"},
}


def test_a_result_keeps_its_shape_on_disk_and_reads_as_attributes(tmp_path):
    write_result(tmp_path, RESULT)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert set(on_disk) == set(RESULT) and set(on_disk["train"]) == set(RESULT["train"])
    result = read_result(tmp_path / "result.json")
    assert isinstance(result, TrainResult) and result.ok
    assert result.train.checkpointing.checkpointed == 1 and result.train.kernels == ["rms_norm", "swiglu"]
    assert result.loss("trusted", "candidate") == 1.5 and result.loss("trusted", "base") is None
    assert result.probe.answers_of("candidate")[0].new_tokens == 1
    assert on_disk["train"]["loss_curve"][1][1] != on_disk["train"]["loss_curve"][1][1]  # NaN stays NaN


def test_a_failure_result_has_the_fields_it_always_had(tmp_path):
    write_result(tmp_path, failure_result("interrupted", "stopped", EXIT_INTERRUPTED, "c1", {"torch": "2"}))
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == {"status": "interrupted", "error": "stopped", "exit_code": 3, "cycle_id": "c1",
                       "adapter_dir": None, "device": None, "train": None, "eval": None, "versions": {"torch": "2"}}
    assert read_result(tmp_path / "missing.json") is None
