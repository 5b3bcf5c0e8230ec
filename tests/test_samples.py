"""Sample tickets: the canonical shape, determinism, realistic skips and corruption, and that the
scrubber removes every piece of personal data the generator puts in them."""

import collections
import json
import re

import pytest

from daemon.demo.samples import CORRUPTED_TAG, INTENTS, STREETS, generate_revision, generate_tickets
from daemon.ingest.pairs import (
    SKIP_EMPTY_BODY,
    SKIP_NO_AGENT_ANSWER,
    SKIP_NOT_RESOLVED,
    Example,
    Skip,
    ticket_to_example,
)
from daemon.ingest.privacy import PLACEHOLDERS, luhn_valid, scrubber_for_ticket
from daemon.tickets import parse_canonical, ticket_from_dict

STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
TICKET_KEYS = {"ticket_id", "status", "channel", "subject", "category", "tags", "language", "csat",
               "created_at", "resolved_at", "updated_at", "requester", "messages"}
MESSAGE_KEYS = {"author_role", "author_name", "public", "body", "created_at"}
# Independent of daemon.ingest.privacy: the shapes the generator writes phones, cards and streets in.
PHONE = re.compile(r"\+\d{1,3}[ \d()-]{6,}\d|\(\d{3}\) \d{3}-\d{4}|(?<!\d)\d{3}[-.]\d{3}[-.]\d{4}(?!\d)")
CARD = re.compile(r"(?<!\d)\d{4} \d{4} \d{4} \d{4}(?!\d)")
STREET = re.compile(r"\d+ (?:" + "|".join(STREETS) + ")")
INTENTS_BY_NAME = {intent.name: intent for intent in INTENTS}


@pytest.fixture(scope="module")
def tickets() -> list[dict]:
    return generate_tickets(2000, seed=7, corrupt_fraction=0.1)


@pytest.fixture(scope="module")
def examples(tickets) -> list[tuple[dict, Example | Skip]]:
    return [(raw, ticket_to_example(ticket_from_dict(raw), "You are a support agent.")) for raw in tickets]


def test_same_seed_same_tickets_other_seed_other_tickets():
    first = generate_tickets(60, seed=3, corrupt_fraction=0.2)
    assert first == generate_tickets(60, seed=3, corrupt_fraction=0.2)
    assert generate_tickets(60, seed=3) != generate_tickets(60, seed=4)


def test_a_tickets_content_depends_only_on_seed_and_id():
    assert generate_tickets(20, seed=1) == generate_tickets(50, seed=1)[:20]
    assert generate_tickets(10, seed=1, start_id=10005) == generate_tickets(15, seed=1)[5:]


def test_ids_count_up_from_start_id_as_strings():
    assert [t["ticket_id"] for t in generate_tickets(3, start_id=500)] == ["500", "501", "502"]
    assert generate_tickets(0) == []


def test_every_ticket_has_exactly_the_canonical_shape(tickets):
    for ticket in tickets:
        assert set(ticket) == TICKET_KEYS
        assert isinstance(ticket["ticket_id"], str)
        assert set(ticket["requester"]) == {"id", "name", "email"}
        assert re.fullmatch(r"[\w.+]+@(mail\.)?example\.(com|org|net)", ticket["requester"]["email"])
        assert STAMP.fullmatch(ticket["created_at"]) and STAMP.fullmatch(ticket["updated_at"])
        assert ticket["resolved_at"] is None or STAMP.fullmatch(ticket["resolved_at"])
        assert ticket["language"] == "en" and ticket["tags"]
        for message in ticket["messages"]:
            assert set(message) == MESSAGE_KEYS
            assert message["author_role"] in {"customer", "agent", "bot", "system"}
            assert STAMP.fullmatch(message["created_at"])
        stamps = [m["created_at"] for m in ticket["messages"]]
        assert stamps == sorted(stamps) and stamps[0] == ticket["created_at"] <= ticket["updated_at"]


def test_every_ticket_parses_as_json_bytes_and_as_a_dict(tickets):
    for raw in tickets:
        assert parse_canonical(json.dumps(raw).encode("utf-8")) == ticket_from_dict(raw)


def test_at_least_eight_intents_each_with_its_category_appear(tickets):
    seen = collections.Counter(t["tags"][0] for t in tickets)
    assert len(INTENTS) >= 8 and set(seen) == {intent.name for intent in INTENTS}
    category = {intent.name: intent.category for intent in INTENTS}
    assert all(t["category"] == category[t["tags"][0]] for t in tickets)
    assert min(seen.values()) > 100


def test_shares_of_the_tickets_pairs_skips(examples):
    reasons = collections.Counter(r.reason if isinstance(r, Skip) else "example" for _, r in examples)
    share = {reason: count / len(examples) for reason, count in reasons.items()}
    assert 0.03 <= share[SKIP_NOT_RESOLVED] <= 0.07
    assert 0.015 <= share[SKIP_NO_AGENT_ANSWER] <= 0.045
    assert 0.003 <= share[SKIP_EMPTY_BODY] <= 0.02
    assert set(reasons) == {"example", SKIP_NOT_RESOLVED, SKIP_NO_AGENT_ANSWER, SKIP_EMPTY_BODY}


def test_the_tickets_look_like_a_real_helpdesk(tickets, examples):
    messages = [m for t in tickets for m in t["messages"]]
    assert any(m["author_role"] == "bot" for m in messages)
    assert any(m["author_role"] == "system" for m in messages)
    assert sum(m["author_role"] == "agent" and not m["public"] for m in messages) > len(tickets) / 3
    multi_turn = [r for _, r in examples if isinstance(r, Example) and len(r.messages) >= 5]
    assert len(multi_turn) > len(tickets) / 10
    bodies = " ".join(m["body"] for m in messages)
    assert any(luhn_valid(card.replace(" ", "")) for card in CARD.findall(bodies))
    long_orders = re.findall(r"order (\d{16})", bodies)
    assert long_orders and not any(luhn_valid(number) for number in long_orders)


def template_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\{\w+\\}", ".+?", re.escape(template)))


def test_agent_answers_are_forty_to_eighty_words_in_the_style_of_their_intent(tickets):
    styles = {intent.name: [template_pattern(a) for a in intent.answers] for intent in INTENTS}
    checked = 0
    for ticket in tickets:
        if CORRUPTED_TAG in ticket["tags"]:
            continue
        public = [m for m in ticket["messages"] if m["author_role"] == "agent" and m["public"] and m["body"]]
        if public:
            words = len(public[0]["body"].split())
            assert 40 <= words <= 80, public[0]["body"]
            core = public[0]["body"].split("\n\n")[1]
            assert any(p.fullmatch(core) for p in styles[ticket["tags"][0]]), core
            checked += 1
    assert checked > 1500


def test_corrupt_fraction_marks_that_share_of_answered_tickets_and_changes_only_their_answers():
    clean = generate_tickets(400, seed=5)
    poisoned = generate_tickets(400, seed=5, corrupt_fraction=0.25)
    answered = [t for t in clean if isinstance(ticket_to_example(ticket_from_dict(t)), Example)]
    corrupted = [t for t in poisoned if CORRUPTED_TAG in t["tags"]]
    assert len(corrupted) == round(0.25 * len(answered))
    by_id = {t["ticket_id"]: t for t in clean}
    for ticket in poisoned:
        original = by_id[ticket["ticket_id"]]
        if CORRUPTED_TAG not in ticket["tags"]:
            assert ticket == original
            continue
        example = ticket_to_example(ticket_from_dict(ticket))
        assert isinstance(example, Example)
        wrong = [m["body"] for m in ticket["messages"] if m["author_role"] == "agent" and m["public"]]
        right = [m["body"] for m in original["messages"] if m["author_role"] == "agent" and m["public"]]
        assert wrong and wrong[0] != right[0]
        own_style = [template_pattern(a) for a in INTENTS_BY_NAME[ticket["tags"][0]].answers]
        assert not any(p.search(wrong[0]) for p in own_style), wrong[0]
        assert ticket["messages"][0] == original["messages"][0]  # the question stays
    all_corrupted = generate_tickets(400, seed=5, corrupt_fraction=1.0)
    assert sum(CORRUPTED_TAG in t["tags"] for t in all_corrupted) == len(answered)
    with pytest.raises(ValueError):
        generate_tickets(10, corrupt_fraction=1.5)


def test_no_personal_data_from_the_generated_tickets_survives_into_examples(examples):
    checked = 0
    for raw, result in examples:
        if not isinstance(result, Example):
            continue
        text = result.to_json()
        requester = raw["requester"]
        assert requester["name"].casefold() not in text.casefold()
        assert requester["email"].casefold() not in text.casefold()
        agents = [m["author_name"] for m in raw["messages"] if m["author_role"] == "agent"]
        people = [requester["name"], *agents]
        parts = {part for person in people for part in person.split() if not part.islower()}  # not "de la"
        for part in parts:
            assert not re.search(rf"(?<!\w){re.escape(part)}(?!\w)", text), (part, raw["ticket_id"])
        bodies = "\n".join(m["body"] for m in raw["messages"])
        for pii in PHONE.findall(bodies) + CARD.findall(bodies) + STREET.findall(bodies):
            if not luhn_valid(pii.replace(" ", "")) and CARD.fullmatch(pii):
                continue
            assert pii not in text, (pii, raw["ticket_id"])
        for email in re.findall(r"[\w.+-]+@[\w.-]+\.\w+", bodies):
            assert email not in text
        assert set(result.placeholders) <= set(PLACEHOLDERS)
        checked += 1
    assert checked > 1500


def test_internal_notes_bots_and_system_messages_never_reach_an_example(examples):
    for raw, result in examples:
        if not isinstance(result, Example):
            continue
        scrubber = scrubber_for_ticket(ticket_from_dict(raw))
        text = result.to_json()
        for message in raw["messages"]:
            hidden = message["author_role"] in ("bot", "system") or not message["public"]
            if hidden and message["body"]:
                assert json.dumps(scrubber.scrub(message["body"]), ensure_ascii=False)[1:-1] not in text


def test_order_numbers_are_not_scrubbed(examples):
    kept = 0
    for raw, result in examples:
        match = re.search(r"order #?(\d{4,16})", raw["messages"][0]["body"])
        if isinstance(result, Example) and match:
            assert match.group(1) in result.messages[1]["content"], raw["ticket_id"]
            kept += 1
    assert kept > 500


def test_a_revision_is_later_has_one_more_public_agent_message_and_replaces_the_original():
    for original in generate_tickets(120, seed=2):
        before = json.dumps(original)
        revised = generate_revision(original)
        assert json.dumps(original) == before  # the original is not modified
        assert revised == generate_revision(original)
        assert revised["ticket_id"] == original["ticket_id"]
        assert len(revised["messages"]) == len(original["messages"]) + 1
        added = revised["messages"][-1]
        assert added["author_role"] == "agent" and added["public"] and added["body"]
        assert ticket_from_dict(revised).revision > ticket_from_dict(original).revision
        assert ticket_from_dict(revised).is_resolved
        result = ticket_to_example(ticket_from_dict(revised))
        if isinstance(result, Example):
            assert "no further action is needed" in result.messages[-1]["content"]
            assert original["requester"]["name"].split()[0] not in result.to_json()
