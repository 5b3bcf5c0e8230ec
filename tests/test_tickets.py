"""The canonical ticket parser: what becomes a `Ticket`, and what becomes a dead-letter reason."""

import json

import pytest

from daemon.tickets import Role, TicketParseError, parse_canonical, ticket_from_dict


def canonical(**changes: object) -> dict:
    ticket = {
        "ticket_id": "48213",
        "status": "solved",
        "channel": "email",
        "subject": "Refund for order 1182",
        "category": "billing",
        "tags": ["refund"],
        "language": "en",
        "csat": 5,
        "created_at": "2026-11-02T10:15:00Z",
        "resolved_at": "2026-11-02T12:01:00Z",
        "requester": {"id": "u-1", "name": "Ana Ruiz", "email": "ana@example.com"},
        "messages": [
            {"author_role": "customer", "author_name": "Ana Ruiz", "public": True,
             "body": "Where is my refund?", "created_at": "2026-11-02T10:15:00Z"},
            {"author_role": "agent", "author_name": "Sam", "public": False,
             "body": "internal note", "created_at": "2026-11-02T11:00:00Z"},
            {"author_role": "agent", "author_name": "Sam", "public": True,
             "body": "Refund sent.", "created_at": "2026-11-02T12:00:00Z"},
        ],
    }
    ticket.update(changes)
    return ticket


def encode(data: object) -> bytes:
    return json.dumps(data).encode("utf-8")


def test_a_valid_canonical_ticket_parses_with_every_field():
    ticket = parse_canonical(encode(canonical()))
    assert ticket.ticket_id == "48213"
    assert ticket.is_resolved
    assert ticket.requester is not None and ticket.requester.email == "ana@example.com"
    assert [m.author_role for m in ticket.messages] == [Role.customer, Role.agent, Role.agent]
    assert [m.public for m in ticket.messages] == [True, False, True]
    assert ticket.tags == ["refund"]
    assert ticket.csat == 5
    assert ticket.resolved_at is not None and ticket.resolved_at.hour == 12


def test_status_is_normalised_and_only_solved_closed_resolved_count_as_resolved():
    assert parse_canonical(encode(canonical(status=" Closed "))).is_resolved
    assert parse_canonical(encode(canonical(status="RESOLVED"))).is_resolved
    assert not parse_canonical(encode(canonical(status="pending"))).is_resolved
    assert not parse_canonical(encode(canonical(status="open"))).is_resolved


def test_invalid_json_is_reason_invalid_json():
    with pytest.raises(TicketParseError) as caught:
        parse_canonical(b'{"ticket_id": "1", ')
    assert caught.value.reason == "invalid_json"


def test_invalid_utf8_is_reason_invalid_utf8():
    with pytest.raises(TicketParseError) as caught:
        parse_canonical(b'{"ticket_id": "\xff\xfe"}')
    assert caught.value.reason == "invalid_utf8"


def test_a_json_value_that_is_not_an_object_is_reason_not_an_object():
    for document in (b"[1, 2]", b'"text"', b"42", b"null"):
        with pytest.raises(TicketParseError) as caught:
            parse_canonical(document)
        assert caught.value.reason == "not_an_object"


def test_a_missing_required_field_names_its_path_in_the_detail():
    data = canonical()
    del data["messages"][2]["body"]
    with pytest.raises(TicketParseError) as caught:
        ticket_from_dict(data)
    assert caught.value.reason == "invalid_ticket"
    assert "messages.2.body" in caught.value.detail

    data = canonical()
    del data["status"]
    with pytest.raises(TicketParseError) as caught:
        ticket_from_dict(data)
    assert caught.value.detail.startswith("status:")


def test_the_detail_names_fields_never_their_values():
    data = canonical()
    data["messages"][0]["author_role"] = "ana@example.com"
    with pytest.raises(TicketParseError) as caught:
        ticket_from_dict(data)
    assert "messages.0.author_role" in caught.value.detail
    assert "ana@example.com" not in str(caught.value)


def test_an_empty_ticket_id_is_rejected():
    with pytest.raises(TicketParseError) as caught:
        ticket_from_dict(canonical(ticket_id=""))
    assert "ticket_id" in caught.value.detail


def test_unknown_fields_are_ignored_everywhere():
    data = canonical(via={"channel": "email"}, priority="high")
    data["requester"]["locale"] = "es-ES"
    data["messages"][0]["attachments"] = [{"name": "photo.jpg"}]
    ticket = ticket_from_dict(data)
    assert ticket.ticket_id == "48213"
    assert not hasattr(ticket, "priority")


def test_an_integer_ticket_id_and_requester_id_become_strings():
    data = canonical(ticket_id=48213)
    data["requester"]["id"] = 7
    ticket = ticket_from_dict(data)
    assert ticket.ticket_id == "48213"
    assert ticket.requester is not None and ticket.requester.id == "7"


def test_a_boolean_ticket_id_is_rejected_not_turned_into_text():
    with pytest.raises(TicketParseError):
        ticket_from_dict(canonical(ticket_id=True))


def test_a_later_updated_at_is_a_later_revision():
    earlier = ticket_from_dict(canonical(updated_at="2026-11-02T12:01:00Z"))
    later = ticket_from_dict(canonical(updated_at="2026-11-03T08:00:00Z"))
    assert later.revision > earlier.revision


def test_revision_falls_back_to_resolved_at_then_created_at():
    with_resolved = ticket_from_dict(canonical())
    assert with_resolved.revision.startswith("2026-11-02T12:01:00")
    only_created = ticket_from_dict(canonical(resolved_at=None))
    assert only_created.revision.startswith("2026-11-02T10:15:00")
    no_stamps = ticket_from_dict(canonical(resolved_at=None, created_at=None))
    assert no_stamps.revision == ""


def test_revision_orders_by_instant_across_time_zone_offsets():
    # 10:00 at +02:00 is 08:00 UTC: earlier than 09:00 UTC, though "10" sorts after "09" as text.
    offset = ticket_from_dict(canonical(updated_at="2026-11-02T10:00:00+02:00"))
    utc = ticket_from_dict(canonical(updated_at="2026-11-02T09:00:00Z"))
    assert offset.revision < utc.revision
    with_fraction = ticket_from_dict(canonical(updated_at="2026-11-02T09:00:00.5Z"))
    assert utc.revision < with_fraction.revision


def test_a_revision_stamp_without_zone_is_read_as_utc():
    naive = ticket_from_dict(canonical(updated_at="2026-11-02T09:00:00"))
    utc = ticket_from_dict(canonical(updated_at="2026-11-02T09:00:00Z"))
    assert naive.revision == utc.revision


def _long_way(value: bytes) -> object:
    """What the parser made of a document before it let pydantic read the bytes: the ticket, or the reason."""
    from daemon.tickets import load_json_object

    try:
        return ticket_from_dict(load_json_object(value))
    except TicketParseError as exc:
        return exc.reason


@pytest.mark.parametrize("value", [
    json.dumps(canonical()).encode(),
    json.dumps(canonical(ticket_id=7, csat="4", updated_at=1700000000)).encode(),
    b'{"ticket_id": "1", "ticket_id": "2", "status": "solved", "messages": []}',  # the last key wins
    json.dumps(canonical(body="a\\ud800b")).encode().replace(b"a\\\\ud800b", b"a\\ud800b"),  # a lone surrogate
    json.dumps(canonical()).encode()[:-1] + b', "extra": ' + b"9" * 5000 + b"}",  # over json's digit limit
    json.dumps(canonical()).encode()[:-1] + b', "extra": NaN}',
    json.dumps(canonical(csat=float("inf"))).encode(),
    json.dumps(canonical(tags=[1])).encode(),
    json.dumps(canonical(extra=[[[[1]]]] * 20)).encode(),  # more brackets than the nesting limit
    b"\xef\xbb\xbf" + json.dumps(canonical()).encode(),
    json.dumps(canonical()).encode().replace(b"refund?", b"refund\xff"),
    b"[1]",
    b"",
])
def test_reading_the_bytes_directly_accepts_and_refuses_what_the_long_way_does(value):
    try:
        parsed: object = parse_canonical(value)
    except TicketParseError as exc:
        parsed = exc.reason
    assert parsed == _long_way(value)
