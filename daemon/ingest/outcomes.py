"""A resolved ticket's online-probation record (daemon/store/online.py, daemon/champion/online.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from daemon.ingest.feedback import edit_ratio
from daemon.ingest.pairs import requester_identities
from daemon.store.online import OutcomeRow
from daemon.tickets import Ticket


def _utc_iso(when: datetime | None) -> str:
    when = when or datetime.now(timezone.utc)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc) \
        .isoformat(timespec="seconds")


def outcome_row(ticket: Ticket) -> OutcomeRow | None:
    """The ticket's record when an adapter version drafted its first answer: numbers and labels only, the
    edit size measured on the raw texts, which are not kept. Resolved at: `resolved_at`, else `updated_at`."""
    assist = ticket.ai_assist
    version = (assist.model_version or "").strip() if assist is not None else ""
    if assist is None or not version:
        return None
    reply = ticket.first_public_agent_reply()
    ratio = edit_ratio(assist.draft.strip(), reply.body.strip()) if reply is not None else None
    return OutcomeRow(ticket_id=ticket.ticket_id, model_name=assist.model_name, model_version=version,
                      resolved_at=_utc_iso(ticket.resolved_at or ticket.updated_at), category=ticket.category,
                      csat=ticket.csat, outcome=assist.outcome.value, edit_ratio=ratio,
                      identities=requester_identities(ticket))
