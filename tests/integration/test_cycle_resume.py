"""A failed cycle is retried with its own id, snapshot and spec, so the worker resumes from its checkpoints.

The retry rules run on the real store and real cycle directories, with a scripted worker and an
in-memory registry (seconds, no torch). The last test kills the real worker mid-training and lets
the service-level retry resume it from its checkpoint, against a real MLflow store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from connectors.executors import LocalProcessExecutor, WorkerFailed
from daemon.app.wiring import build_registry
from daemon.config import TrainingConfig, load_settings
from daemon.cycle.runner import WORKER_TRAINING_FIELDS, CycleRunner
from daemon.demo.samples import generate_tickets
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.store import ExampleStore
from daemon.tickets import ticket_from_dict

SERVICE_ONLY_TRAINING_FIELDS = {
    "work_dir", "python", "timeout_minutes", "warm_start", "replay_fraction", "keep_cycle_dirs", "max_attempts",
    "validation_fraction",
}


def examples(n: int, seed: int, start_id: int) -> list[Example]:
    out = []
    for raw in generate_tickets(n, seed=seed, start_id=start_id):
        item = ticket_to_example(ticket_from_dict(raw), "You are a support agent.")
        if isinstance(item, Example):
            out.append(item)
    return out


class MemoryRegistry:
    """The cycle's Registry protocol in memory; `fail_artifacts` makes the upload after a verdict fail."""

    def __init__(self) -> None:
        self.champion: str | None = None
        self.versions: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.fail_artifacts = False

    def champion_version(self) -> str | None:
        return self.champion

    def download_adapter(self, version: str, dst_dir: Path) -> Path:
        dst_dir.mkdir(parents=True, exist_ok=True)
        (dst_dir / "adapter_config.json").write_text("{}")
        return dst_dir

    def start_cycle_run(self, cycle_id: str, params: dict, tags: dict) -> str:
        self.runs.append({"cycle_id": cycle_id, "params": dict(params), "tags": dict(tags), "status": None})
        return str(len(self.runs) - 1)

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        if self.fail_artifacts:
            raise RuntimeError("MLflow is unreachable")

    def end_run(self, run_id: str, status: str) -> None:
        self.runs[int(run_id)]["status"] = status

    def register_candidate(self, run_id: str, adapter_dir: Path, tags: dict) -> str:
        version = str(len(self.versions) + 1)
        self.versions[version] = dict(tags)
        return version

    def set_champion(self, version: str) -> None:
        self.champion = version

    def set_version_tags(self, version: str, tags: dict) -> None:
        self.versions[version].update(tags)

    def get_version_tags(self, version: str) -> dict:
        return dict(self.versions.get(version, {}))

    def list_versions(self) -> list[dict]:
        return [{"version": v, "champion": v == self.champion, "tags": t} for v, t in self.versions.items()]


class ScriptedWorker:
    """Plays the worker: leaves a checkpoint, then raises the next scripted exception or returns a
    result whose candidate beats (`"better"`) or loses to (`"worse"`) the reference."""

    def __init__(self, *script: Exception | str) -> None:
        self.script = list(script)
        self.specs: list[dict] = []

    def run(self, spec_path: Path, result_path: Path, *, timeout_s: float, stop=None, run_id=None) -> dict:
        spec = json.loads(spec_path.read_text())
        self.specs.append(spec)
        (Path(spec["checkpoint_dir"]) / f"step-{len(self.specs):08d}").mkdir(parents=True)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        adapter = Path(spec["output_dir"]) / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
        n = len(Path(spec["eval_files"]["trusted"]).read_text().splitlines())
        loss = 1.0 if step == "better" else 3.0
        return {"status": "ok", "adapter_dir": str(adapter), "train": {"steps": 2},
                "eval": {"trusted": {name: {"loss": value, "examples": n} for name, value in
                                     (("candidate", loss), ("base", 2.0), ("champion", 2.0))}}}


@pytest.fixture
def parts(tmp_path):
    settings = load_settings(environ={
        "TICKETUNE_STORE__PATH": str(tmp_path / "examples.db"),
        "TICKETUNE_MODEL__BASE": "tiny-test-model",
        "TICKETUNE_TRAINING__WORK_DIR": str(tmp_path / "cycles"),
        "TICKETUNE_TRAINING__MAX_ATTEMPTS": "3",
        "TICKETUNE_TRAINING__VALIDATION_FRACTION": "0.2",
        "TICKETUNE_SCHEDULE__MIN_NEW_EXAMPLES": "40",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8",
        "TICKETUNE_GATE__PROFILE": "demo",
    })
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    store.apply(examples(90, seed=1, start_id=1000))
    yield settings, store, MemoryRegistry()
    store.close()


def crash() -> WorkerFailed:
    return WorkerFailed("training worker failed: exit code -9")


def test_a_crashed_cycle_resumes_with_its_id_snapshot_and_spec_while_newer_examples_wait(parts):
    settings, store, registry = parts
    worker = ScriptedWorker(crash(), "better")
    runner = CycleRunner(settings, store, registry, worker)
    first = runner.run(trigger="schedule")
    assert first.verdict == "failed" and first.reasons == ["training worker failed: exit code -9"]
    cycle_dir = settings.training.work_dir / first.cycle_id
    assert (cycle_dir / "checkpoints" / "step-00000001").is_dir()  # kept: the retry resumes from them
    spec_text = (cycle_dir / "spec.json").read_text()
    snapshot_id = store.cycles()[0]["snapshot_id"]
    late = examples(20, seed=2, start_id=2000)
    store.apply(late)

    second = runner.run(trigger="schedule")
    assert second.cycle_id == first.cycle_id and second.verdict == "promoted", second.reasons
    assert second.reasons[0] == f"resumes cycle {first.cycle_id} attempt 2"
    assert (cycle_dir / "spec.json").read_text() == spec_text and worker.specs[1] == worker.specs[0]
    assert [(r["params"]["cycle.attempt"], r["tags"]["ticketune.attempt"], r["status"]) for r in registry.runs] == [
        (1, "1", "FAILED"), (2, "2", "FINISHED")]
    tags = registry.versions[second.version]
    assert (tags["ticketune.attempt"], tags["ticketune.snapshot_id"]) == ("2", snapshot_id)
    assert not (cycle_dir / "checkpoints").exists()
    assert store.pending_count() == len(late)  # arrived after the snapshot: the next cycle's
    row = store.cycles()[0]
    assert (row["cycle_id"], row["attempts"], row["verdict"], len(store.cycles())) == (
        first.cycle_id, 2, "promoted", 1)


def test_the_spec_carries_the_worker_settings_validation_checkpoints_and_progress(parts):
    settings, store, registry = parts
    assert WORKER_TRAINING_FIELDS | SERVICE_ONLY_TRAINING_FIELDS == set(TrainingConfig.model_fields)
    assert not WORKER_TRAINING_FIELDS & SERVICE_ONLY_TRAINING_FIELDS
    worker = ScriptedWorker("better")
    outcome = CycleRunner(settings, store, registry, worker).run(trigger="test")
    spec, cycle_dir = worker.specs[0], settings.training.work_dir / outcome.cycle_id
    assert set(spec["training"]) == WORKER_TRAINING_FIELDS
    assert spec["adapter"] == settings.adapter.model_dump(mode="json")
    assert spec["snapshot_id"] == store.cycles()[0]["snapshot_id"]
    assert spec["checkpoint_dir"] == str(cycle_dir / "checkpoints")
    assert spec["progress_file"] == str(cycle_dir / "out" / "progress.json")
    validation = Path(spec["validation_file"]).read_text().splitlines()
    train = {json.loads(line)["ticket_id"] for line in Path(spec["train_file"]).read_text().splitlines()}
    assert len(validation) >= 8 and not {json.loads(line)["ticket_id"] for line in validation} & train
    assert registry.versions[outcome.version]["ticketune.adapter_method"] == "lora"


def _change_nothing(settings, store, registry, cycle_dir):
    pass


def _lose_the_data(settings, store, registry, cycle_dir):
    shutil.rmtree(cycle_dir / "data")


def _change_the_champion(settings, store, registry, cycle_dir):
    registry.champion = "7"


def _change_the_training_settings(settings, store, registry, cycle_dir):
    settings.training.learning_rate = 1e-3


@pytest.mark.parametrize(("change", "resumed"), [
    (_change_nothing, True),
    (_lose_the_data, False),
    (_change_the_champion, False),
    (_change_the_training_settings, False),
])
def test_a_retry_needs_its_files_its_champion_and_its_settings_unchanged(parts, change, resumed):
    settings, store, registry = parts
    runner = CycleRunner(settings, store, registry, ScriptedWorker(crash(), "better"))
    first = runner.run(trigger="test")
    old_dir = settings.training.work_dir / first.cycle_id
    change(settings, store, registry, old_dir)
    second = runner.run(trigger="test")
    assert (second.cycle_id == first.cycle_id) is resumed, second.reasons
    if not resumed:  # a fresh cycle with a fresh snapshot; the abandoned checkpoints go
        assert store.cycles()[0]["snapshot_id"] != store.cycles()[1]["snapshot_id"]
        assert not (old_dir / "checkpoints").exists()


def test_a_registration_cut_short_by_mlflow_reopens_the_batch_and_the_retry_registers_anew(parts):
    settings, store, registry = parts
    registry.fail_artifacts = True  # the version is registered and the verdict in, then MLflow fails
    runner = CycleRunner(settings, store, registry, ScriptedWorker("worse", "better"))
    pending = store.pending_count()
    first = runner.run(trigger="test", force=True)
    assert first.verdict == "failed" and "MLflow is unreachable" in first.reasons[0]
    # a failed cycle leaves its batch pending, and its half-registered version is never promotable
    assert store.pending_count() == pending and store.list_batches() == []
    assert registry.versions["1"]["ticketune.state"] == "abandoned"
    assert store.trusted_set_size("1") == 0
    registry.fail_artifacts = False
    second = runner.run(trigger="test")
    assert second.cycle_id == first.cycle_id and second.verdict == "promoted", second.reasons
    assert second.version == "2" and registry.champion == "2"


def test_a_bad_spec_is_not_retried_and_its_checkpoints_go_at_once(parts):
    settings, store, registry = parts
    runner = CycleRunner(settings, store, registry, ScriptedWorker(
        WorkerFailed("training worker failed: spec field training.gpus: bad", retryable=False), "better"))
    first = runner.run(trigger="test")
    assert first.verdict == "failed"
    assert not (settings.training.work_dir / first.cycle_id / "checkpoints").exists()
    second = runner.run(trigger="test")
    assert second.cycle_id != first.cycle_id and second.verdict == "promoted"


def test_after_max_attempts_the_cycle_is_abandoned_for_a_fresh_one(parts, caplog):
    settings, store, registry = parts
    settings.training.max_attempts = 2
    runner = CycleRunner(settings, store, registry, ScriptedWorker(crash(), crash(), "better"))
    first = runner.run(trigger="test")
    second = runner.run(trigger="test")
    assert second.cycle_id == first.cycle_id and second.reasons[0] == f"resumes cycle {first.cycle_id} attempt 2"
    assert not (settings.training.work_dir / first.cycle_id / "checkpoints").exists()  # no attempt left
    with caplog.at_level(logging.WARNING, logger="ticketune.cycle"):
        third = runner.run(trigger="test")
    assert f"cycle {first.cycle_id} failed 2 times" in caplog.text
    assert third.cycle_id != first.cycle_id and third.verdict == "promoted"
    assert [c["attempts"] for c in store.cycles()] == [1, 2]


def _worker_pid(spec_path: Path) -> int | None:
    """The running worker's pid (the leader of its process group), found by its spec path."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemon.training" in argv and str(spec_path).encode() in argv:
            return int(entry.name)
    return None


def test_a_killed_worker_fails_the_cycle_and_the_retry_resumes_from_its_checkpoint(
    tmp_path, tiny_model_dir, mlflow_sqlite_uri
):
    settings = load_settings(environ={
        "TICKETUNE_STORE__PATH": str(tmp_path / "examples.db"),
        "TICKETUNE_MODEL__BASE": str(tiny_model_dir),
        "TICKETUNE_REGISTRY__TRACKING_URI": mlflow_sqlite_uri,
        "TICKETUNE_TRAINING__WORK_DIR": str(tmp_path / "cycles"),
        "TICKETUNE_TRAINING__MAX_STEPS": "12",
        "TICKETUNE_TRAINING__LEARNING_RATE": "0.01",
        "TICKETUNE_TRAINING__MAX_SEQ_LEN": "384",
        "TICKETUNE_TRAINING__ROW_TOKENS": "768",
        "TICKETUNE_TRAINING__CHECKPOINT_EVERY_STEPS": "1",
        "TICKETUNE_TRAINING__EVAL_EVERY_STEPS": "6",
        "TICKETUNE_SCHEDULE__MIN_NEW_EXAMPLES": "40",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8",
        "TICKETUNE_GATE__PROFILE": "demo",
    })
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    store.apply(examples(90, seed=1, start_id=1000))
    registry = build_registry(settings)
    runner = CycleRunner(settings, store, registry, LocalProcessExecutor())
    try:
        outcomes = []
        thread = threading.Thread(target=lambda: outcomes.append(runner.run(trigger="test")))
        thread.start()
        deadline = time.monotonic() + 240
        killed_at = None
        while thread.is_alive() and killed_at is None and time.monotonic() < deadline:
            for progress_path in settings.training.work_dir.glob("c-*/out/progress.json"):
                try:
                    progress = json.loads(progress_path.read_text())
                except ValueError:
                    continue
                pid = _worker_pid(progress_path.parent.parent / "spec.json")
                if progress.get("step", 0) >= 2 and pid is not None:
                    os.killpg(pid, signal.SIGKILL)
                    killed_at = progress["step"]
            time.sleep(0.1)
        thread.join(120)
        assert killed_at is not None, "the worker finished (or never started) before it could be killed"
        (first,) = outcomes
        assert first.verdict == "failed" and "exit code -9" in first.reasons[0], first.reasons
        cycle_dir = settings.training.work_dir / first.cycle_id
        assert sorted(p.name for p in (cycle_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
        assert store.cycles()[0]["verdict"] == "failed"

        second = runner.run(trigger="schedule")
        assert second.cycle_id == first.cycle_id, second.reasons
        assert second.reasons[0] == f"resumes cycle {first.cycle_id} attempt 2"
        assert second.verdict in ("promoted", "rejected"), second.reasons
        assert "resumed from checkpoint" in (cycle_dir / "worker.log").read_text()
        result = json.loads((cycle_dir / "out" / "result.json").read_text())
        assert result["train"]["resumed_from_step"] >= 1
        assert not (cycle_dir / "checkpoints").exists()
        tags = registry.get_version_tags(second.version)
        assert tags["ticketune.attempt"] == "2" and tags["ticketune.snapshot_id"] == store.cycles()[0]["snapshot_id"]
        assert [(c["cycle_id"], c["attempts"]) for c in store.cycles()] == [(first.cycle_id, 2)]
    finally:
        store.close()


def test_the_log_says_what_a_cycle_trains_on_in_words_and_a_resumed_report_says_from_which_step(parts, caplog):
    settings, store, registry = parts

    class ResumingWorker(ScriptedWorker):
        def run(self, spec_path: Path, result_path: Path, **kwargs) -> dict:
            result = super().run(spec_path, result_path, **kwargs)
            result["train"]["resumed_from_step"] = 1
            return result

    runner = CycleRunner(settings, store, registry, ResumingWorker(crash(), "better"))
    caplog.set_level(logging.INFO, logger="ticketune.cycle")
    first = runner.run(trigger="schedule")
    line = next(r.getMessage() for r in caplog.records if "training on" in r.getMessage())
    assert "{" not in line and " new and 0 replayed examples (" in line and line.endswith("; champion none")
    second = runner.run(trigger="schedule")
    assert second.cycle_id == first.cycle_id and second.verdict == "promoted", second.reasons
    report = (settings.training.work_dir / first.cycle_id / "report" / "report.md").read_text("utf-8")
    assert "Attempt 2 of this cycle: resumed from step 1 of the checkpoint attempt 1 saved" in report
