"""The sample tickets' intents: per intent a category, a few customer phrasings, one agent answer style
worded a few ways, follow-ups and internal notes (which never reach training); the texts are data, in
intents.yaml beside this file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

INTENTS_FILE = Path(__file__).with_name("intents.yaml")


@dataclass(frozen=True)
class Intent:
    name: str
    category: str
    subjects: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # one answer style, worded a few ways
    follow_ups: tuple[str, ...]
    follow_up_answer: str
    notes: tuple[str, ...]  # internal notes: never public, never trained on


def load_intents(path: Path = INTENTS_FILE) -> tuple[Intent, ...]:
    """The intents as data, from intents.yaml."""
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))
    return tuple(Intent(**{key: tuple(value) if isinstance(value, list) else value for key, value in row.items()})
                 for row in rows)


INTENTS: tuple[Intent, ...] = load_intents()
