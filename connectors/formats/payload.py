"""Reading a vendor payload: JSON in, required fields by path, the canonical `Ticket` out.

Errors name the vendor's field path (`ticket.status: Field required`), never a field's value.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from connectors.formats.text import clean_body
from daemon.config import AiAssistMapping
from daemon.tickets import Role, Ticket, TicketParseError, load_json_object, ticket_from_dict

load_object = load_json_object  # the vendor payloads decode exactly as the canonical one


def unsupported(vendor: str, path: str, expected: str) -> TicketParseError:
    return TicketParseError("unsupported_payload", f"{path}: missing; a {vendor} payload has {expected}")


def required(obj: dict[str, Any], key: str, path: str) -> Any:
    """`obj[key]`, or a `TicketParseError` naming `path` when it is absent, null or empty text."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TicketParseError("invalid_ticket", f"{path}: Field required")
    return value


def text_at(obj: dict[str, Any], key: str, path: str, *, optional: bool = True) -> str | None:
    """`obj[key]` as text (None when absent and optional); anything but text is a `TicketParseError`."""
    value = obj.get(key) if optional else required(obj, key, path)
    if value is not None and not isinstance(value, str):
        raise TicketParseError("invalid_ticket", f"{path}: expected text")
    return value


def object_at(obj: dict[str, Any], key: str, path: str, *, optional: bool = False) -> dict[str, Any]:
    value = obj.get(key) if optional else required(obj, key, path)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TicketParseError("invalid_ticket", f"{path}: expected an object")
    return value


def list_at(obj: dict[str, Any], key: str, path: str, *, optional: bool = False) -> list[Any]:
    value = obj.get(key) if optional else required(obj, key, path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TicketParseError("invalid_ticket", f"{path}: expected a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise TicketParseError("invalid_ticket", f"{path}.{index}: expected an object")
    return value


def full_name(*parts: object) -> str | None:
    name = " ".join(str(part).strip() for part in parts if isinstance(part, str) and part.strip())
    return name or None


def tag_names(tags: object, key: str | None = None) -> list[str]:
    """Tags as a list of names, from plain strings or from objects holding the name under `key`."""
    if not isinstance(tags, list):
        return []
    names = (tag.get(key) if key and isinstance(tag, dict) else tag for tag in tags)
    return [name for name in names if isinstance(name, str) and name]


def build_ticket(fields: dict[str, Any]) -> Ticket:
    """The canonical ticket, its messages in time order when every message carries a time."""
    ticket = ticket_from_dict(fields)
    stamps = [message.created_at for message in ticket.messages]
    if ticket.messages and all(stamp is not None for stamp in stamps):
        ordered = sorted(ticket.messages, key=lambda message: _utc(message.created_at))
        if ordered != list(ticket.messages):
            ticket = ticket.model_copy(update={"messages": ordered})
    return ticket


def _utc(stamp: datetime | None) -> datetime:
    assert stamp is not None
    return stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp


def ai_assist_from(raw: object, tags: list[str], mapping: AiAssistMapping | None, messages: list[dict[str, Any]],
                   path: str) -> dict[str, Any] | None:
    """The canonical `ai_assist` from the configured custom field's value (`raw`, found at `path`) and tags.

    The field holds the draft as text, or a JSON object (or its text) with `draft` and optionally
    `outcome`, `model_name`, `model_version`. The version is otherwise read from the first tag that starts
    with `kafka.ai_assist.tag_prefix` (`ticketune_v3` is "3"), and the outcome, when the field does not
    say, from the first public agent reply: the draft verbatim is `sent_as_is`, anything else `edited`.
    """
    if mapping is None or mapping.field is None or raw is None:
        return None
    if isinstance(raw, str) and raw.lstrip().startswith("{"):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise TicketParseError("invalid_ticket", f"{path}: not a readable JSON object") from None
    if isinstance(raw, dict):
        found = {key: raw.get(key) for key in ("draft", "outcome", "model_name", "model_version")}
    elif isinstance(raw, str):
        found = {"draft": raw, "outcome": None, "model_name": None, "model_version": None}
    else:
        raise TicketParseError("invalid_ticket", f"{path}: expected the draft's text or an object")
    if not isinstance(found["draft"], str) or not found["draft"].strip():
        return None  # no draft was made for this ticket
    found["draft"] = clean_body(found["draft"])
    if found["model_version"] is None:
        found["model_version"] = next((tag[len(mapping.tag_prefix):] for tag in tags
                                       if tag.startswith(mapping.tag_prefix) and len(tag) > len(mapping.tag_prefix)),
                                      None)
    if found["outcome"] is None:
        reply = next((m["body"] for m in messages if m["author_role"] == Role.agent and m["public"]
                      and m["body"].strip()), None)
        same = reply is not None and reply.split() == found["draft"].split()
        found["outcome"] = "sent_as_is" if same else "edited"
    return found
