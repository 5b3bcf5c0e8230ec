"""The canonical ticket JSON (see ARCHITECTURE.md): one UTF-8 JSON object per message."""

from __future__ import annotations

from daemon.tickets import Ticket, parse_canonical


def parse(value: bytes) -> Ticket:
    return parse_canonical(value)
