"""Freshdesk: a ticket (`GET /api/v2/tickets/{id}?include=requester,conversations`) to a `Ticket`.

Also read: `{"ticket": {...}, "conversations": [...]}` with the conversations fetched separately. The
ticket's `description` is the first message (the requester's, or an agent's on an outbound email);
each conversation is `incoming: true` from the customer, `private: true` an internal note, else a public
agent reply. Status 4 is "resolved", 5 "closed" (both resolved), 2 "open", 3 "pending".
CSAT: the survey answer `ratings.default_question` of `satisfaction_ratings` (or `satisfaction_rating`),
Freshdesk's scale 103 ... -103, maps to 1-5: 103 -> 5, 102 and 101 -> 4, 100 -> 3, -101 and -102 -> 2,
-103 -> 1 (so a 3-point survey gives 5/3/1 and a 5-point one 5/4/3/2/1).
The model's draft: `custom_fields[kafka.ai_assist.field]` (a `cf_...` key).
"""

from __future__ import annotations

from typing import Any

from connectors.formats.payload import (
    ai_assist_from,
    build_ticket,
    list_at,
    load_object,
    object_at,
    required,
    tag_names,
)
from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket, TicketParseError

STATUS_NAMES = {2: "open", 3: "pending", 4: "resolved", 5: "closed"}
CHANNEL_BY_SOURCE = {1: "email", 2: "portal", 3: "phone", 7: "chat", 9: "feedback_widget", 10: "outbound_email"}
CSAT_BY_RATING = {103: 5, 102: 4, 101: 4, 100: 3, -101: 2, -102: 2, -103: 1}
OUTBOUND_EMAIL = 10


def parse(value: bytes, ai_assist: AiAssistMapping | None = None) -> Ticket:
    data = load_object(value)
    nested = isinstance(data.get("ticket"), dict)
    ticket = data["ticket"] if nested else data
    path = "ticket." if nested else ""
    conversations_owner = data if nested and "conversations" in data else ticket
    conversations = list_at(conversations_owner, "conversations", "conversations", optional=True)

    ticket_id = required(ticket, "id", f"{path}id")
    status = required(ticket, "status", f"{path}status")
    requester_obj = object_at(ticket, "requester", f"{path}requester", optional=True)
    requester_id = requester_obj.get("id", ticket.get("requester_id"))
    requester = None
    if requester_obj or requester_id is not None:
        requester = {"id": requester_id, "name": requester_obj.get("name"), "email": requester_obj.get("email"),
                     "phone": requester_obj.get("phone") or requester_obj.get("mobile")}
    requester_name = requester_obj.get("name")
    requester_email = requester_obj.get("email")

    description = _text(ticket, "description_text", "description", f"{path}description")
    outbound = ticket.get("source") == OUTBOUND_EMAIL
    messages = [{
        "author_role": Role.agent if outbound else Role.customer,
        "author_name": None if outbound else requester_name,
        "author_email": None if outbound else requester_email,
        "public": True,
        "body": description,
        "created_at": ticket.get("created_at"),
    }]
    for index, conversation in enumerate(conversations):
        customer = conversation.get("incoming") is True and conversation.get("private") is not True
        from_requester = customer and requester_id is not None and conversation.get("user_id") == requester_id
        messages.append({
            "author_role": Role.customer if customer else Role.agent,
            "author_name": requester_name if from_requester else None,
            "author_email": conversation.get("from_email"),
            "public": conversation.get("private") is not True,
            "body": _text(conversation, "body_text", "body", f"conversations.{index}.body"),
            "created_at": conversation.get("created_at"),
        })

    stats = object_at(ticket, "stats", f"{path}stats", optional=True)
    tags = tag_names(ticket.get("tags"))
    custom = object_at(ticket, "custom_fields", f"{path}custom_fields", optional=True)
    draft_field = custom.get(ai_assist.field) if ai_assist and ai_assist.field else None
    return build_ticket({
        "ticket_id": ticket_id,
        "status": STATUS_NAMES.get(status, str(status)) if isinstance(status, int) else status,
        "channel": CHANNEL_BY_SOURCE.get(ticket["source"]) if isinstance(ticket.get("source"), int) else None,
        "subject": ticket.get("subject"),
        "category": ticket.get("type"),
        "tags": tags,
        "ai_assist": ai_assist_from(draft_field, tags, ai_assist, messages,
                                    f"{path}custom_fields.{ai_assist.field if ai_assist else ''}"),
        "csat": _csat(data) or _csat(ticket),
        "created_at": ticket.get("created_at"),
        "updated_at": ticket.get("updated_at"),
        "resolved_at": stats.get("resolved_at") or stats.get("closed_at"),
        "requester": requester,
        "messages": messages,
    })


def _text(obj: dict[str, Any], text_key: str, html_key: str, path: str) -> str:
    """Prefers the HTML body (its quote containers are marked); the plain text is the fallback."""
    if isinstance(obj.get(html_key), str):
        return clean_body(obj[html_key], html=True)
    if isinstance(obj.get(text_key), str):
        return clean_body(obj[text_key], html=False)
    raise TicketParseError("invalid_ticket", f"{path}: Field required")


def _csat(owner: dict[str, Any]) -> int | None:
    ratings = owner.get("satisfaction_ratings")
    if isinstance(owner.get("satisfaction_rating"), dict):
        ratings = [owner["satisfaction_rating"]]
    if not isinstance(ratings, list) or not ratings or not isinstance(ratings[-1], dict):
        return None
    answers = ratings[-1].get("ratings")
    score = answers.get("default_question") if isinstance(answers, dict) else None
    return CSAT_BY_RATING.get(score) if isinstance(score, int) else None
