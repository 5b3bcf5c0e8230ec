"""Zendesk Support: `{"ticket": {...}, "comments": [...], "users": [...]}` to a `Ticket`.

The shape of `GET /api/v2/tickets/{id}.json` plus `GET /api/v2/tickets/{id}/comments.json?include=users`
in one object; a ticket event webhook (`{"type": "zen:event-type:ticket...", "detail": {...}}`) is read
the same way when it carries `comments` and `users` too. Status solved/closed is resolved; a comment
with `public: false` is an internal note; its author's role comes from the sideloaded user (end-user
is the customer, agent and admin are agents), so every comment author must be in `users`.
CSAT: `satisfaction_rating.score` good -> 5, bad -> 1 (offered/unoffered -> none).
The model's draft: the custom field whose id is `kafka.ai_assist.field` (`ticket.custom_fields`).
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
    unsupported,
)
from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket, TicketParseError

CSAT_BY_SCORE = {"good": 5, "bad": 1}
ROLE_BY_USER_ROLE = {"end-user": Role.customer, "agent": Role.agent, "admin": Role.agent}


def parse(value: bytes, ai_assist: AiAssistMapping | None = None) -> Ticket:
    data = load_object(value)
    if isinstance(data.get("ticket"), dict):
        ticket, path = data["ticket"], "ticket"
    elif str(data.get("type", "")).startswith("zen:event-type:ticket") and isinstance(data.get("detail"), dict):
        ticket, path = data["detail"], "detail"
    else:
        raise unsupported("Zendesk", "ticket", "a 'ticket' object with 'comments' and 'users'")
    comments = list_at(data, "comments", "comments")
    users = {str(user.get("id")): user for user in list_at(data, "users", "users", optional=True)}

    ticket_id = required(ticket, "id", f"{path}.id")
    status = required(ticket, "status", f"{path}.status")
    requester_id = ticket.get("requester_id")
    requester_user = users.get(str(requester_id)) if requester_id is not None else None
    requester = None
    if requester_user is not None or requester_id is not None:
        user = requester_user or {}
        requester = {"id": requester_id, "name": user.get("name"), "email": user.get("email"),
                     "phone": user.get("phone")}

    messages = []
    agents: dict[str, dict[str, Any]] = {}
    for index, comment in enumerate(comments):
        author_id = required(comment, "author_id", f"comments.{index}.author_id")
        user = users.get(str(author_id))
        if user is None:
            raise TicketParseError(
                "invalid_ticket", f"comments.{index}.author_id: no such user in users (fetch with include=users)"
            )
        role = ROLE_BY_USER_ROLE.get(str(user.get("role")), Role.system)
        if role == Role.agent:
            agents[str(author_id)] = {"id": author_id, "name": user.get("name"), "email": user.get("email")}
        messages.append({
            "author_role": role,
            "author_name": user.get("name"),
            "author_email": user.get("email"),
            "public": comment.get("public", True) is not False,
            "body": _comment_text(comment, index),
            "created_at": comment.get("created_at"),
        })

    rating = object_at(ticket, "satisfaction_rating", f"{path}.satisfaction_rating", optional=True)
    tags = tag_names(ticket.get("tags"))
    draft_field = _custom_field(ticket, ai_assist.field) if ai_assist and ai_assist.field else None
    return build_ticket({
        "ticket_id": ticket_id,
        "status": status,
        "channel": object_at(ticket, "via", f"{path}.via", optional=True).get("channel"),
        "subject": ticket.get("subject") or ticket.get("raw_subject"),
        "tags": tags,
        "ai_assist": ai_assist_from(draft_field, tags, ai_assist, messages, f"{path}.custom_fields"),
        "csat": CSAT_BY_SCORE.get(str(rating.get("score", "")).lower()),
        "created_at": ticket.get("created_at"),
        "updated_at": ticket.get("updated_at"),
        "requester": requester,
        "agents": list(agents.values()),
        "messages": messages,
    })


def _comment_text(comment: dict[str, Any], index: int) -> str:
    if isinstance(comment.get("html_body"), str):
        return clean_body(comment["html_body"], html=True)
    if isinstance(comment.get("plain_body"), str):
        return clean_body(comment["plain_body"], html=False)
    if isinstance(comment.get("body"), str):
        return clean_body(comment["body"], html=False)
    raise TicketParseError("invalid_ticket", f"comments.{index}.body: Field required")


def _custom_field(ticket: dict[str, Any], field_id: str) -> object:
    """The value of the custom field `field_id` (`custom_fields`, or the older `fields`: `[{id, value}]`)."""
    for key in ("custom_fields", "fields"):
        for field in ticket.get(key) or []:
            if isinstance(field, dict) and str(field.get("id")) == field_id:
                return field.get("value")
    return None
