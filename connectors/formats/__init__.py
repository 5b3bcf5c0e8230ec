"""Helpdesk message formats, one module each, every one a `parse(value: bytes) -> Ticket`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from daemon.tickets import Ticket

FORMATS = ("canonical", "zendesk", "freshdesk", "intercom", "helpscout", "salesforce")


def parser_for(format_name: str) -> Callable[[bytes], Ticket]:
    if format_name not in FORMATS:
        raise ValueError(f"unknown ticket format {format_name!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"connectors.formats.{format_name}").parse
