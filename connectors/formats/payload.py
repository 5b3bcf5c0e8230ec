"""Reading a vendor payload: JSON in, required fields by path, the canonical `Ticket` out.

Errors name the vendor's field path (`ticket.status: Field required`), never a field's value.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from daemon.tickets import Ticket, TicketParseError, load_json_object, ticket_from_dict

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
