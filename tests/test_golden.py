"""Golden prompts: the YAML format and its errors, the shipped sets, the worker-spec rendering that
matches training examples, and the general text of the forgetting guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.demo.samples import INTENTS
from daemon.gate.golden import (
    DEFAULT_GENERAL_TEXT,
    GoldenError,
    GoldenSet,
    general_text_path,
    load_golden,
    spec_prompts,
)
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.tickets import ticket_from_dict

RUDE = ("stupid question", "figure it out yourself", "waste of our time", "not our problem")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "golden_prompts.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_prompt_loads_with_every_field(tmp_path: Path) -> None:
    golden = load_golden(write(tmp_path, """
max_new_tokens: 40
prompts:
  - id: refund-double-charge
    category: billing
    subject: Charged twice
    prompt: "I was charged twice for order 1182. Can I get a refund?"
    must_contain: ["refund"]
    must_not_contain: ["stupid"]
    regex: ["(?i)refund(ed)?"]
    must_not_match: ["\\\\d{16}"]
  - id: second
    prompt: "Where is my parcel?"
    max_new_tokens: 12
"""), "standard")
    first, second = golden.prompts
    assert (first.id, first.category, first.subject) == ("refund-double-charge", "billing", "Charged twice")
    assert first.must_contain == ("refund",) and first.regex == ("(?i)refund(ed)?",)
    assert first.must_not_match == ("\\d{16}",) and second.must_contain == ()
    assert golden.max_new_tokens == 40 and golden.source.endswith("golden_prompts.yaml")
    assert [p["max_new_tokens"] for p in spec_prompts(golden, None)] == [40, 12]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("prompts:\n  - id: a\n    prompt: x\n  - id: b\n    prompt: y\n    regex: ['(unclosed']\n",
         "prompts.1.regex.0: invalid regex '(unclosed'"),
        ("prompts:\n  - id: a\n    prompt: x\n    must_not_match: ['ok', '[z-a]']\n",
         "prompts.0.must_not_match.1: invalid regex '[z-a]'"),
        ("prompts:\n  - id: a\n", "prompts.0.prompt: Field required"),
        ("prompts:\n  - id: a\n    prompt: x\n    must_contian: [y]\n", "prompts.0.must_contian: Extra inputs"),
        ("prompts:\n  - id: a\n    prompt: x\n  - id: a\n    prompt: y\n", "prompts.1.id: duplicate id 'a'"),
        ("prompts: []\n", "prompts: Tuple should have at least 1 item"),
        ("prompts:\n  - id: a\n    prompt: x\n    must_contain: ['']\n", "prompts.0.must_contain.0: String should"),
        ("- just a list\n", "must be a mapping with a 'prompts' list"),
        ("prompts: [\n", "not valid YAML"),
    ],
    ids=["regex", "must_not_match", "missing", "unknown-field", "duplicate", "empty", "empty-phrase", "list",
         "yaml"],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, body: str, where: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(GoldenError) as caught:
        load_golden(path, "standard")
    assert str(caught.value).startswith(f"{path}: ") and where in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match="does not exist; fix gate.golden_prompts"):
        load_golden(tmp_path / "nope.yaml", "demo")


def test_no_path_gives_the_generic_set_and_the_demo_set_for_profile_demo() -> None:
    generic = load_golden(None, "standard")
    demo = load_golden(None, "demo")
    assert generic.source != demo.source and len(generic.prompts) >= 5
    # generic: universal expectations only (the gate's own), so it fits any company
    assert all(not (p.must_contain or p.must_not_contain or p.regex or p.must_not_match) for p in generic.prompts)
    assert all(p.must_contain and set(RUDE) <= set(p.must_not_contain) for p in demo.prompts)


def test_demo_expectations_are_words_every_clean_sample_answer_of_their_intent_contains() -> None:
    demo = load_golden(None, "demo")
    answers = {intent.name.replace("_", "-"): intent.answers for intent in INTENTS}
    for prompt in demo.prompts:
        for answer in answers[prompt.id]:
            for word in prompt.must_contain:
                assert word.casefold() in answer.casefold(), (prompt.id, word)
            for phrase in prompt.must_not_contain:
                assert phrase.casefold() not in answer.casefold()


def test_spec_prompts_render_the_user_turn_as_training_examples_do() -> None:
    body = "  I was charged twice for order 1182.\nCan I get a refund?  \n"
    ticket = ticket_from_dict({
        "ticket_id": "t-1", "status": "solved", "resolved_at": "2026-11-02T12:01:00Z",
        "messages": [
            {"author_role": "customer", "author_name": "Ana Ruiz", "public": True, "body": body},
            {"author_role": "agent", "author_name": "Sam Lee", "public": True, "body": "Refunded."},
        ],
    })
    example = ticket_to_example(ticket, "You are a support agent.")
    assert isinstance(example, Example)
    golden = GoldenSet.model_validate({"prompts": [{"id": "p", "prompt": body}]})
    rendered = spec_prompts(golden, "You are a support agent.")
    assert rendered == [{"id": "p", "messages": example.messages[:2]}]
    assert spec_prompts(golden, None)[0]["messages"] == example.messages[1:2]


def test_the_general_text_is_shipped_public_domain_prose_not_tickets(tmp_path: Path) -> None:
    path = general_text_path(None)
    assert path == DEFAULT_GENERAL_TEXT
    text = path.read_text(encoding="utf-8")
    assert 6_000 <= len(text.encode("utf-8")) <= 12_000 and text.count("\n\n") >= 10
    assert "Four score and seven years ago" in text and "refund" not in text.casefold()
    own = tmp_path / "general.txt"
    own.write_text("Some text.", encoding="utf-8")
    assert general_text_path(own) == own
    with pytest.raises(GoldenError, match="general text file does not exist"):
        general_text_path(tmp_path / "missing.txt")
