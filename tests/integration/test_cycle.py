"""Retrain cycles on real parts: the real store, a real MLflow store, the real worker (forward and
backward passes of the tiny Llama model in a child process)."""

import json
from pathlib import Path

import pytest

from daemon.app.wiring import build_cycle_runner, build_registry
from daemon.champion.versions import history
from daemon.config import load_settings
from daemon.cycle.runner import CycleRunner
from daemon.demo.samples import generate_tickets
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.store import ExampleStore
from daemon.tickets import ticket_from_dict


def examples(n: int, seed: int, start_id: int, corrupt: float = 0.0) -> list[Example]:
    out = []
    for raw in generate_tickets(n, seed=seed, start_id=start_id, corrupt_fraction=corrupt):
        item = ticket_to_example(ticket_from_dict(raw), "You are a support agent.")
        if isinstance(item, Example):
            out.append(item)
    return out


@pytest.fixture
def setup(tmp_path, tiny_model_dir, mlflow_sqlite_uri):
    env = {
        "TICKETUNE_STORE__PATH": str(tmp_path / "examples.db"),
        "TICKETUNE_MODEL__BASE": str(tiny_model_dir),
        "TICKETUNE_REGISTRY__TRACKING_URI": mlflow_sqlite_uri,
        "TICKETUNE_TRAINING__WORK_DIR": str(tmp_path / "cycles"),
        "TICKETUNE_TRAINING__EPOCHS": "6",
        "TICKETUNE_TRAINING__LEARNING_RATE": "0.01",
        "TICKETUNE_TRAINING__MAX_SEQ_LEN": "384",
        "TICKETUNE_TRAINING__ROW_TOKENS": "1024",
        "TICKETUNE_SCHEDULE__MIN_NEW_EXAMPLES": "40",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8",
        "TICKETUNE_GATE__PROFILE": "demo",
    }
    settings = load_settings(environ=env)
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    registry = build_registry(settings)
    runner = build_cycle_runner(settings, store, registry)
    yield settings, store, registry, runner
    store.close()


@pytest.mark.slow  # the proof test (tests/integration/test_proof.py) runs this path in make test
def test_clean_batch_promotes_then_a_poisoned_batch_is_rejected_and_quarantined(setup):
    settings, store, registry, runner = setup
    store.apply(examples(90, seed=1, start_id=1000))

    first = runner.run(trigger="test")
    assert first.verdict == "promoted", first.reasons
    assert first.metrics["candidate_eval_loss"] < first.metrics["base_eval_loss"]
    assert registry.champion_version() == first.version
    tags = registry.get_version_tags(first.version)
    assert tags["ticketune.verdict"] == "promoted"
    for key in ("ticketune.snapshot_id", "ticketune.base_model", "ticketune.config_hash",
                "ticketune.code_version", "ticketune.reasons", "ticketune.metrics"):
        assert tags.get(key), key
    assert (tags["ticketune.adapter_method"], tags["ticketune.attempt"]) == ("lora", "1")
    first_dir = settings.training.work_dir / first.cycle_id
    assert json.loads((first_dir / "spec.json").read_text())["checkpoint_dir"] == str(first_dir / "checkpoints")
    assert not (first_dir / "checkpoints").exists()  # a cycle that ended leaves no checkpoints behind
    assert store.pending_count() == 0
    adapter = registry.download_adapter(first.version, settings.training.work_dir / "download")
    vocabulary = json.loads((adapter / "ticketune_placeholders.json").read_text())
    assert "<CUSTOMER_FIRST_NAME>" in vocabulary and "<EMAIL>" in vocabulary
    assert (adapter / "adapter_config.json").exists()

    store.apply(examples(90, seed=2, start_id=2000, corrupt=1.0))
    second = runner.run(trigger="test")
    assert second.verdict == "rejected", second.reasons
    assert second.metrics["candidate_eval_loss"] > second.metrics["champion_eval_loss"]
    assert any(r.startswith("FAIL improvement") for r in second.reasons)
    assert registry.champion_version() == first.version
    assert store.counts()["quarantined"] > 0 and store.pending_count() == 0
    rows = history(registry, store)
    assert [(h["version"], h["verdict"], h["champion"]) for h in rows] == [
        (second.version, "rejected", False), (first.version, "promoted", True)]
    cycles = store.cycles()
    assert [c["verdict"] for c in cycles] == ["rejected", "promoted"]


def test_a_scheduled_cycle_waits_for_enough_new_examples(setup):
    settings, store, registry, runner = setup
    store.apply(examples(20, seed=3, start_id=3000))
    outcome = runner.run(trigger="schedule")
    assert outcome.verdict == "skipped" and "min_new_examples" in outcome.reasons[0]
    assert registry.champion_version() is None


def test_a_worker_failure_is_a_failed_cycle_that_keeps_the_batch_pending(setup, tmp_path):
    settings, store, registry, _ = setup
    store.apply(examples(60, seed=4, start_id=4000))
    settings.model.base = str(tmp_path / "no-such-model")
    runner = CycleRunner(settings, store, registry, build_cycle_runner(settings, store, registry).executor)
    outcome = runner.run(trigger="test", force=True)
    assert outcome.verdict == "failed"
    assert "no-such-model" in outcome.reasons[0] or "model" in outcome.reasons[0].lower()
    assert store.pending_count() == len(examples(60, seed=4, start_id=4000))
    assert registry.list_versions() == []
    assert store.cycles()[0]["verdict"] == "failed"
    assert store.retryable_cycle() is None  # a missing model (worker exit 2) fails the same way again


@pytest.mark.slow  # two real cycles, about 45 s
def test_an_erasure_tags_the_champion_and_the_next_cycle_retrains_fresh_without_it(setup):
    settings, store, registry, runner = setup
    store.apply(examples(90, seed=7, start_id=7000))
    first = runner.run(trigger="test")
    assert first.verdict == "promoted", first.reasons
    erased = store._db.execute("SELECT ticket_id FROM snapshot_items WHERE part = 'batch_train' LIMIT 1").fetchone()[0]
    trained_before = store._db.execute("SELECT count(*) FROM snapshot_items WHERE part = 'batch_train'").fetchone()[0]

    assert store.forget(ticket_id=erased)["affected_versions"] == [first.version]
    second = runner.run(trigger="schedule")  # no new data, yet it runs: the champion must be replaced
    assert second.verdict in ("promoted", "rejected") and second.version == "2"
    assert any("retrained from scratch" in r for r in second.reasons)
    assert registry.get_version_tags(first.version)["ticketune.trained_on_erased_data"] == "true"
    assert store.pending_erasures() == []

    spec = json.loads((settings.training.work_dir / second.cycle_id / "spec.json").read_text())
    assert spec["init_adapter"] is None
    train_ids = {json.loads(line)["ticket_id"] for line in Path(spec["train_file"]).read_text().splitlines()}
    assert erased not in train_ids and len(train_ids) == trained_before - 1


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft+kto", "sft+dpo"])
def test_a_preference_cycle_on_feedback_tickets_is_tagged_and_judged_by_the_preference_check(
        tmp_path, tiny_model_dir, mlflow_sqlite_uri, objective):
    from daemon.ingest.feedback import FeedbackRules

    env = {
        "TICKETUNE_STORE__PATH": str(tmp_path / "examples.db"), "TICKETUNE_MODEL__BASE": str(tiny_model_dir),
        "TICKETUNE_REGISTRY__TRACKING_URI": mlflow_sqlite_uri, "TICKETUNE_TRAINING__WORK_DIR": str(tmp_path / "c"),
        "TICKETUNE_TRAINING__MAX_STEPS": "6", "TICKETUNE_TRAINING__MAX_SEQ_LEN": "384",
        "TICKETUNE_TRAINING__ROW_TOKENS": "1024", "TICKETUNE_TRAINING__OBJECTIVE": objective,
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8", "TICKETUNE_GATE__PROFILE": "demo",
        "TICKETUNE_GATE__MIN_FEEDBACK_EXAMPLES": "4", "TICKETUNE_GATE__CHECK_SERVABLE": "false",
        "TICKETUNE_GATE__CHECK_BEHAVIOUR": "false", "TICKETUNE_GATE__CHECK_ANSWERS": "false",
    }
    settings = load_settings(environ=env)
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    rules = FeedbackRules.from_settings(settings)
    made = [ticket_to_example(ticket_from_dict(raw), "You are a support agent.", feedback=rules)
            for raw in generate_tickets(120, seed=5, start_id=5000, feedback=True)]
    store.apply([item for item in made if isinstance(item, Example)])
    registry = build_registry(settings)
    try:
        outcome = build_cycle_runner(settings, store, registry).run(trigger="test", force=True)
    finally:
        store.close()
    assert outcome.verdict in ("promoted", "rejected"), outcome.reasons
    judged = [r for r in outcome.reasons if r.startswith(("ok preference:", "FAIL preference:"))]
    assert judged and "feedback accuracy" in judged[0], outcome.reasons
    for key in ("feedback_accuracy_candidate", "feedback_accuracy_reference", "feedback_examples"):
        assert key in outcome.metrics, outcome.metrics
    assert registry.get_version_tags(outcome.version)["ticketune.objective"] == objective
    assert history(registry)[0]["objective"] == objective
