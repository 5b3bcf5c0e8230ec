"""Chat examples → token ids with labels on assistant tokens only, and length-grouped batches of them.

The base model's own chat template renders each conversation. Assistant character spans come from
rendering the prefix before each assistant turn (with the generation prompt) and the prefix through
it; a fast tokenizer's offset mapping turns them into token labels. Each span covers the assistant
content plus the end-of-turn special token that follows it. Templates that are not prefix-stable (the
rendering of earlier turns changes as turns are added) fall back to locating each assistant content
in the full rendering, in order. Everything else is labelled -100, and so are the tokens of a
placeholder the serving layer cannot fill (`<EMAIL>`, `<CARD_NUMBER>`, any `<UPPER_CASE>` word not in
the spec's `supervised_placeholders`): the model reads them in context but never learns to write them.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from daemon.training.spec import SpecError

IGNORE_INDEX = -100
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")  # what the privacy scrubber writes, new types included
log = logging.getLogger(__name__)
_warned_templates: set[str] = set()


@dataclass(frozen=True)
class TokenizedExample:
    ticket_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizedSet:
    examples: list[TokenizedExample]
    dropped: int  # no supervised token left after truncation, or no assistant turn at all
    truncated: int


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(
                    f"{path} line {number} is not valid JSON ({exc.msg}); fix or remove it"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise SpecError(
                    f"{path} line {number} has no 'messages' list; write one chat example per line"
                )
            records.append(record)
    return records


def tokenize_file(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_len: int,
    supervised_placeholders: Collection[str] | None = None,
) -> TokenizedSet:
    """`supervised_placeholders`: None supervises every assistant token; else the tokens of any other
    placeholder carry no label."""
    examples, dropped, truncated = [], 0, 0
    for record in read_jsonl(path):
        try:
            ids, labels = tokenize_conversation(tokenizer, record["messages"], supervised_placeholders)
        except TemplateError as exc:
            raise SpecError(
                f"{path} ticket {record.get('ticket_id')}: the base model's chat template rejects "
                f"this conversation ({exc}); fix the example or use a model whose template accepts it"
            ) from None
        if len(ids) > max_seq_len:
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            truncated += 1
        example = TokenizedExample(str(record.get("ticket_id", "")), ids, labels)
        if example.supervised_tokens == 0:
            dropped += 1
            continue
        examples.append(example)
    return TokenizedSet(examples, dropped, truncated)


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
    supervised_placeholders: Collection[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels: the id on assistant tokens, -100 elsewhere and
    on the tokens of placeholders outside `supervised_placeholders` (when it is given)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    span_index = 0
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        span_start = spans[span_index][0]
        # A token such as " You" may begin with the space before the content: it still produces the content.
        if end > max(start, span_start) and not text[start:span_start].strip():
            labels[position] = ids[position]
    if supervised_placeholders is not None:
        hidden = [m.span() for m in PLACEHOLDER.finditer(text) if m.group() not in supervised_placeholders]
        for position, (start, end) in enumerate(encoded["offset_mapping"]):
            if any(start < h_end and end > h_start for h_start, h_end in hidden):
                labels[position] = IGNORE_INDEX
    return ids, labels


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the [start, end) character spans to supervise, in order."""
    text = _render(tokenizer, messages, add_generation_prompt=False)
    turns = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
    markers = _end_markers(tokenizer)
    spans = _prefix_spans(tokenizer, messages, turns, text, markers)
    if spans is None:
        if tokenizer.chat_template not in _warned_templates:
            _warned_templates.add(tokenizer.chat_template)
            log.warning("chat template is not prefix-stable; locating assistant contents in the rendering")
        spans = _search_spans(messages, turns, text, markers)
    return text, spans


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _prefix_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    turns: list[int],
    text: str,
    markers: list[str],
) -> list[tuple[int, int]] | None:
    spans = []
    for turn in turns:
        try:
            before = _render(tokenizer, messages[:turn], add_generation_prompt=True)
            through = _render(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        except Exception:  # some templates refuse partial conversations (e.g. no user turn yet)
            return None
        if not (through.startswith(before) and text.startswith(through)):
            return None
        content = messages[turn].get("content", "").strip()
        # Templates without a generation prompt leave the role header inside the span: skip to the content.
        found = text.find(content, len(before), len(through))
        start = found if found >= 0 else len(before)
        content_end = start + len(content) if found >= 0 else len(through.rstrip())
        spans.append((start, _turn_end(text, content_end, len(through), markers)))
    return spans


def _search_spans(
    messages: list[dict[str, str]], turns: list[int], text: str, markers: list[str]
) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    for turn in turns:
        content = messages[turn].get("content", "").strip()
        start = text.find(content, cursor)
        if start < 0:
            raise SpecError(
                "the chat template changes assistant contents, so they cannot be located; "
                "use a model whose template renders each message's content verbatim"
            )
        content_end = start + len(content)
        spans.append((start, _turn_end(text, content_end, len(text), markers)))
        cursor = spans[-1][1]
    return spans


def _turn_end(text: str, content_end: int, limit: int, markers: list[str]) -> int:
    """End of the supervised span: through the end-of-turn marker right after the content, if any."""
    window = text[content_end:limit]
    hits = [(window.find(marker), marker) for marker in markers if marker in window]
    if hits:
        position, marker = min(hits)
        if not window[:position].strip():
            return content_end + position + len(marker)
    return content_end


def _end_markers(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    special = set(tokenizer.all_special_tokens)
    special.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return sorted(special, key=len, reverse=True)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of index batches: shuffled, then sorted by length within chunks to limit padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches = []
    for begin in range(0, len(order), chunk):
        group = sorted(order[begin : begin + chunk], key=lambda i: lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches
