"""Preference data from tickets: CSAT labels, pairs from agents' edits of drafts, and how they travel through
ingest and the store (scrubbed, idempotent, erased, split and batched like every example)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from daemon.config import QualityConfig, Settings
from daemon.demo.samples import generate_tickets
from daemon.gate.preference import judgeable_examples
from daemon.ingest.feedback import (
    FEEDBACK_CHOSEN,
    FEEDBACK_REJECTED,
    FEEDBACK_THUMBS,
    FeedbackRules,
    edit_ratio,
    feedback_eval_sets,
    feedback_kinds,
    heldout_feedback,
)
from daemon.ingest.filters import QualityFilter
from daemon.ingest.loop import SourceRecord, classify
from daemon.ingest.pairs import Example, Skip, ticket_to_example
from daemon.store import ExampleStore
from daemon.tickets import TicketParseError, parse_canonical, ticket_from_dict
from tests.conversations import load_conversations

QUESTION = "Hi, I was charged twice for order 1182. My email is ana.ruiz@example.com. Can you refund it?"
ANSWER = "Hi Ana, I refunded the duplicate charge on order 1182; you will see it in 3 to 5 business days. Sam"
DRAFT = "Hi Ana, please write to ana.ruiz@example.com from your account settings page for refunds. Sam"


def ticket(ticket_id: str = "1", csat: float | None = None, outcome: str | None = None, draft: str = DRAFT,
           requester: str = "u-1") -> dict:
    data = {
        "ticket_id": ticket_id, "status": "solved", "csat": csat, "category": "billing",
        "updated_at": "2026-11-02T12:00:00Z",
        "requester": {"id": requester, "name": "Ana Ruiz", "email": "ana.ruiz@example.com"},
        "messages": [
            {"author_role": "customer", "author_name": "Ana Ruiz", "body": QUESTION},
            {"author_role": "agent", "author_name": "Sam", "public": False, "body": "internal: refund approved"},
            {"author_role": "agent", "author_name": "Sam", "body": ANSWER},
        ],
    }
    if outcome is not None:
        data["ai_assist"] = {"model_name": "ticketune-support", "model_version": 3, "draft": draft, "outcome": outcome}
    return data


def example_of(data: dict, rules: FeedbackRules | None = None) -> Example:
    made = ticket_to_example(ticket_from_dict(data), "system", feedback=rules)
    assert isinstance(made, Example)
    return made


def test_ai_assist_is_parsed_and_a_bad_one_is_a_parse_error_naming_the_field():
    parsed = ticket_from_dict(ticket(outcome="edited"))
    assert parsed.ai_assist.model_version == "3" and parsed.ai_assist.outcome.value == "edited"
    assert ticket_from_dict(ticket()).ai_assist is None
    for broken, field in (({"draft": "x", "outcome": "ignored"}, "ai_assist.outcome"),
                          ({"outcome": "edited"}, "ai_assist.draft")):
        with pytest.raises(TicketParseError) as caught:
            ticket_from_dict(ticket() | {"ai_assist": broken})
        assert caught.value.reason == "invalid_ticket" and field in caught.value.detail


def test_edit_ratio_is_one_minus_the_word_level_similarity():
    assert edit_ratio("a b c d", "a b c d") == 0.0
    assert edit_ratio("a b c d", "w x y z") == 1.0
    assert edit_ratio("a b c d", "a b c e") == pytest.approx(0.25)  # 1 - 2*3/8


def test_csat_gives_desirable_and_undesirable_examples_and_the_middle_gives_none():
    assert example_of(ticket(csat=5)).feedback == {"label": "desirable"}
    assert example_of(ticket(csat=4)).feedback == {"label": "desirable"}
    assert example_of(ticket(csat=2)).feedback == {"label": "undesirable"}
    assert example_of(ticket(csat=3)).feedback is None
    assert example_of(ticket(csat=None)).feedback is None
    assert example_of(ticket(csat=3), FeedbackRules(good_csat=3, bad_csat=1)).feedback == {"label": "desirable"}


def test_an_edited_or_discarded_draft_is_a_pair_with_the_sent_answer_chosen_and_the_draft_scrubbed():
    for outcome in ("edited", "discarded"):
        made = example_of(ticket(csat=5, outcome=outcome))
        assert feedback_kinds(made.feedback) == ["desirable", "pair"]
        assert made.feedback["outcome"] == outcome and made.feedback["model_version"] == "3"
        assert made.feedback["edit_ratio"] >= 0.2
        rejected = made.feedback["rejected"]
        assert "ana.ruiz@example.com" not in rejected and "<CUSTOMER_EMAIL>" in rejected
        assert "ana.ruiz@example.com" not in made.to_json()


def test_a_draft_sent_as_is_or_barely_edited_gives_no_pair():
    assert "rejected" not in example_of(ticket(outcome="sent_as_is", draft=ANSWER)).feedback
    light = ANSWER.replace("Sam", "Samuel")  # one word of twenty changed
    made = example_of(ticket(outcome="edited", draft=light))
    assert made.feedback["edit_ratio"] < 0.2 and "rejected" not in made.feedback
    assert "rejected" in example_of(ticket(outcome="edited", draft=light), FeedbackRules(min_edit_ratio=0.01)).feedback


def test_a_draft_of_a_first_reply_that_opens_the_conversation_gives_no_pair():
    data = ticket(outcome="edited")
    data["messages"] = [data["messages"][2], {"author_role": "customer", "body": "ok, and the other order?"},
                        {"author_role": "agent", "body": "That one is refunded too."}]
    made = example_of(data)
    assert made.feedback is None or "rejected" not in made.feedback


def test_low_csat_under_a_preference_objective_is_kept_as_undesirable_only_whatever_min_csat_says():
    quality = QualityFilter(QualityConfig(min_csat=4, min_tokens=1), None)
    low = SourceRecord("t", 0, 0, b"1", json.dumps(ticket(csat=1)).encode())
    plain = FeedbackRules.from_settings(Settings())
    preference = FeedbackRules.from_settings(Settings(training={"objective": "sft+kto"}))
    assert isinstance(classify(low, parse_canonical, None, None, quality, feedback=plain), Skip)
    kept = classify(low, parse_canonical, None, None, quality, feedback=preference)
    assert isinstance(kept, Example) and kept.sft is False and kept.feedback == {"label": "undesirable"}
    assert json.loads(kept.to_json())["sft"] is False
    middling = SourceRecord("t", 0, 1, b"2", json.dumps(ticket("2", csat=3)).encode())
    assert isinstance(classify(middling, parse_canonical, None, None, quality, feedback=preference), Skip)


@pytest.fixture()
def store(tmp_path):
    s = ExampleStore(tmp_path / "examples.db", eval_fraction=0.25)
    yield s
    s.close()


def test_feedback_is_stored_idempotently_counted_by_kind_and_erased_with_its_ticket(store):
    made = example_of(ticket(csat=1, outcome="edited"))
    assert store.apply([made]) == ["stored"]
    assert store.apply([made]) == ["unchanged"]
    assert store.feedback_counts() == {"desirable": 0, "undesirable": 1, "pair": 1}
    store.forget(requester_email="ana.ruiz@example.com")
    assert store.feedback_counts() == {"desirable": 0, "undesirable": 0, "pair": 0}
    dump = "\n".join(sqlite3.connect(store.path).iterdump())
    assert "help center" not in dump and "account settings page" not in dump  # the draft went with the example


def test_the_snapshot_keeps_undesirable_examples_out_of_the_supervised_files_under_a_preference_objective(
        store, tmp_path):
    examples = [example_of(ticket(str(i), csat=(1 if i % 3 == 0 else 5), outcome="edited" if i % 2 else None,
                                  requester=f"u-{i}")) for i in range(40)]
    store.apply(examples)
    snapshot = store.create_snapshot("c1", None, replay_fraction=0.0)

    def read(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    plain = snapshot.write_jsonl(tmp_path / "plain")
    preference = snapshot.write_jsonl(tmp_path / "preference", preference=True)
    plain_ids = {row["ticket_id"] for row in read(plain["train"])}
    preference_ids = {row["ticket_id"] for row in read(preference["train"])}
    undesirable = {e.ticket_id for e in examples if e.feedback.get("label") == "undesirable"}
    assert undesirable & plain_ids and not undesirable & preference_ids
    assert not undesirable & {row["ticket_id"] for row in read(preference["trusted"])}
    rows = read(preference["preference_train"])
    assert {row["ticket_id"] for row in rows} == plain_ids  # every training example's feedback, no eval one
    thumbs = [row for row in rows if "label" in row]
    pairs = [row for row in rows if "rejected" in row]
    assert thumbs and pairs and all(row["prompt"][-1]["role"] == "user" for row in rows)
    assert all(row["chosen"].startswith("Hi <CUSTOMER_FIRST_NAME>") for row in pairs)
    assert all("<CUSTOMER_EMAIL>" in row["rejected"] for row in pairs)


def test_held_out_feedback_becomes_eval_sets_paired_by_ticket_id():
    examples = [json.loads(example_of(ticket(str(i), csat=5 - i, outcome="edited")).to_json()) for i in range(5)]
    thumbs, pairs = heldout_feedback(examples[:3], examples[2:])
    assert [row["label"] for row in thumbs] == ["desirable", "desirable", "undesirable", "undesirable"]
    assert len(pairs) == 5
    sets = feedback_eval_sets(thumbs, pairs)
    assert [r["ticket_id"] for r in sets[FEEDBACK_CHOSEN]] == [r["ticket_id"] for r in sets[FEEDBACK_REJECTED]]
    assert sets[FEEDBACK_CHOSEN][0]["messages"][-1]["content"] == examples[0]["messages"][-1]["content"]
    assert sets[FEEDBACK_REJECTED][0]["messages"][:-1] == sets[FEEDBACK_CHOSEN][0]["messages"][:-1]
    assert len(sets[FEEDBACK_THUMBS]) == 4


def test_only_pairs_and_thumbs_of_both_classes_are_judgeable_so_one_class_of_thumbs_is_never_scored():
    examples = [json.loads(example_of(ticket(str(i), csat=5 - i, outcome="edited")).to_json()) for i in range(5)]
    thumbs, pairs = heldout_feedback(examples[:3], examples[2:])
    assert judgeable_examples(thumbs, pairs) == len(thumbs) + len(pairs) == 9
    one_class = [row for row in thumbs if row["label"] == "desirable"]
    assert one_class and judgeable_examples(one_class, pairs) == len(pairs)
    assert judgeable_examples(one_class, []) == 0  # an AUC needs both classes: the worker scores none of it


def test_the_hand_written_conversations_give_every_kind_of_feedback():
    kinds: dict[str, int] = {}
    for data in load_conversations():
        made = ticket_to_example(ticket_from_dict(data), "system")
        for kind in feedback_kinds(made.feedback if isinstance(made, Example) else None):
            kinds[kind] = kinds.get(kind, 0) + 1
    edited = sum(1 for data in load_conversations()
                 if (data.get("ai_assist") or {}).get("outcome") in ("edited", "discarded"))
    assert kinds["desirable"] > 100 and kinds["undesirable"] > 30 and kinds["pair"] == edited


def test_produce_sample_feedback_spreads_csat_with_answer_quality_and_makes_drafts_of_every_outcome():
    plain = generate_tickets(300, seed=3)
    tickets = generate_tickets(300, seed=3, feedback=True)
    assert all("ai_assist" not in t for t in plain)
    assert [t["ticket_id"] for t in tickets] == [t["ticket_id"] for t in plain]
    outcomes = {t["ai_assist"]["outcome"] for t in tickets if "ai_assist" in t}
    assert outcomes == {"sent_as_is", "edited", "discarded"}
    csats = [t["csat"] for t in tickets if t["csat"] is not None]
    assert min(csats) == 1 and max(csats) == 5
    examples = [ticket_to_example(ticket_from_dict(t), "system") for t in tickets]
    kinds = [k for e in examples if isinstance(e, Example) for k in feedback_kinds(e.feedback)]
    assert kinds.count("pair") > 20 and kinds.count("undesirable") > 40 and kinds.count("desirable") > 100
