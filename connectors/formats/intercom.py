"""Intercom: a conversation (`GET /conversations/{id}`, or a webhook's `data.item`) to a `Ticket`.

`source` is the first message, `conversation_parts.conversation_parts` the rest; a part without a body
(assignment, close, attribute changes) is skipped, `part_type: note` is an internal note. Author
`type` user/lead/contact is the customer, admin an agent, bot a bot (Fin, workflows). `state: closed`
(or `open: false`) is resolved; times are Unix seconds. Bodies are HTML.
CSAT: `conversation_rating.rating` is already 1-5 and kept as is.
The model's draft: `custom_attributes[kafka.ai_assist.field]` (a conversation data attribute).
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
    text_at,
)
from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket

ROLE_BY_AUTHOR_TYPE = {"user": Role.customer, "lead": Role.customer, "contact": Role.customer,
                       "admin": Role.agent, "team": Role.agent, "bot": Role.bot}


def parse(value: bytes, ai_assist: AiAssistMapping | None = None) -> Ticket:
    data = load_object(value)
    item = object_at(data, "data", "data", optional=True).get("item")
    conversation, path = (item, "data.item.") if isinstance(item, dict) else (data, "")

    conversation_id = required(conversation, "id", f"{path}id")
    state = conversation.get("state")
    if state is None:
        open_flag = required(conversation, "open", f"{path}state")
        state = "open" if open_flag else "closed"
    source = object_at(conversation, "source", f"{path}source")
    parts_owner = object_at(conversation, "conversation_parts", f"{path}conversation_parts", optional=True)
    parts = list_at(parts_owner, "conversation_parts", f"{path}conversation_parts.conversation_parts", optional=True)

    messages = [_message(source, f"{path}source", first=True, created_at=conversation.get("created_at"))]
    messages.extend(_message(part, f"{path}conversation_parts.conversation_parts.{i}") for i, part in enumerate(parts))
    messages = [message for message in messages if message is not None]

    author = object_at(source, "author", f"{path}source.author")
    requester = None
    if ROLE_BY_AUTHOR_TYPE.get(str(author.get("type"))) == Role.customer:
        requester = {"id": author.get("id"), "name": author.get("name"), "email": author.get("email")}
    else:
        contacts = object_at(conversation, "contacts", f"{path}contacts", optional=True).get("contacts")
        if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
            requester = {"id": contacts[0].get("id"), "name": contacts[0].get("name"),
                         "email": contacts[0].get("email")}

    subject = clean_body(text_at(source, "subject", f"{path}source.subject"), html=True)
    rating = object_at(conversation, "conversation_rating", f"{path}conversation_rating", optional=True)
    statistics = object_at(conversation, "statistics", f"{path}statistics", optional=True)
    tags = tag_names(object_at(conversation, "tags", f"{path}tags", optional=True).get("tags"), "name")
    attributes = object_at(conversation, "custom_attributes", f"{path}custom_attributes", optional=True)
    draft_field = attributes.get(ai_assist.field) if ai_assist and ai_assist.field else None
    return build_ticket({
        "ticket_id": conversation_id,
        "status": state,
        "channel": source.get("type"),
        "subject": conversation.get("title") or subject or None,
        "tags": tags,
        "ai_assist": ai_assist_from(draft_field, tags, ai_assist, messages, f"{path}custom_attributes"),
        "csat": rating.get("rating"),
        "created_at": conversation.get("created_at"),
        "updated_at": conversation.get("updated_at"),
        "resolved_at": statistics.get("last_close_at"),
        "requester": requester,
        "messages": messages,
    })


def _message(
    part: dict[str, Any], path: str, first: bool = False, created_at: object = None
) -> dict[str, Any] | None:
    body = clean_body(text_at(part, "body", f"{path}.body"), html=True)
    if not body and not first:
        return None  # assignments, closes, attribute changes: events, not messages
    author = object_at(part, "author", f"{path}.author")
    role = ROLE_BY_AUTHOR_TYPE.get(str(required(author, "type", f"{path}.author.type")), Role.system)
    return {
        "author_role": role,
        "author_name": author.get("name"),
        "author_email": author.get("email"),
        "public": not str(part.get("part_type", "")).startswith("note"),
        "body": body,
        "created_at": part.get("created_at") or created_at,
    }
