"""Log records as the service writes them: one JSON object per line (`log.format: json`) or text,
with the cycle and model version a line is about, and credentials in URLs masked.

`log_context()` binds fields to every line logged inside it (in this thread); a cycle's id and
version are picked up from the log calls that name them (`"cycle %s: ..."`, `"version %s ..."`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.config import LogConfig

CONTEXT_FIELDS = ("cycle_id", "version")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("ticketune_log_context",
                                                                                default=None)
_NAMED_ARG = re.compile(r"\b(cycle|version) %s")  # the log calls' own wording: "cycle %s: ...", "version %s"
_PLACEHOLDER = re.compile(r"%%|%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:)[^\s/@]+@")


def mask_url_password(text: str) -> str:
    """`http://user:pass@host` → `http://user:***@host`, anywhere in `text`."""
    return _URL_PASSWORD.sub(r"\1***@", text)


@contextmanager
def log_context(**fields: str) -> Iterator[dict[str, str]]:
    """Every line logged inside (in this thread) carries `fields`; ids named by the log calls join them."""
    bound = {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(bound)
    try:
        yield bound
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts `cycle_id`/`version` on the record (from `extra=`, the log call's arguments, or the
    bound context) and masks URL passwords in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        named = _named_args(record)
        if bound is not None and "cycle_id" in named:
            bound.setdefault("cycle_id", named["cycle_id"])  # the rest of the cycle's lines carry it too
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or named.get(name) or (bound or {}).get(name)
            setattr(record, name, value)
        message = record.getMessage()
        masked = mask_url_password(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _named_args(record: logging.LogRecord) -> dict[str, str]:
    if not isinstance(record.msg, str) or not isinstance(record.args, tuple):
        return {}
    found: dict[str, str] = {}
    placeholders = [m.start() for m in _PLACEHOLDER.finditer(record.msg) if m.group() != "%%"]
    for match in _NAMED_ARG.finditer(record.msg):
        index = placeholders.index(match.end() - 2) if match.end() - 2 in placeholders else len(record.args)
        if index < len(record.args) and record.args[index] is not None:
            found.setdefault("cycle_id" if match.group(1) == "cycle" else "version", str(record.args[index]))
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and cycle_id / version when the line is about one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc"] = mask_url_password(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: msg [cycle_id=… version=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None))
        return mask_url_password(f"{text} [{tags}]" if tags else text)


def configure_logging(cfg: LogConfig) -> None:
    """Root logging to stderr: one JSON object per line (`log.format: json`) or text; URL passwords masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    for noisy in ("kafka", "mlflow", "alembic", "apscheduler", "urllib3", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))
