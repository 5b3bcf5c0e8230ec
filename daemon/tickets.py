"""The support-ticket domain model: the canonical ticket JSON every helpdesk format maps to.

Unknown fields are ignored; a missing or mistyped required field is a `TicketParseError`,
which the ingest loop turns into a dead-letter record with the error as its reason.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RESOLVED_STATUSES = frozenset({"solved", "closed", "resolved"})
MAX_JSON_NESTING = 64  # helpdesk payloads nest under ten levels
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


class Role(str, Enum):
    customer = "customer"
    agent = "agent"
    bot = "bot"
    system = "system"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Person(_Lenient):
    id: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class Message(_Lenient):
    author_role: Role
    author_name: str | None = None
    author_email: str | None = None
    public: bool = True
    body: str
    created_at: datetime | None = None


class DraftOutcome(str, Enum):
    """What the agent did with the model's draft of the first answer."""

    sent_as_is = "sent_as_is"
    edited = "edited"
    discarded = "discarded"


class AiAssist(_Lenient):
    """Which adapter version drafted the first answer, the draft, and what the agent did with it.

    The draft belongs to the ticket's first public agent reply; it feeds preference learning (a pair
    when the agent edited or discarded it) and each champion's online probation.
    """

    model_name: str | None = None
    model_version: str | None = None
    draft: str
    outcome: DraftOutcome

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Ticket(_Lenient):
    ticket_id: str = Field(min_length=1)
    status: str
    channel: str | None = None
    subject: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    language: str | None = None
    csat: float | None = Field(default=None, allow_inf_nan=False)  # NaN would slip past quality.min_csat
    created_at: datetime | None = None
    updated_at: datetime | None = None
    resolved_at: datetime | None = None
    requester: Person | None = None
    agents: list[Person] = Field(default_factory=list)
    messages: list[Message]
    ai_assist: AiAssist | None = None

    @field_validator("ticket_id", mode="before")
    @classmethod
    def _ticket_id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("status")
    @classmethod
    def _status_lower(cls, value: str) -> str:
        return value.strip().lower()

    @property
    def is_resolved(self) -> bool:
        return self.status in RESOLVED_STATUSES

    def first_public_agent_reply(self) -> Message | None:
        """The reply an `ai_assist` draft belongs to: the first public, non-empty agent message."""
        return next((m for m in self.messages if m.author_role == Role.agent and m.public and m.body.strip()), None)

    @property
    def revision(self) -> str:
        """Orders revisions of one ticket: later `updated_at`/`resolved_at` wins, not arrival order.

        Compared as text, so it is always UTC at a fixed width (naive stamps are read as UTC).
        """
        stamp = self.updated_at or self.resolved_at or self.created_at
        if stamp is None:
            return ""
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.astimezone(timezone.utc).isoformat(timespec="microseconds")


# Every `TicketParseError.reason`, here and in connectors/formats/ (a test keeps the list whole).
PARSE_REASONS = ("invalid_utf8", "invalid_json", "not_an_object", "invalid_ticket", "unsupported_payload")


class TicketParseError(ValueError):
    """A message that cannot become a `Ticket`; `reason` is a short machine-readable code (`PARSE_REASONS`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_json_object(value: bytes) -> dict:
    """One UTF-8 JSON object, or a `TicketParseError` saying why not (every format starts here)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TicketParseError("invalid_utf8", str(exc)) from None
    if _nests_deeper_than(text, MAX_JSON_NESTING):
        raise TicketParseError("invalid_json", f"nested deeper than {MAX_JSON_NESTING} levels")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: a JSONDecodeError, or an integer over 4300 digits
        raise TicketParseError("invalid_json", str(exc)[:300]) from None
    if not isinstance(data, dict):
        raise TicketParseError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    return data


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON text nests deeper than `limit`, its strings left out. A fixed limit: json.loads stops at
    whatever the caller's stack leaves, so one record could be stored by one process and dead-lettered by another."""
    if text.count("[") + text.count("{") <= limit:  # no more openings than the limit: no deeper nesting either
        return False
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    if len(brackets) <= limit:
        return False
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_canonical(value: bytes) -> Ticket:
    """Parses one canonical ticket JSON document (UTF-8) into a `Ticket`.

    pydantic reads the bytes itself first (no dict in between: a third of the cost); a document it refuses,
    or one with more brackets than the nesting limit, takes the long way, which accepts and refuses what it
    always did and says why (a lone surrogate escape, which pydantic refuses, is accepted there)."""
    if value.count(b"[") + value.count(b"{") <= MAX_JSON_NESTING:
        try:
            return Ticket.model_validate_json(value)
        except ValidationError:
            pass
    return ticket_from_dict(load_json_object(value))


def ticket_from_dict(data: object) -> Ticket:
    if not isinstance(data, dict):
        raise TicketParseError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        return Ticket.model_validate(data)
    except ValidationError as exc:
        raise TicketParseError("invalid_ticket", describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """`messages.0.body: Field required; status: ...`: field paths, never field values."""
    parts = []
    for err in exc.errors(include_input=False):
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)[:1000]
