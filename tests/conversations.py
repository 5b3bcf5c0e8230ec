"""The hand-written conversation set in tests/data/conversations/: canonical tickets of one fictional company.

`load_conversations()` gives every ticket, `load_conversations("billing")` one theme file's; each ticket is the
parsed JSON object of one line (a dict in the canonical ticket shape, with its `ai_assist` block where it has one),
ordered by ticket id, so every call returns the same list.
"""

from __future__ import annotations

import json
from pathlib import Path

CONVERSATIONS_DIR = Path(__file__).parent / "data" / "conversations"


def conversation_themes() -> list[str]:
    """The theme names, one per JSON Lines file (`billing`, `shipping`, ...), sorted."""
    return sorted(path.stem for path in CONVERSATIONS_DIR.glob("*.jsonl"))


def load_conversations(theme: str | None = None) -> list[dict]:
    """The tickets of one theme, or of all themes when `theme` is None, sorted by ticket id."""
    if theme is None:
        paths = sorted(CONVERSATIONS_DIR.glob("*.jsonl"))
    else:
        path = CONVERSATIONS_DIR / f"{theme}.jsonl"
        if not path.is_file():
            raise ValueError(f"no conversation theme {theme!r}; the themes are {', '.join(conversation_themes())}")
        paths = [path]
    tickets = [
        json.loads(line)
        for path in paths
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return sorted(tickets, key=lambda ticket: ticket["ticket_id"])
