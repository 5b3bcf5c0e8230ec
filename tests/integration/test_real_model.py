"""A real pre-trained model through the retrain cycle (slow suite): SmolLM2-135M-Instruct on the hand-written
conversations of tests/data/conversations, under the standard gate, with the real store, a real MLflow
store and the real worker and probe as child processes.

One chain serves every test here: a clean batch is promoted; then a batch whose agents' answers belong
to other tickets' questions (right style, wrong content) is rejected, and the relevance check is what
rejects it. The whole process tree's resident memory is sampled throughout.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conversations import load_conversations
from tree_memory import PEAK_RSS_LIMIT, TreeMemory, reads_as_english

from daemon.app.wiring import build_cycle_runner, build_registry
from daemon.config import load_settings
from daemon.cycle.runner import CycleOutcome
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.store import ExampleStore
from daemon.tickets import ticket_from_dict
from daemon.training.contract import OUT_DIR, RESULT_FILE, read_result

CLEAN_TICKETS = 120


def wrong_answers(tickets: list[dict]) -> list[dict]:
    """New tickets (new ids and requesters) whose public agent answers are those of another ticket of another
    category: each customer gets a well-written answer to somebody else's question."""
    out = []
    for index, ticket in enumerate(tickets):
        donor = next(tickets[(index + step) % len(tickets)] for step in range(1, len(tickets))
                     if tickets[(index + step) % len(tickets)]["category"] != ticket["category"])
        answers = [m["body"] for m in donor["messages"] if m["author_role"] == "agent" and m["public"]]
        wrong = copy.deepcopy(ticket)
        wrong["ticket_id"] = f"w-{ticket['ticket_id']}"
        wrong["requester"] = {**wrong["requester"], "id": f"w-{wrong['requester']['id']}"}
        public = [m for m in wrong["messages"] if m["author_role"] == "agent" and m["public"]]
        for position, message in enumerate(public):
            message["body"] = answers[min(position, len(answers) - 1)]
        out.append(wrong)
    return out


def examples_of(tickets: list[dict], system_prompt: str) -> list[Example]:
    made = [ticket_to_example(ticket_from_dict(t), system_prompt) for t in tickets]
    return [e for e in made if isinstance(e, Example)]


@dataclass
class Chain:
    clean: CycleOutcome
    wrong: CycleOutcome
    clean_result_file: Path
    peak_rss: int
    peak_processes: list[tuple[str, int]]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, smollm2_model_dir: Path) -> Chain:
    work = tmp_path_factory.mktemp("real-chain")
    settings = load_settings(environ={
        "TICKETUNE_STORE__PATH": str(work / "examples.db"),
        "TICKETUNE_STORE__EVAL_FRACTION": "0.25",
        "TICKETUNE_MODEL__BASE": str(smollm2_model_dir),
        "TICKETUNE_REGISTRY__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "TICKETUNE_REGISTRY__ARTIFACT_LOCATION": str(work / "artifacts"),
        "TICKETUNE_TRAINING__WORK_DIR": str(work / "cycles"),
        "TICKETUNE_TRAINING__EPOCHS": "2",  # one epoch left an adapter that loops on "<CUSTOMER_FIRST_NAME>"
        "TICKETUNE_TRAINING__LEARNING_RATE": "0.0005",
        "TICKETUNE_TRAINING__MAX_SEQ_LEN": "768",
        "TICKETUNE_TRAINING__ROW_TOKENS": "1024",
        "TICKETUNE_SCHEDULE__MIN_NEW_EXAMPLES": "20",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "20",
        "TICKETUNE_GATE__PROFILE": "standard",
        "TICKETUNE_GATE__ANSWER_SAMPLES": "16",
        "TICKETUNE_GATE__ANSWER_MAX_NEW_TOKENS": "48",
        "TICKETUNE_GATE__MAX_NEW_TOKENS": "64",
    })
    english = [t for t in load_conversations() if t.get("language", "en") == "en"]
    clean, rest = english[:CLEAN_TICKETS], english[CLEAN_TICKETS:]
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    runner = build_cycle_runner(settings, store, build_registry(settings))
    try:
        with TreeMemory() as memory:
            store.apply(examples_of(clean, settings.model.system_prompt))
            first = runner.run(trigger="test")
            store.apply(examples_of(wrong_answers(rest), settings.model.system_prompt))
            second = runner.run(trigger="test")
    finally:
        store.close()
    return Chain(first, second, settings.training.work_dir / first.cycle_id / OUT_DIR / RESULT_FILE,
                 memory.peak, memory.peak_processes)


@pytest.mark.real_model
def test_a_clean_batch_of_real_conversations_is_promoted_under_the_standard_gate(chain: Chain):
    assert chain.clean.verdict == "promoted", chain.clean.reasons
    assert not [r for r in chain.clean.reasons if r.startswith("FAIL")]
    assert chain.clean.metrics["candidate_eval_loss"] < chain.clean.metrics["base_eval_loss"]
    assert any(r.startswith("ok relevance") for r in chain.clean.reasons), chain.clean.reasons
    assert any(r.startswith("ok answers") for r in chain.clean.reasons), chain.clean.reasons


@pytest.mark.real_model
def test_the_promoted_adapter_answers_the_golden_prompts_in_english_beside_the_bases_answers(chain: Chain):
    result = read_result(chain.clean_result_file)
    assert result is not None and result.probe is not None and result.probe.status == "ok"
    candidate, base = result.probe.answers_of("candidate"), result.probe.answers_of("base")
    assert candidate and len(base) == len(candidate)  # the first cycle's reference is the base: it answered too
    for answer in candidate:
        assert reads_as_english(answer.text), answer
    scored = result.probe.samples_of("candidate")
    assert len(scored) == 16 and all(a.similarity is not None for a in scored)


@pytest.mark.real_model
def test_answers_that_belong_to_other_questions_are_rejected_by_the_relevance_check(chain: Chain):
    assert chain.wrong.verdict == "rejected", chain.wrong.reasons
    failed = [r for r in chain.wrong.reasons if r.startswith("FAIL")]
    assert any(r.startswith("FAIL relevance") for r in failed), chain.wrong.reasons


@pytest.mark.real_model
def test_a_real_model_cycle_stays_under_4_gb_of_resident_memory_across_the_process_tree(chain: Chain):
    report = json.dumps([(name, rss >> 20) for name, rss in chain.peak_processes])
    assert 0 < chain.peak_rss < PEAK_RSS_LIMIT, f"peak {chain.peak_rss >> 20} MiB: {report}"
