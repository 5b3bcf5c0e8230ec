from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from daemon.config import ConfigError, QualityConfig, load_settings
from daemon.demo.samples import generate_tickets
from daemon.ingest import filters
from daemon.ingest.filters import (
    REASON_AUTOMATED,
    REASON_EXACT_DUPLICATE,
    REASON_LANGUAGE,
    REASON_LOW_CSAT,
    REASON_NEAR_DUPLICATE,
    REASON_TOO_LONG,
    REASON_TOO_SHORT,
    QualityFilter,
    TokenCounter,
    example_signature,
    tokenizer_json_for,
)
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.tickets import Ticket

ANSWER = (
    "Hi <CUSTOMER_FIRST_NAME>,\n\nI've issued a full refund of $42 for order 1182. It goes back to your original "
    "payment method, and most banks show it within 5-10 business days. You'll also get a confirmation email "
    "shortly. If it hasn't appeared after 10 business days, reply here and we'll trace it with your bank.\n\n"
    "The original shipping fee is included in the refund, because the return was approved. Return labels we "
    "provide are always free, so there is nothing more you need to pay or do.\n\nIf you would like a replacement "
    "instead, you can place a new order at any time and we will ship it with free express delivery. Store credit "
    "is also possible: it is added to your account within one business day and never expires, and you can use "
    "it on any product in our shop, including items on sale. Let me know if you have any other questions about "
    "this order or anything else, I'm happy to help.\n\nBest regards,\n<AGENT_FIRST_NAME>"
)
QUESTION = "I returned the blender from order 1182 last week and I'd like my refund please."


def example(ticket_id: str = "1", question: str = QUESTION, answer: str = ANSWER, revision: str = "r1") -> Example:
    return Example(
        ticket_id=ticket_id,
        revision=revision,
        messages=[
            {"role": "system", "content": "You are a helpful customer support agent."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    )


def ticket(**fields) -> Ticket:
    data = {"ticket_id": "7", "status": "solved", "messages": [{"author_role": "customer", "body": "hi"}]}
    return Ticket.model_validate(data | fields)


def quality(**settings) -> QualityFilter:
    return QualityFilter(QualityConfig(**settings), None)


def accept(qf: QualityFilter, ex: Example) -> str | None:
    """What the ingest loop does: judge, then record what it keeps."""
    reason, signed = qf.judge(ex)
    if reason is None:
        qf.record(signed)
    return reason


def test_csat_below_minimum_is_dropped_and_missing_rating_passes_unless_required() -> None:
    qf = quality(min_csat=4)
    assert qf.check_ticket(ticket(csat=3)) == REASON_LOW_CSAT
    assert qf.check_ticket(ticket(csat=4)) is None
    assert qf.check_ticket(ticket()) is None
    assert quality(min_csat=4, require_csat=True).check_ticket(ticket()) == REASON_LOW_CSAT
    assert quality().check_ticket(ticket(csat=1)) is None


def test_language_outside_the_allow_list_is_dropped() -> None:
    qf = quality(languages=["en", "de"])
    assert qf.check_ticket(ticket(language="fr")) == REASON_LANGUAGE
    assert qf.check_ticket(ticket(language="EN")) is None
    assert qf.check_ticket(ticket(language="en-GB")) is None
    assert qf.check_ticket(ticket()) is None
    assert quality(languages=["en"], require_language=True).check_ticket(ticket()) == REASON_LANGUAGE


def test_min_tokens_above_max_tokens_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("quality: {min_tokens: 100, max_tokens: 10}\n")
    with pytest.raises(ConfigError, match="quality"):
        load_settings(config, environ={})


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        ["I returned the blender and I'd like my refund please.", "Your refund is on its way."],
        trainers.WordLevelTrainer(special_tokens=["[UNK]"]),
    )
    path = tmp_path_factory.mktemp("base") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_token_counter_counts_with_the_base_models_tokenizer_json(tiny_tokenizer: Path) -> None:
    counter = TokenCounter(tiny_tokenizer)
    assert counter.exact
    messages = [{"role": "user", "content": "my refund please"}, {"role": "assistant", "content": "Your refund!"}]
    # 3 + 3 word-level tokens, plus bos and 4 template tokens per turn
    assert counter.count(messages) == 6 + 1 + 4 * 2
    assert tokenizer_json_for(str(tiny_tokenizer.parent)) == tiny_tokenizer


def test_token_counter_falls_back_to_chars_over_4_and_says_so(tmp_path: Path, caplog) -> None:
    assert tokenizer_json_for("meta-llama/Llama-3.2-1B") is None
    with caplog.at_level(logging.INFO, logger="daemon.ingest.filters"):
        counter = TokenCounter(tmp_path / "missing" / "tokenizer.json")
    assert not counter.exact
    assert "characters/4" in caplog.text
    assert counter.count([{"role": "user", "content": "x" * 400}]) == 100 + 1 + 4


def test_examples_outside_the_token_range_are_dropped(tiny_tokenizer: Path) -> None:
    qf = QualityFilter(QualityConfig(min_tokens=30, max_tokens=60), tiny_tokenizer)
    assert qf.check_example(example(question="refund?", answer="Done.")) == REASON_TOO_SHORT
    assert qf.check_example(example(answer="refund " * 80)) == REASON_TOO_LONG
    assert qf.check_example(example(answer="Your refund is on its way and shows in a few days.")) is None
    # the system prompt counts: it is part of what the model is trained on
    assert QualityFilter(QualityConfig(min_tokens=10), tiny_tokenizer).check_example(example(answer="ok")) is None


def test_an_example_whose_answers_are_all_auto_replies_is_dropped() -> None:
    qf = quality()
    auto = (
        "Hi <CUSTOMER_FIRST_NAME>,\n\nThis is an automated message: we have received your request.\n"
        "An agent will reply within 24 hours."
    )
    assert qf.check_example(example(answer=auto)) == REASON_AUTOMATED
    assert qf.check_example(example(answer="Please do not reply to this email.")) == REASON_AUTOMATED
    two_turns = example(answer="Your request #1182 has been received.")
    two_turns.messages.extend([{"role": "user", "content": "ok?"}, {"role": "assistant", "content": ANSWER}])
    assert qf.check_example(two_turns) is None
    assert qf.check_example(example(answer=ANSWER)) is None
    # a real answer that merely carries a no-reply footer is kept
    assert qf.check_example(example(answer=ANSWER + "\n\nPlease do not reply to this email.")) is None
    assert quality(drop_bot_only=False).check_example(example(answer=auto)) is None


def test_exact_duplicate_of_another_ticket_is_dropped_but_a_revision_of_the_same_ticket_is_not() -> None:
    qf = quality()
    assert accept(qf, example("1")) is None
    assert qf.check_example(example("1", revision="r2")) is None
    assert qf.check_example(example("2", question="  " + QUESTION.upper())) == REASON_EXACT_DUPLICATE
    assert quality(dedupe_exact=False, dedupe_near=False).check_example(example("2")) is None


def test_a_templated_answer_with_one_changed_word_is_a_near_duplicate_and_another_intent_is_not() -> None:
    qf = quality()
    assert accept(qf, example("1")) is None
    assert qf.check_example(example("2", answer=ANSWER.replace("shortly", "soon"))) == REASON_NEAR_DUPLICATE
    other = (
        "Hello <CUSTOMER_FIRST_NAME>,\n\nI've sent a fresh password reset link to the email on your account. "
        "The link is valid for 60 minutes, so please use it soon. If you don't see it within a few minutes, "
        "check your spam or promotions folder.\n\nBest regards,\n<AGENT_FIRST_NAME>"
    )
    login = "I can't log in, the reset link never arrives."
    assert qf.check_example(example("3", question=login, answer=other)) is None
    assert quality(dedupe_near=False).check_example(example("2", answer=ANSWER.replace("shortly", "soon"))) is None


def test_second_near_identical_example_of_one_batch_is_caught_once_the_first_is_remembered() -> None:
    qf = quality()
    first, second = example("1"), example("2", answer=ANSWER.replace("$42", "$43"))
    assert [accept(qf, first), accept(qf, second)] == [None, REASON_NEAR_DUPLICATE]


def test_forgetting_a_deleted_ticket_frees_its_text() -> None:
    qf = quality()
    accept(qf, example("1"))
    qf.forget("1")
    assert qf.check_example(example("2")) is None
    assert len(qf) == 0


def test_index_rebuilt_from_stored_signatures_after_a_restart_still_catches_duplicates() -> None:
    before = quality()
    stored = [example("1"), example("2", question="Where is my order 5521?", answer="It ships tomorrow with UPS.")]
    rows = []
    for ex in stored:
        reason, signed = before.judge(ex)
        assert reason is None
        before.record(signed)
        rows.append((ex.ticket_id, signed.quality_signature))
    assert rows[0][1] == example_signature(stored[0])

    after = quality()
    assert after.load(rows + [("3", None), ("4", b"\x00old")]) == 2
    assert after.check_example(example("9")) == REASON_EXACT_DUPLICATE
    assert after.check_example(example("9", answer=ANSWER.replace("shortly", "soon"))) == REASON_NEAR_DUPLICATE
    assert after.check_example(example("1", revision="r2")) is None


def test_default_config_keeps_the_demo_samples() -> None:
    qf = quality()
    examples, dropped = 0, Counter()
    for data in generate_tickets(300):
        item = ticket_to_example(Ticket.model_validate(data), "You are a helpful customer support agent.")
        if not isinstance(item, Example):
            continue
        examples += 1
        reason = qf.check_ticket(Ticket.model_validate(data)) or accept(qf, item)
        if reason:
            dropped[reason] += 1
    assert examples > 250
    assert sum(dropped.values()) <= 0.05 * examples, dropped


def test_the_store_backed_index_decides_as_the_in_memory_one_and_holds_no_stored_example_in_memory(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from daemon.store import Deletion, ExampleStore

    variants = [example(str(i), answer=ANSWER.replace("$42", f"${40 + i}")) for i in range(3)]  # near copies
    stream = [example("a"), *variants, example("b", question="  " + QUESTION.upper())]  # b: an exact copy of a
    for data in generate_tickets(120, seed=4):
        item = ticket_to_example(Ticket.model_validate(data), None)
        if isinstance(item, Example):
            stream.append(item)
    in_memory = quality()
    store = ExampleStore(tmp_path / "examples.db")
    backed = QualityFilter(QualityConfig(), None, store=store)
    assert backed.load(()) == 0
    decisions: list[tuple[str | None, str | None]] = []
    for begin in range(0, len(stream), 25):  # batches, as the ingest loop writes them
        changes = []
        for ex in stream[begin:begin + 25]:
            expected, (got, signed) = accept(in_memory, ex), backed.judge(ex)
            if got is None:
                assert signed.dedupe_keys  # the store writes them with the example
                changes.append(signed)
                backed.record(signed)
            decisions.append((expected, got))
        store.apply(changes)
        backed.committed()
        assert len(backed) == 0  # what is stored is looked up in the store, not kept in memory
    assert [got for _, got in decisions] == [expected for expected, _ in decisions]
    reasons = Counter(got for _, got in decisions)
    assert reasons[REASON_NEAR_DUPLICATE] >= 2 and reasons[REASON_EXACT_DUPLICATE] >= 2  # $42 is a's own copy

    # a restart: a new filter on the same store catches copies of what was stored before it started
    reopened = ExampleStore(tmp_path / "examples.db")
    after = QualityFilter(QualityConfig(), None, store=reopened)
    assert after.load(()) == sum(1 for _, got in decisions if got is None)
    assert after.check_example(example("x")) == REASON_EXACT_DUPLICATE
    assert after.check_example(example("y", answer=ANSWER.replace("shortly", "soon"))) == REASON_NEAR_DUPLICATE
    # a deleted ticket frees its text, in the batch that deletes it and after it is written
    after.forget("a")
    assert after.check_example(example("x")) is None
    reopened.apply([Deletion("a")])
    after.committed()
    assert after.check_example(example("x")) is None
    assert after.check_example(example("y", answer=ANSWER.replace("shortly", "soon"))) is None  # its copies: skipped
    # another threshold rebuilds the band table for its own LSH layout, and it still finds stored copies
    looser = QualityFilter(QualityConfig(near_duplicate_threshold=0.7), None, store=reopened)
    stored_ids = [row[0] for row in reopened._db.execute("SELECT ticket_id FROM examples")]
    assert looser.load(()) == len(stored_ids) == len(reopened.signatures_of(stored_ids))
    kept = next(ex for ex, (_, got) in zip(stream, decisions, strict=True) if got is None and ex.ticket_id != "a")
    messages = [dict(m) for m in kept.messages]
    messages[-1]["content"] += " Thanks again."
    assert looser.check_example(replace(kept, ticket_id="copy", messages=messages)) == REASON_NEAR_DUPLICATE


def test_a_redelivered_older_revision_does_not_shadow_what_the_store_holds(tmp_path: Path) -> None:
    """After a crash a batch comes again: ticket 1's first revision, which the store already replaced,
    must not make a later ticket that copies only that old text a duplicate (the store keeps neither)."""
    from daemon.store import ExampleStore

    store = ExampleStore(tmp_path / "examples.db")
    qf = QualityFilter(QualityConfig(), None, store=store)
    qf.load(())
    other = ("Hello <CUSTOMER_FIRST_NAME>, your parcel left our warehouse today and arrives on Friday with DHL. "
             "The tracking link in your confirmation email works from tonight.\n\nBest regards,\n<AGENT_FIRST_NAME>")
    newer = example("1", question="Where is my parcel?", answer=other, revision="r2")
    reason, signed = qf.judge(newer)
    assert reason is None
    store.apply([signed])
    qf.committed()
    older = example("1", revision="r1")  # the refund text, redelivered
    reason, signed = qf.judge(older)
    assert reason is None
    qf.record(signed)
    assert qf.check_example(example("2", answer=ANSWER.replace("shortly", "soon"))) is None
    assert qf.check_example(example("3", question="Where is my parcel?", answer=other)) == REASON_EXACT_DUPLICATE


def test_signatures_stay_those_the_store_already_holds() -> None:
    # stored signatures are compared with new ones: these are what every earlier version computed
    german = "Ich habe die Bestellung 1182 zurückgeschickt, Straße 5; wo bleibt mein Geld? Ça va, MÜLLER_K."
    assert hashlib.sha256(example_signature(example("1"))).hexdigest() == \
        "ea67961a8ceae8cacd4b0b7c0a8678de8759349145ae06c5ad66c3bb303ae18d"
    assert hashlib.sha256(example_signature(example("1", question=german))).hexdigest() == \
        "166addfdaad87771579bc4e9122b8db03089111c76043d46baaf70f79dc7b419"


@pytest.mark.parametrize("text", [
    ("".join(map(chr, range(128))) * 2).lower() + " order_1182 a-b c.d e\x00f <customer_name> __ 9_",
    "ça coûte 12€, straße_5 und <customer_name> ñ",
])
def test_the_signatures_word_split_finds_the_words_the_word_pattern_finds(text: str) -> None:
    expected = [word.encode() for word in filters._WORDS.findall(text)]
    assert filters._words(text, text.encode()) == expected


def test_judging_changes_nothing_only_recording_counts_an_example() -> None:
    qf = quality()
    reason, signed = qf.judge(example("1"))
    assert reason is None and signed.quality_signature == example_signature(example("1"))
    assert signed.dedupe_keys is None  # band keys are for a store's table: this filter has none
    assert qf.judge(example("1")) == (None, signed) and len(qf) == 0
    assert qf.check_example(example("2")) is None  # "1" was judged, not recorded
    qf.record(signed)
    assert qf.check_example(example("2")) == REASON_EXACT_DUPLICATE


def test_loading_a_store_signs_and_indexes_what_was_stored_without_and_restarts_a_rebuild_cut_short(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from daemon.store import ExampleStore

    store = ExampleStore(tmp_path / "examples.db")
    near = example("2", question="Where is my order 5521?", answer=ANSWER.replace("shortly", "soon"))
    outdated = example("3", question="Can I change my address?", answer=ANSWER.replace("$42", "$17"))
    # no filter, an in-memory one (a signature, no band keys), a signature of an older version
    store.apply([example("1"), replace(near, quality_signature=example_signature(near)),
                 replace(outdated, quality_signature=b"\x01old")])
    qf = QualityFilter(QualityConfig(), None, store=store)
    assert store.band_layout() is None
    assert qf.load(()) == 3 and store.band_layout() == qf.layout
    assert store.signatures_of(["1", "3"]) == {"1": example_signature(example("1")),
                                               "3": example_signature(outdated)}
    assert qf.check_example(example("9")) == REASON_EXACT_DUPLICATE
    assert qf.check_example(replace(near, ticket_id="9")) == REASON_EXACT_DUPLICATE
    assert qf.check_example(replace(outdated, ticket_id="9")) == REASON_EXACT_DUPLICATE  # signed again
    assert qf.check_example(example("9", question="Where is my order 5521?", answer=ANSWER)) == REASON_NEAR_DUPLICATE

    # a rebuild for another threshold that a crash cut short: the layout is not recorded, so it starts again
    looser = QualityFilter(QualityConfig(near_duplicate_threshold=0.7), None, store=store)
    assert looser.layout != qf.layout
    store.clear_bands()
    store.set_band_keys([("1", [0] * 3)])  # what the first rebuild got to write (and some of it wrong)
    assert looser.load(()) == 3 and store.band_layout() == looser.layout
    assert store.band_candidates([0, 0, 0]) == set()
    assert looser.check_example(example("9", question="Where is my order 5521?", answer=ANSWER)) \
        == REASON_NEAR_DUPLICATE
