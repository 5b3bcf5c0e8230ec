"""The hand-written conversation set (tests/data/conversations/): every line is a canonical ticket that becomes a
chat example, and the set keeps the size, spread and variety that the tests built on it count on."""

from __future__ import annotations

import difflib
import itertools
import json
import re
import statistics
from collections import Counter
from datetime import datetime, timezone

import pytest
from conversations import CONVERSATIONS_DIR, conversation_themes, load_conversations

from daemon.ingest.pairs import Example, ticket_to_example
from daemon.tickets import Role, Ticket, parse_canonical

MIN_TICKETS = 220
MIN_CATEGORIES = 8
MIN_PER_CSAT_VALUE = 10
MIN_DRAFTS = 60
MAX_EDITED_DRAFT_SIMILARITY = 0.9  # difflib ratio between an edited draft and the answer sent instead
MAX_SHARED_5GRAMS = 0.5  # of the smaller message's word 5-grams, between any two first customer messages
MIN_DISTINCT_3GRAM_SHARE = 0.75  # distinct word 3-grams / all word 3-grams, over every public agent answer
CHANNELS = {"email", "chat", "web"}
LANGUAGES = {"en", "de", "fr", "es"}
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
_WORD = re.compile(r"\w+")
_EMAIL = re.compile(r"[\w.%+-]+@([\w-]+(?:\.[\w-]+)+)")
_FICTIONAL_PHONE = re.compile(r"\+1 \d{3} 555 01\d\d|07700 900\d{3}")
SYSTEM_PROMPT = "You are a Kettlebrook support agent."


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    return load_conversations()


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, dict, Ticket]]:
    """(theme, the line's JSON, what the canonical parser makes of the line's bytes) for every line of every file."""
    found = []
    for path in sorted(CONVERSATIONS_DIR.glob("*.jsonl")):
        lines = path.read_bytes().splitlines()
        assert lines, f"{path.name} is empty"
        for number, line in enumerate(lines, start=1):
            assert line.strip(), f"{path.name}:{number} is blank"
            found.append((path.stem, json.loads(line), parse_canonical(line)))
    return found


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = _words(text)
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _first_public_answer(ticket: dict) -> str:
    return next(m["body"] for m in ticket["messages"] if m["author_role"] == "agent" and m["public"])


def _first_customer_message(ticket: dict) -> str:
    return next(m["body"] for m in ticket["messages"] if m["author_role"] == "customer")


def _exchanges(ticket: dict) -> int:
    """Customer message(s) followed by a public agent answer, counted."""
    count, previous = 0, None
    for message in ticket["messages"]:
        role = message["author_role"]
        if role == "agent" and message["public"]:
            count += previous == "customer"
            previous = "agent"
        elif role == "customer":
            previous = "customer"
    return count


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def test_every_line_is_a_resolved_canonical_ticket_of_its_file_s_theme(parsed):
    ids = [ticket.ticket_id for _, _, ticket in parsed]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for theme, data, ticket in parsed:
        assert ticket.category == theme, ticket.ticket_id
        assert re.fullmatch(r"c-\d{4}", ticket.ticket_id)
        assert ticket.is_resolved, ticket.ticket_id
        assert ticket.channel in CHANNELS, ticket.ticket_id
        assert ticket.language in LANGUAGES, ticket.ticket_id
        assert ticket.subject and ticket.requester and ticket.requester.email, ticket.ticket_id
        customers = {m.author_name for m in ticket.messages if m.author_role == Role.customer}
        assert customers == {ticket.requester.name}, ticket.ticket_id
        assert set(data) >= {"ticket_id", "status", "channel", "subject", "category", "tags", "language", "csat",
                             "created_at", "resolved_at", "requester", "messages"}


def test_nearly_every_ticket_becomes_a_chat_example(parsed):
    examples = [ticket_to_example(ticket, SYSTEM_PROMPT) for _, _, ticket in parsed]
    made = [example for example in examples if isinstance(example, Example)]
    assert len(made) >= 0.95 * len(parsed), Counter(getattr(e, "reason", "example") for e in examples)
    for example in made:
        roles = [m["role"] for m in example.messages]
        assert roles[0] == "system" and roles[1] == "user" and roles[-1] == "assistant", example.ticket_id
        assert all(roles[i] != roles[i + 1] for i in range(1, len(roles) - 1)), example.ticket_id


def test_internal_notes_and_bot_messages_never_reach_an_example(parsed):
    notes = bots = 0
    for _, data, ticket in parsed:
        example = ticket_to_example(ticket, scrub=False)
        assert isinstance(example, Example), ticket.ticket_id
        trained = "\n".join(m["content"] for m in example.messages)
        for message in data["messages"]:
            if message["author_role"] == "agent" and not message["public"]:
                notes += 1
                assert message["body"] not in trained, ticket.ticket_id
            elif message["author_role"] == "bot":
                bots += 1
                assert message["body"] not in trained, ticket.ticket_id
    assert notes >= 10 and bots >= 5


def test_size_categories_channels_and_languages(raw):
    assert len(raw) >= MIN_TICKETS
    categories = Counter(ticket["category"] for ticket in raw)
    assert len(categories) >= MIN_CATEGORIES, categories
    assert min(categories.values()) >= 10, categories
    assert set(categories) == set(conversation_themes())
    assert {ticket["channel"] for ticket in raw} == CHANNELS
    languages = Counter(ticket["language"] for ticket in raw)
    assert languages["en"] >= 0.9 * len(raw) and all(languages[lang] >= 2 for lang in ("de", "fr", "es")), languages


def test_csat_spread(raw):
    csat = Counter(ticket["csat"] for ticket in raw)
    assert set(csat) <= {None, 1, 2, 3, 4, 5}, csat
    assert all(csat[value] >= MIN_PER_CSAT_VALUE for value in range(1, 6)), csat
    assert csat[None] >= 5, csat
    assert csat[4] + csat[5] > len(raw) / 2, csat


def test_low_csat_answers_are_visibly_worse(raw):
    """The tickets a CSAT-aware curriculum learns from: the first answer on a 1-2 rating is curt far more often."""
    length = {rating: [len(_words(_first_public_answer(t))) for t in raw if t["csat"] in ratings]
              for rating, ratings in (("low", (1, 2)), ("top", (5,)))}
    assert statistics.median(length["low"]) < 0.5 * statistics.median(length["top"]), length


def test_ai_assist_drafts(raw):
    assisted = [ticket for ticket in raw if "ai_assist" in ticket]
    assert len(assisted) >= MIN_DRAFTS
    outcomes = Counter(ticket["ai_assist"]["outcome"] for ticket in assisted)
    assert set(outcomes) == {"sent_as_is", "edited", "discarded"} and min(outcomes.values()) >= 10, outcomes
    assert {ticket["ai_assist"]["model_version"] for ticket in assisted} == {"1", "2", "3", "4"}
    for ticket in assisted:
        assist = ticket["ai_assist"]
        assert assist["model_name"] == "ticketune-support", ticket["ticket_id"]
        sent = _first_public_answer(ticket)  # the draft is for the agent's first public reply
        similarity = difflib.SequenceMatcher(None, assist["draft"], sent).ratio()
        if assist["outcome"] == "sent_as_is":
            assert assist["draft"] == sent, ticket["ticket_id"]
        else:
            assert similarity < MAX_EDITED_DRAFT_SIMILARITY, (ticket["ticket_id"], round(similarity, 3))


def test_conversation_shapes(raw):
    multi_turn = sum(_exchanges(ticket) >= 2 for ticket in raw)
    assert all(_exchanges(ticket) >= 1 for ticket in raw)
    assert 0.2 * len(raw) <= multi_turn <= 0.45 * len(raw), multi_turn
    assert sum(_exchanges(ticket) >= 3 for ticket in raw) >= 5
    with_bot = [ticket for ticket in raw if any(m["author_role"] == "bot" for m in ticket["messages"])]
    assert len(with_bot) >= 5 and {ticket["channel"] for ticket in with_bot} == {"chat"}


def test_timestamps_are_in_order_and_in_autumn_2026(raw):
    start, end = datetime(2026, 8, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc)
    for ticket in raw:
        times = [_stamp(ticket["created_at"])]
        times += [_stamp(message["created_at"]) for message in ticket["messages"]]
        times.append(_stamp(ticket["resolved_at"]))
        assert times == sorted(times) and times[-1] > times[-2], ticket["ticket_id"]
        assert start <= times[0] and times[-1] < end, ticket["ticket_id"]


def test_first_customer_messages_are_not_templated(raw):
    grams = [(ticket["ticket_id"], set(_ngrams(_first_customer_message(ticket), 5))) for ticket in raw]
    for (a, first), (b, second) in itertools.combinations(grams, 2):
        if first and second:
            shared = len(first & second) / min(len(first), len(second))
            assert shared <= MAX_SHARED_5GRAMS, (a, b, round(shared, 2))


def test_agent_answers_are_varied(raw):
    answers = [(t["ticket_id"], m["body"]) for t in raw for m in t["messages"] if m["author_role"] == "agent"
               and m["public"]]
    repeated = [body for body, n in Counter(body for _, body in answers).items() if n > 1]
    assert not repeated, repeated
    grams = [gram for _, body in answers for gram in _ngrams(body, 3)]
    assert len(set(grams)) >= MIN_DISTINCT_3GRAM_SHARE * len(grams), (len(set(grams)), len(grams))


def test_personal_data_is_fictional():
    for path in sorted(CONVERSATIONS_DIR.glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        for domain in _EMAIL.findall(text):
            domain = domain.lower().rstrip(".")
            assert domain.endswith(EXAMPLE_DOMAINS) or domain.endswith(".example"), (path.name, domain)
    for ticket in load_conversations():
        phone = ticket["requester"].get("phone")
        assert phone is None or _FICTIONAL_PHONE.fullmatch(phone), (ticket["ticket_id"], phone)


def test_loader_is_deterministic_and_filters_by_theme(raw):
    assert load_conversations() == raw
    assert [t["ticket_id"] for t in raw] == sorted(t["ticket_id"] for t in raw)
    by_theme = [ticket for theme in conversation_themes() for ticket in load_conversations(theme)]
    assert sorted(by_theme, key=lambda t: t["ticket_id"]) == raw
    assert {ticket["category"] for ticket in load_conversations("billing")} == {"billing"}
    with pytest.raises(ValueError, match="no conversation theme"):
        load_conversations("no-such-theme")
