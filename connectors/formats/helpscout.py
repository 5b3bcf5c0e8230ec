"""Help Scout: a conversation (`GET /v2/conversations/{id}?embed=threads`) to a `Ticket`.

Threads (`_embedded.threads`, newest first in the API) are put in time order. Thread `type: customer`
is the customer, `message` a public agent reply, `note` an internal note, `chat` by its `createdBy.type`;
line items, forwards, phone logs and other types are system events; drafts and threads held for review
are skipped. `status: closed` is resolved. Bodies are HTML.
CSAT: Help Scout's happiness rating, `rating` (the object of `GET /v2/ratings/{id}`, or its text) on the
conversation: great -> 5, okay -> 3, not_good (webhooks: "Bad") -> 1, unknown -> none.
The model's draft: the custom field (`customFields`) whose id or name is `kafka.ai_assist.field`.
"""

from __future__ import annotations

from typing import Any

from connectors.formats.payload import (
    ai_assist_from,
    build_ticket,
    full_name,
    list_at,
    load_object,
    object_at,
    required,
    tag_names,
    text_at,
)
from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket

CSAT_BY_RATING = {"great": 5, "okay": 3, "ok": 3, "not_good": 1, "not good": 1, "bad": 1}
UNSENT_STATES = frozenset({"draft", "underreview", "hidden"})


def parse(value: bytes, ai_assist: AiAssistMapping | None = None) -> Ticket:
    conversation = load_object(value)
    conversation_id = required(conversation, "id", "id")
    status = required(conversation, "status", "status")
    embedded = object_at(conversation, "_embedded", "_embedded")
    threads = list_at(embedded, "threads", "_embedded.threads")

    customer = object_at(conversation, "primaryCustomer", "primaryCustomer", optional=True)
    if not customer:
        customer = object_at(conversation, "customer", "customer", optional=True)
    requester = None
    if customer:
        requester = {"id": customer.get("id"), "name": _person_name(customer), "email": customer.get("email")}

    messages = []
    agents: dict[str, dict[str, Any]] = {}
    for index, thread in enumerate(threads):
        if str(thread.get("state", "published")).lower() in UNSENT_STATES:
            continue
        kind = str(required(thread, "type", f"_embedded.threads.{index}.type")).lower()
        author = object_at(thread, "createdBy", f"_embedded.threads.{index}.createdBy", optional=True)
        role = _role(kind, author)
        body = clean_body(text_at(thread, "body", f"_embedded.threads.{index}.body"), html=True)
        if role == Role.system and not body:
            continue  # status changes, assignments: events, not messages
        if role == Role.agent and author.get("id") is not None:
            agents[str(author["id"])] = {"id": author["id"], "name": _person_name(author), "email": author.get("email")}
        messages.append({
            "author_role": role,
            "author_name": _person_name(author),
            "author_email": author.get("email"),
            "public": kind != "note",
            "body": body,
            "created_at": thread.get("createdAt"),
        })

    tags = tag_names(conversation.get("tags"), "tag")
    draft_field = _custom_field(conversation, ai_assist.field) if ai_assist and ai_assist.field else None
    return build_ticket({
        "ticket_id": conversation_id,
        "status": status,
        "channel": conversation.get("type"),
        "subject": conversation.get("subject"),
        "tags": tags,
        "ai_assist": ai_assist_from(draft_field, tags, ai_assist, messages, "customFields"),
        "csat": _csat(conversation.get("rating")),
        "created_at": conversation.get("createdAt"),
        "updated_at": conversation.get("userUpdatedAt") or conversation.get("modifiedAt"),
        "resolved_at": conversation.get("closedAt"),
        "requester": requester,
        "agents": list(agents.values()),
        "messages": messages,
    })


def _role(kind: str, author: dict[str, Any]) -> Role:
    if kind == "customer":
        return Role.customer
    if kind in ("message", "reply", "note"):
        return Role.agent
    if kind in ("chat", "beaconchat"):
        return Role.customer if author.get("type") == "customer" else Role.agent
    return Role.system


def _person_name(person: dict[str, Any]) -> str | None:
    return full_name(person.get("first"), person.get("last")) or full_name(
        person.get("firstName"), person.get("lastName")
    ) or full_name(person.get("name"))


def _csat(rating: object) -> int | None:
    if isinstance(rating, dict):
        rating = rating.get("rating")
    return CSAT_BY_RATING.get(rating.strip().lower()) if isinstance(rating, str) else None


def _custom_field(conversation: dict[str, Any], field: str) -> object:
    """The value of the custom field with id or name `field` (`customFields: [{id, name, value, text}]`)."""
    for entry in conversation.get("customFields") or []:
        if isinstance(entry, dict) and field in (str(entry.get("id")), entry.get("name")):
            return entry.get("text") if entry.get("value") is None else entry.get("value")
    return None
