"""Helpdesk formats → canonical `Ticket`: roles, internal notes, CSAT on 1-5, clean bodies, clear errors."""

import copy
import json
from pathlib import Path
from typing import get_args

import pytest

from connectors.formats import FORMATS, parser_for
from connectors.formats.text import clean_body, html_to_text, strip_quoted_reply, strip_signature
from daemon.config import KafkaConfig
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.tickets import Role, Ticket, TicketParseError

DATA = Path(__file__).parent / "data" / "formats"
VENDORS = ("zendesk", "freshdesk", "intercom", "helpscout", "salesforce")

QUESTION = (
    "Hello,\n\nI was charged twice for order 1182 on my card. Can you refund the duplicate charge? "
    "My account email is ana.ruiz@example.com.\n\nThanks,\nAna Ruiz"
)
NOTE = "Checked Stripe: duplicate capture on order 1182, legacy billing plan. Finance approved the refund."
ANSWER = (
    "Hi Ana,\n\nSorry about that! I have refunded the duplicate charge on order 1182 & you will see it "
    "in 3\u20135 business days.\n\nBest,\nSam"
)
FOLLOW_UP = "Thanks Sam, the refund arrived this morning."
FINAL = "Glad to hear it, Ana! I am closing this ticket now. Have a great day."

EXPECTED = {  # format: (status, csat, requester id, channel)
    "zendesk": ("solved", 5, "9001", "email"),
    "freshdesk": ("resolved", 5, "8001", "email"),
    "intercom": ("closed", 4, "5f9a0c1b2d3e4f", "email"),
    "helpscout": ("closed", 5, "500", "email"),
    "salesforce": ("closed", 4.6, "0033t00003XyZ12AAB", "Email"),
}


def payload(vendor: str) -> dict:
    return json.loads((DATA / f"{vendor}.json").read_text())


def parse(vendor: str, data: dict) -> Ticket:
    return parser_for(vendor)(json.dumps(data).encode())


def fixture_ticket(vendor: str) -> Ticket:
    return parser_for(vendor)((DATA / f"{vendor}.json").read_bytes())


def parse_error(vendor: str, data: dict) -> TicketParseError:
    with pytest.raises(TicketParseError) as caught:
        parse(vendor, data)
    return caught.value


# --- every vendor: the sample payload maps to the expected ticket -------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_sample_maps_to_expected_ticket(vendor: str) -> None:
    ticket = fixture_ticket(vendor)
    status, csat, requester_id, channel = EXPECTED[vendor]

    assert ticket.is_resolved and ticket.status == status
    assert ticket.csat == csat and 1 <= ticket.csat <= 5
    assert ticket.subject == "Refund for order 1182"
    assert ticket.channel == channel
    assert ticket.requester is not None
    assert (ticket.requester.id, ticket.requester.name, ticket.requester.email) == (
        requester_id, "Ana Ruiz", "ana.ruiz@example.com",
    )
    assert ticket.updated_at is not None
    assert [(m.author_role, m.public) for m in ticket.messages] == [
        (Role.customer, True), (Role.agent, False), (Role.agent, True), (Role.customer, True), (Role.agent, True),
    ]
    assert [m.body for m in ticket.messages] == [QUESTION, NOTE, ANSWER, FOLLOW_UP, FINAL]


@pytest.mark.parametrize("vendor", VENDORS)
def test_sample_bodies_hold_no_markup_quotes_or_signatures(vendor: str) -> None:
    text = "\n".join(m.body for m in fixture_ticket(vendor).messages)
    for leftover in ("<p>", "<div", "&amp;", "wrote:", "Original Message", "From:", "Acme Support", "iPhone",
                     "-- ", "track()", "p{margin", "Draft, never sent"):
        assert leftover not in text


@pytest.mark.parametrize("vendor", VENDORS)
def test_example_drops_internal_note_and_scrubs_requester(vendor: str) -> None:
    example = ticket_to_example(fixture_ticket(vendor))

    assert isinstance(example, Example)
    assert [m["role"] for m in example.messages] == ["user", "assistant", "user", "assistant"]
    text = json.dumps(example.messages)
    assert "legacy billing plan" not in text and "Stripe" not in text
    assert "ana.ruiz@example.com" not in text and "<CUSTOMER_EMAIL>" in text
    assert "Ana" not in text and "Ruiz" not in text
    assert "refunded the duplicate charge on order 1182" in text


# --- every vendor: what cannot be mapped is a TicketParseError naming the field ---------------------------


def _drop(path: str):
    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        del data[last]
    return mutate


def _drop_all(*paths: str):
    def mutate(data: dict) -> None:
        for path in paths:
            _drop(path)(data)
    return mutate


MISSING_FIELDS = [
    ("zendesk", _drop("ticket.status"), "ticket.status"),
    ("zendesk", _drop("ticket.id"), "ticket.id"),
    ("zendesk", _drop("comments"), "comments"),
    ("zendesk", _drop_all("comments.2.html_body", "comments.2.plain_body", "comments.2.body"), "comments.2.body"),
    ("zendesk", lambda d: d["users"].pop(1), "comments.1.author_id"),
    ("freshdesk", _drop("status"), "status"),
    ("freshdesk", _drop_all("description", "description_text"), "description"),
    ("freshdesk", _drop_all("conversations.1.body", "conversations.1.body_text"), "conversations.1.body"),
    ("intercom", _drop("source"), "source"),
    ("intercom", _drop_all("state", "open"), "state"),
    ("intercom", _drop("conversation_parts.conversation_parts.2.author"),
     "conversation_parts.conversation_parts.2.author"),
    ("helpscout", _drop("status"), "status"),
    ("helpscout", _drop("_embedded"), "_embedded"),
    ("helpscout", _drop("_embedded.threads.3.type"), "_embedded.threads.3.type"),
    ("salesforce", _drop("Case.IsClosed"), "Case.IsClosed"),
    ("salesforce", _drop("Case.Id"), "Case.Id"),
    ("salesforce", _drop("CaseComments.0.CommentBody"), "CaseComments.0.CommentBody"),
]


@pytest.mark.parametrize(("vendor", "mutate", "field"), MISSING_FIELDS, ids=[f"{v}-{f}" for v, _, f in MISSING_FIELDS])
def test_missing_required_field_is_named_in_the_error(vendor: str, mutate, field: str) -> None:
    data = payload(vendor)
    mutate(data)

    error = parse_error(vendor, data)

    assert error.reason == "invalid_ticket"
    assert error.detail.startswith(f"{field}:")
    assert "Ana" not in error.detail and "example.com" not in error.detail


@pytest.mark.parametrize("vendor", VENDORS)
def test_invalid_json_and_non_objects_are_parse_errors(vendor: str) -> None:
    with pytest.raises(TicketParseError) as caught:
        parser_for(vendor)(b"{not json")
    assert caught.value.reason == "invalid_json"
    with pytest.raises(TicketParseError) as caught:
        parser_for(vendor)(b"[1, 2]")
    assert caught.value.reason == "not_an_object"


@pytest.mark.parametrize(("vendor", "field"), [("zendesk", "ticket"), ("salesforce", "Case")])
def test_a_payload_of_another_shape_is_unsupported(vendor: str, field: str) -> None:
    error = parse_error(vendor, {"id": 1, "status": "closed"})
    assert error.reason == "unsupported_payload" and error.detail.startswith(f"{field}:")


def test_parser_for_unknown_name_raises_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown ticket format 'kayako'; known formats: canonical, zendesk"):
        parser_for("kayako")


def test_every_format_has_a_parser_and_a_config_name() -> None:
    assert set(VENDORS) < set(FORMATS)
    assert set(get_args(KafkaConfig.model_fields["format"].annotation)) == set(FORMATS)
    for name in FORMATS:
        assert callable(parser_for(name))
        assert KafkaConfig(format=name).format == name


def _leaf_paths(node: object, path: tuple = ()):
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield (*path, key)
        yield from _leaf_paths(child, (*path, key))


@pytest.mark.parametrize("vendor", VENDORS)
def test_any_field_of_the_wrong_type_is_a_parse_error_never_a_crash(vendor: str) -> None:
    base = payload(vendor)
    for path in _leaf_paths(base):
        for wrong in (None, 1, [], {}):
            data = copy.deepcopy(base)
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = wrong
            try:
                assert isinstance(parse(vendor, data), Ticket)
            except TicketParseError as error:
                assert "Ana" not in error.detail and "example.com" not in error.detail


# --- vendor details ------------------------------------------------------------------------------------


def test_zendesk_bad_rating_is_1_and_offered_is_none() -> None:
    data = payload("zendesk")
    data["ticket"]["satisfaction_rating"]["score"] = "bad"
    assert parse("zendesk", data).csat == 1
    data["ticket"]["satisfaction_rating"] = {"score": "offered"}
    assert parse("zendesk", data).csat is None


def test_zendesk_ticket_event_webhook_with_comments_is_read() -> None:
    data = payload("zendesk")
    detail = {**data.pop("ticket"), "id": "48213", "status": "SOLVED"}
    data.update({"type": "zen:event-type:ticket.status_changed", "detail": detail})

    ticket = parse("zendesk", data)

    assert ticket.ticket_id == "48213" and ticket.is_resolved and len(ticket.messages) == 5


def test_zendesk_admin_is_an_agent_and_open_ticket_is_not_resolved() -> None:
    data = payload("zendesk")
    data["users"][1]["role"] = "admin"
    data["ticket"]["status"] = "pending"
    ticket = parse("zendesk", data)
    assert ticket.messages[2].author_role == Role.agent and not ticket.is_resolved


def test_freshdesk_closed_status_and_survey_scale() -> None:
    data = payload("freshdesk")
    data["status"] = 5
    for rating, csat in ((103, 5), (102, 4), (100, 3), (-102, 2), (-103, 1)):
        data["satisfaction_ratings"][0]["ratings"]["default_question"] = rating
        ticket = parse("freshdesk", data)
        assert (ticket.status, ticket.csat) == ("closed", csat)
    data["status"] = 2
    assert not parse("freshdesk", data).is_resolved


def test_freshdesk_envelope_with_separate_conversations_and_outbound_email() -> None:
    data = payload("freshdesk")
    conversations = data.pop("conversations")
    data["source"] = 10  # outbound email: the description is the agent's
    ticket = parse("freshdesk", {"ticket": data, "conversations": conversations})
    assert ticket.messages[0].author_role == Role.agent and len(ticket.messages) == 5


def test_intercom_bot_parts_are_bot_turns_and_open_conversation_is_not_resolved() -> None:
    data = payload("intercom")
    parts = data["conversation_parts"]["conversation_parts"]
    parts[0]["body"] = "<p>Hi! I am Fin, a bot. A teammate will reply soon.</p>"
    data["state"] = "open"

    ticket = parse("intercom", data)

    assert ticket.messages[1].author_role == Role.bot and not ticket.is_resolved


def test_intercom_webhook_notification_is_read() -> None:
    ticket = parse("intercom", {"type": "notification_event", "topic": "conversation.admin.closed",
                                "data": {"type": "notification_event_data", "item": payload("intercom")}})
    assert ticket.ticket_id == "1911149811" and ticket.csat == 4


def test_helpscout_threads_in_time_order_without_drafts_or_line_items() -> None:
    ticket = fixture_ticket("helpscout")
    stamps = [m.created_at for m in ticket.messages]
    assert stamps == sorted(stamps)
    assert all(m.author_role != Role.system for m in ticket.messages)


@pytest.mark.parametrize(
    ("rating", "csat"), [("great", 5), ("okay", 3), ("not_good", 1), ("Bad", 1), ("unknown", None)]
)
def test_helpscout_rating_scale(rating: str, csat: int | None) -> None:
    data = payload("helpscout")
    data["rating"] = rating
    assert parse("helpscout", data).csat == csat


def test_salesforce_web_to_case_description_and_portal_comment() -> None:
    data = payload("salesforce")
    data["EmailMessages"] = [m for m in data["EmailMessages"] if not m["Incoming"]]
    data["CaseComments"].append({"IsPublished": True, "CommentBody": FOLLOW_UP, "CreatedDate": "2026-11-03T09:00:00Z",
                                 "CreatedBy": {"Name": "Ana Ruiz", "UserType": "CspLitePortal"}})
    del data["Satisfaction"]

    ticket = parse("salesforce", data)

    assert [m.author_role for m in ticket.messages] == [Role.customer, Role.agent, Role.agent, Role.customer,
                                                        Role.agent]
    assert ticket.messages[0].body == QUESTION and ticket.csat is None


def test_salesforce_open_case_and_default_csat_scale() -> None:
    data = payload("salesforce")
    data["Case"].update({"IsClosed": False, "Status": "Working"})
    data["Satisfaction"] = {"Score": 3}
    ticket = parse("salesforce", data)
    assert (ticket.status, ticket.is_resolved, ticket.csat) == ("working", False, 3)
    data["Satisfaction"] = {"Score": 11, "ScaleMin": 0, "ScaleMax": 10}
    assert parse_error("salesforce", data).detail.startswith("Satisfaction.Score:")


# --- text.py -------------------------------------------------------------------------------------------


def test_html_to_text_breaks_blocks_decodes_entities_and_drops_scripts() -> None:
    html = ("<html><head><title>x</title><style>p{color:red}</style></head><body><h1>Steps</h1>"
            "<p>Fish &amp; chips&nbsp;&mdash; caf&eacute;</p><ul><li>one</li><li>two</li></ul>"
            "<script>alert(1)</script><div>a<br>b</div><pre>  kept\n  as is</pre></body></html>")
    assert html_to_text(html) == "Steps\n\nFish & chips \u2014 caf\u00e9\n\n- one\n- two\n\na\nb\n\n  kept\n  as is"


def test_html_quote_containers_are_dropped() -> None:
    html = ('<div>New text</div><div class="gmail_quote">On Mon, Ana wrote:<blockquote>old</blockquote></div>'
            '<blockquote type="cite">older</blockquote><div class="gmail_signature">Ana | Acme</div>')
    assert clean_body(html, html=True) == "New text"


def test_on_wrote_header_and_quoted_lines_are_cut() -> None:
    text = ("Yes, that fixed it.\n\nOn Tue, Nov 3, 2026 at 9:00 AM Sam Lee <sam.lee@example.com>\n"
            "wrote:\n> Try restarting.\n> Sam")
    assert strip_quoted_reply(text).strip() == "Yes, that fixed it."
    assert strip_quoted_reply("Answer inline:\n> is it down?\nNo, it is up.") == "Answer inline:\nNo, it is up."


def test_outlook_blocks_are_cut() -> None:
    original = "Thanks!\n\n-----Original Message-----\nFrom: Sam\nSent: Monday\nHello"
    header = "Thanks!\n\nFrom: Sam Lee <sam.lee@example.com>\nSent: Monday, November 2, 2026 10:15 AM\nTo: Ana"
    bold = "Thanks!\n________________________________\n*From:* Sam\n*Date:* Monday"
    for text in (original, header, bold):
        assert clean_body(text, html=False) == "Thanks!"


def test_signatures_are_cut() -> None:
    assert strip_signature("Done.\n-- \nSam Lee\nAcme").strip() == "Done."
    assert clean_body("Done.\n\nSent from my iPhone", html=False) == "Done."
    assert clean_body("Done.\n\nGet Outlook for iOS", html=False) == "Done."
    assert clean_body("<p>Done.</p><p>-- <br>Sam</p>", html=True) == "Done."


def test_plain_text_keeps_angle_brackets_and_unmarked_text() -> None:
    text = "Write to Ana <ana.ruiz@example.com> if 2 < 3.\n\nOn second thought, wait."
    assert clean_body(text, html=False) == text
    assert clean_body("##- Please type your reply above this line -##\nold", html=False) == ""
    assert clean_body(None) == "" and clean_body("a &amp; b") == "a & b"


def test_cleaning_handles_large_and_adversarial_bodies() -> None:
    """Bodies shaped to make a backtracking pattern explode (a catastrophic one would hang here)."""
    big_html = "<div><p>Some <b>text</b> &amp; more.</p></div>" * 5000
    adversarial = "On and on\n" * 20000 + ">" * 10000
    assert clean_body(big_html, html=True).startswith("Some text & more.")
    assert clean_body(adversarial, html=False).startswith("On and on")


def test_fixtures_are_not_changed_by_parsing() -> None:
    data = payload("zendesk")
    before = copy.deepcopy(data)
    parse("zendesk", data)
    assert data == before


# --- the model's draft (kafka.ai_assist): a custom field and a version tag --------------------------------

DRAFT = "Hi Ana,\n\nPlease check our help center for refunds.\n\nBest,\nSam"


def _with_draft(vendor: str, value: object) -> dict:
    """The vendor's sample payload with `value` in its custom field "ai_draft" and the tag `ticketune_v7`."""
    data = payload(vendor)
    if vendor == "zendesk":
        data["ticket"]["custom_fields"] = [{"id": 360001, "value": value}]
        data["ticket"]["tags"] = list(data["ticket"].get("tags") or []) + ["ticketune_v7"]
    elif vendor == "freshdesk":
        ticket = data.get("ticket", data)
        ticket["custom_fields"] = {"ai_draft": value}
        ticket["tags"] = list(ticket.get("tags") or []) + ["ticketune_v7"]
    elif vendor == "intercom":
        conversation = data["data"]["item"] if "data" in data else data
        conversation["custom_attributes"] = {"ai_draft": value}
        tags = conversation.setdefault("tags", {"type": "tag.list", "tags": []})
        tags["tags"] = list(tags.get("tags") or []) + [{"type": "tag", "name": "ticketune_v7"}]
    elif vendor == "helpscout":
        data["customFields"] = [{"id": 77, "name": "ai_draft", "value": value}]
        data["tags"] = list(data.get("tags") or []) + [{"id": 1, "tag": "ticketune_v7"}]
    else:
        data["Case"]["ai_draft"] = value
    return data


MAPPING = KafkaConfig(ai_assist={"field": "ai_draft", "tag_prefix": "ticketune_v"}).ai_assist
FIELD_NAMES = {"zendesk": "360001"}


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_draft_in_the_configured_custom_field_becomes_ai_assist(vendor: str) -> None:
    mapping = MAPPING.model_copy(update={"field": FIELD_NAMES.get(vendor, "ai_draft")})
    data = _with_draft(vendor, DRAFT)
    ticket = parser_for(vendor, mapping)(json.dumps(data).encode())
    assert ticket.ai_assist is not None
    assert ticket.ai_assist.draft == DRAFT
    assert ticket.ai_assist.outcome.value == "edited"  # the agent sent something else
    assert ticket.ai_assist.model_version == (None if vendor == "salesforce" else "7")  # a Case has no tags
    assert parser_for(vendor)(json.dumps(data).encode()).ai_assist is None  # no field configured: no draft


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_draft_object_says_its_outcome_and_version_and_a_bad_outcome_is_a_parse_error(vendor: str) -> None:
    mapping = MAPPING.model_copy(update={"field": FIELD_NAMES.get(vendor, "ai_draft")})
    value = json.dumps({"draft": DRAFT, "outcome": "discarded", "model_name": "m", "model_version": 12})
    ticket = parser_for(vendor, mapping)(json.dumps(_with_draft(vendor, value)).encode())
    assert (ticket.ai_assist.outcome.value, ticket.ai_assist.model_version, ticket.ai_assist.model_name) == \
        ("discarded", "12", "m")
    bad = json.dumps({"draft": DRAFT, "outcome": "maybe"})
    with pytest.raises(TicketParseError) as caught:
        parser_for(vendor, mapping)(json.dumps(_with_draft(vendor, bad)).encode())
    assert caught.value.reason == "invalid_ticket" and "ai_assist.outcome" in caught.value.detail


def test_a_draft_sent_verbatim_is_sent_as_is() -> None:
    sent = fixture_ticket("zendesk").first_public_agent_reply().body
    mapping = MAPPING.model_copy(update={"field": "360001"})
    ticket = parser_for("zendesk", mapping)(json.dumps(_with_draft("zendesk", sent)).encode())
    assert ticket.ai_assist.outcome.value == "sent_as_is"
