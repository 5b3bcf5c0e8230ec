"""Helpdesk message formats, one module each, every one a `parse(value: bytes) -> Ticket`; the vendor ones take
`ai_assist` (`kafka.ai_assist`: the custom field and tag prefix that carry the model's draft) as a keyword."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

from daemon.config import AiAssistMapping
from daemon.tickets import Ticket

FORMATS = ("canonical", "zendesk", "freshdesk", "intercom", "helpscout", "salesforce")


def parser_for(format_name: str, ai_assist: AiAssistMapping | None = None) -> Callable[[bytes], Ticket]:
    """The format's `parse`; `ai_assist` says where a vendor payload carries the model's draft (the
    canonical format has its own `ai_assist` field)."""
    if format_name not in FORMATS:
        raise ValueError(f"unknown ticket format {format_name!r}; known formats: {', '.join(FORMATS)}")
    parse = importlib.import_module(f"connectors.formats.{format_name}").parse
    if format_name == "canonical" or ai_assist is None or ai_assist.field is None:
        return parse
    return functools.partial(parse, ai_assist=ai_assist)
