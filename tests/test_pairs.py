"""Ticket → chat example: turn mapping, skip reasons, and personal data gone from the result."""

from daemon.ingest.pairs import (
    SKIP_EMPTY_BODY,
    SKIP_NO_AGENT_ANSWER,
    SKIP_NO_CUSTOMER_MESSAGE,
    SKIP_NOT_RESOLVED,
    Example,
    Skip,
    group_key_for,
    ticket_to_example,
)
from daemon.tickets import Ticket, ticket_from_dict


def msg(role: str, body: str, public: bool = True, name: str | None = None, email: str | None = None) -> dict:
    default_names = {"customer": "Ana Ruiz", "agent": "Sam Lee", "bot": "HelpBot", "system": None}
    return {"author_role": role, "author_name": name or default_names[role], "author_email": email,
            "public": public, "body": body}


def ticket(*messages: dict, status: str = "solved", **fields: object) -> Ticket:
    data = {
        "ticket_id": "t-1",
        "status": status,
        "category": "billing",
        "language": "en",
        "resolved_at": "2026-11-02T12:01:00Z",
        "requester": {"id": "u-1", "name": "Ana Ruiz", "email": "ana.ruiz@example.com"},
        "messages": list(messages),
    }
    data.update(fields)
    return ticket_from_dict(data)


def example_of(t: Ticket, system_prompt: str | None = None) -> Example:
    result = ticket_to_example(t, system_prompt)
    assert isinstance(result, Example), result
    return result


def roles(example: Example) -> list[str]:
    return [m["role"] for m in example.messages]


def test_consecutive_messages_of_one_role_merge_into_one_turn():
    example = example_of(ticket(
        msg("customer", "My order is late."),
        msg("customer", "It was order 1182."),
        msg("agent", "Checking now."),
        msg("agent", "It ships tomorrow."),
    ))
    assert roles(example) == ["user", "assistant"]
    assert example.messages[0]["content"] == "My order is late.\n\nIt was order 1182."
    assert example.messages[1]["content"] == "Checking now.\n\nIt ships tomorrow."


def test_multi_turn_exchanges_keep_their_order():
    example = example_of(ticket(
        msg("customer", "Refund please."),
        msg("agent", "Refund sent."),
        msg("customer", "Shipping too?"),
        msg("agent", "Yes, shipping too."),
    ))
    assert roles(example) == ["user", "assistant", "user", "assistant"]
    assert example.messages[3]["content"] == "Yes, shipping too."


def test_internal_notes_never_appear_and_do_not_split_a_turn():
    example = example_of(ticket(
        msg("customer", "Refund please."),
        msg("agent", "Two chargebacks already, flag for fraud review.", public=False),
        msg("agent", "Refund sent."),
        msg("agent", "Supervisor approved over the limit.", public=False),
        msg("agent", "It shows in 5 days."),
    ))
    assert roles(example) == ["user", "assistant"]
    text = example.to_json()
    assert "chargebacks" not in text and "fraud" not in text and "Supervisor" not in text
    assert example.messages[1]["content"] == "Refund sent.\n\nIt shows in 5 days."


def test_bot_and_system_messages_are_never_assistant_turns():
    example = example_of(ticket(
        msg("customer", "Where is my parcel?"),
        msg("bot", "Thanks for contacting us! An agent will reply soon."),
        msg("system", "Ticket assigned to Sam Lee."),
        msg("agent", "It arrives Friday."),
        msg("bot", "Was this answer helpful?"),
    ))
    assert roles(example) == ["user", "assistant"]
    assert example.messages[1]["content"] == "It arrives Friday."
    assert "helpful" not in example.to_json() and "assigned" not in example.to_json()


def test_a_ticket_answered_only_by_a_bot_has_no_agent_answer():
    result = ticket_to_example(ticket(msg("customer", "Help?"), msg("bot", "Try our help center.")))
    assert result == Skip("t-1", SKIP_NO_AGENT_ANSWER)


def test_customer_turns_after_the_last_agent_answer_are_dropped():
    example = example_of(ticket(
        msg("customer", "Refund please."),
        msg("agent", "Refund sent."),
        msg("customer", "Thanks, that worked!"),
    ))
    assert roles(example) == ["user", "assistant"]
    assert "worked" not in example.to_json()


def test_an_agent_opening_before_any_question_is_dropped():
    example = example_of(ticket(
        msg("agent", "Hi, following up on your call."),
        msg("customer", "Yes, where is my refund?"),
        msg("agent", "Refund sent."),
    ))
    assert roles(example) == ["user", "assistant"]
    assert "following up" not in example.to_json()


def test_skip_not_resolved():
    for status in ("open", "pending", "new", "on-hold"):
        result = ticket_to_example(ticket(msg("customer", "Hi"), msg("agent", "Hello"), status=status))
        assert result == Skip("t-1", SKIP_NOT_RESOLVED)


def test_skip_no_public_agent_answer():
    result = ticket_to_example(ticket(
        msg("customer", "Refund please."),
        msg("agent", "Duplicate, closing.", public=False),
    ))
    assert result == Skip("t-1", SKIP_NO_AGENT_ANSWER)


def test_skip_empty_body_when_the_only_answer_is_empty():
    result = ticket_to_example(ticket(msg("customer", "Refund please."), msg("agent", "   \n")))
    assert result == Skip("t-1", SKIP_EMPTY_BODY)


def test_skip_no_customer_message():
    result = ticket_to_example(ticket(msg("agent", "Your order shipped."), msg("bot", "Rate us!")))
    assert result == Skip("t-1", SKIP_NO_CUSTOMER_MESSAGE)


def test_an_empty_customer_message_beside_real_ones_is_just_left_out():
    t = ticket(msg("customer", "Refund please."), msg("customer", ""), msg("agent", "Sent."))
    example = example_of(t)
    assert example.messages[0]["content"] == "Refund please."


def test_system_prompt_is_the_first_message_only_when_given():
    t = ticket(msg("customer", "Refund please."), msg("agent", "Refund sent."))
    with_prompt = example_of(t, "You are a helpful support agent.")
    assert with_prompt.messages[0] == {"role": "system", "content": "You are a helpful support agent."}
    assert roles(with_prompt) == ["system", "user", "assistant"]
    assert roles(example_of(t)) == ["user", "assistant"]
    assert roles(example_of(t, "")) == ["user", "assistant"]


def test_example_carries_ticket_metadata():
    example = example_of(ticket(msg("customer", "Refund please."), msg("agent", "Refund sent."),
                                updated_at="2026-11-03T08:00:00Z"))
    assert example.ticket_id == "t-1"
    assert example.category == "billing" and example.language == "en"
    assert example.revision.startswith("2026-11-03T08:00:00")


def test_group_key_is_shared_by_one_requester_and_hides_the_identity():
    one = ticket(msg("customer", "a"), msg("agent", "b"))
    same_requester = ticket(msg("customer", "c"), msg("agent", "d"), ticket_id="t-2")
    other = ticket(msg("customer", "c"), msg("agent", "d"), ticket_id="t-3",
                   requester={"id": "u-2", "name": "Li Wu", "email": "li@example.com"})
    assert group_key_for(one) == group_key_for(same_requester) != group_key_for(other)
    assert "u-1" not in group_key_for(one)


PII_TICKET = ticket(
    msg("customer",
        "Hi, this is Ana Ruiz. I was charged twice on my card 4111 1111 1111 1111 for order 1182.\n"
        "You can call me at (212) 555-0199 or +44 20 7946 0958, or mail ana.ruiz@example.com "
        "or my work address ana@work.example.org.\n\nThanks,\nAna",
        email="ana.ruiz@example.com"),
    msg("agent", "Chargeback risk, card 4111 1111 1111 1111, phone (212) 555-0199.", public=False),
    msg("agent",
        "Hi Ana, I've refunded the duplicate charge for order 1182. Ana's refund shows in 5-10 days; "
        "write to sam.lee@support.example.com if not.\n\nBest,\nSam Lee",
        email="sam.lee@support.example.com"),
)
PII_STRINGS = (
    "Ana", "Ruiz", "ana.ruiz@example.com", "ana@work.example.org", "sam.lee@support.example.com", "Sam",
    "Lee", "4111 1111 1111 1111", "4111", "(212) 555-0199", "555-0199", "+44 20 7946 0958", "7946",
)


def test_personal_data_in_bodies_becomes_placeholders():
    example = example_of(PII_TICKET)
    user, assistant = example.messages[0]["content"], example.messages[1]["content"]
    assert user.startswith("Hi, this is <CUSTOMER_NAME>. I was charged twice on my card <CARD_NUMBER>")
    assert "call me at <PHONE> or <PHONE>" in user
    assert "mail <CUSTOMER_EMAIL> or my work address <EMAIL>" in user
    assert user.endswith("Thanks,\n<CUSTOMER_FIRST_NAME>")
    assert assistant.startswith("Hi <CUSTOMER_FIRST_NAME>, I've refunded the duplicate charge for order 1182")
    assert "<CUSTOMER_FIRST_NAME>'s refund" in assistant
    assert "write to <AGENT_EMAIL> if not" in assistant
    assert assistant.endswith("Best,\n<AGENT_NAME>")


def test_no_original_personal_data_string_survives_anywhere_in_the_json():
    text = example_of(PII_TICKET).to_json()
    for pii in PII_STRINGS:
        assert pii not in text, pii
    assert "order 1182" in text


def test_the_example_lists_the_placeholders_it_uses():
    example = example_of(PII_TICKET)
    assert example.placeholders == sorted({
        "<CUSTOMER_NAME>", "<CUSTOMER_FIRST_NAME>", "<CUSTOMER_EMAIL>", "<EMAIL>", "<PHONE>",
        "<CARD_NUMBER>", "<AGENT_EMAIL>", "<AGENT_NAME>",
    })
    assert example_of(ticket(msg("customer", "Refund?"), msg("agent", "Sent."))).placeholders == []


def test_a_signed_copy_is_what_dataclasses_replace_gives():
    from dataclasses import fields, replace

    example = Example(ticket_id="7", revision="r", messages=[{"role": "user", "content": "q"}], category="billing",
                      language="de", group_key="g", placeholders=["<EMAIL>"], identities=("email:a@b.c",),
                      feedback={"label": "desirable"}, sft=False)
    for keys in ((1, 2, 3), None):
        signed = example.signed(b"\x03signature", keys)
        expected = replace(example, quality_signature=b"\x03signature", dedupe_keys=keys)
        assert signed == expected and type(signed) is Example
        assert all(getattr(signed, f.name) is getattr(expected, f.name) for f in fields(Example))
    assert example.quality_signature is None and example.dedupe_keys is None  # the original is left as it was
    assert not hasattr(Example, "__post_init__")  # `signed` skips __init__: nothing may need to run there
