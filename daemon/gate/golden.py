"""Golden prompts: support questions every candidate answers (greedily, in the worker's probe) and the
expectations the gate checks its answers against; the YAML format, its loader, and what the worker
spec carries. Also where the general (non-support) text of the forgetting guard lives.

The shipped sets are in `daemon/gate/data/`: a generic one with only universal expectations, and one
for the tiny demo model (gate profile `demo`) built from the synthetic tickets of `daemon.demo.samples`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

GATE_DATA = Path(__file__).parent / "data"
DEFAULT_GOLDEN = GATE_DATA / "golden_prompts.yaml"
DEMO_GOLDEN = GATE_DATA / "golden_prompts_demo.yaml"
DEFAULT_GENERAL_TEXT = GATE_DATA / "general_text.txt"


class GoldenError(ValueError):
    """A golden-prompts or general-text file that cannot be used; the message names the file and field."""


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r} ({exc})") from None
    return pattern


Pattern = Annotated[str, AfterValidator(_compiles)]
Phrase = Annotated[str, Field(min_length=1)]


class GoldenPrompt(BaseModel):
    """One customer question and what its answer must (not) contain; matching is case-insensitive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    category: str | None = None
    subject: str | None = None  # documentation only: training examples carry no subject (see pairs.py)
    max_new_tokens: int | None = Field(default=None, ge=1, le=2048)
    must_contain: tuple[Phrase, ...] = ()
    must_not_contain: tuple[Phrase, ...] = ()
    regex: tuple[Pattern, ...] = ()  # every pattern must match (re.search)
    must_not_match: tuple[Pattern, ...] = ()  # no pattern may match


class GoldenSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: tuple[GoldenPrompt, ...] = Field(min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1, le=2048)  # default for prompts that set none
    source: str = ""  # the file it was read from

    @model_validator(mode="after")
    def _unique_ids(self) -> GoldenSet:
        seen: set[str] = set()
        for index, prompt in enumerate(self.prompts):
            if prompt.id in seen:
                raise ValueError(f"prompts.{index}.id: duplicate id {prompt.id!r}; give every prompt its own id")
            seen.add(prompt.id)
        return self

    def by_id(self) -> dict[str, GoldenPrompt]:
        return {prompt.id: prompt for prompt in self.prompts}


def load_golden(path: Path | None, profile: str) -> GoldenSet:
    """The golden prompts of `path`; None: the shipped generic set, or the demo set for profile "demo"."""
    if path is None:
        path = DEMO_GOLDEN if profile == "demo" else DEFAULT_GOLDEN
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenError(
            f"{path}: file does not exist; fix gate.golden_prompts or remove it for the shipped set"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: not readable ({exc})") from None
    except yaml.YAMLError as exc:
        raise GoldenError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise GoldenError(f"{path}: must be a mapping with a 'prompts' list, not {type(raw).__name__}")
    try:
        return GoldenSet.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise GoldenError(f"{path}: {where + ': ' if where else ''}{message}") from None


def spec_prompts(golden: GoldenSet, system_prompt: str | None) -> list[dict]:
    """The `golden_prompts` of the worker spec: each prompt as the chat the model was trained on up to
    the first customer turn (the system prompt, then the customer's text as pairs.py renders it)."""
    prompts = []
    for prompt in golden.prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt.prompt.strip()})
        entry: dict = {"id": prompt.id, "messages": messages}
        max_new_tokens = prompt.max_new_tokens or golden.max_new_tokens
        if max_new_tokens is not None:
            entry["max_new_tokens"] = max_new_tokens
        prompts.append(entry)
    return prompts


def general_text_path(path: Path | None) -> Path:
    """The general text of the forgetting guard: `path`, or the shipped public-domain set when None."""
    chosen = DEFAULT_GENERAL_TEXT if path is None else Path(path)
    if not chosen.is_file():
        raise GoldenError(f"{chosen}: general text file does not exist; fix gate.general_text or remove it")
    return chosen
