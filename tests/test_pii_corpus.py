"""Recall and precision of the scrubber, per kind of personal data, and how much of what must stay does stay,
on the labelled corpus in tests/data/pii/. Each snippet goes through a canonical ticket whose requester and
agent are the snippet's, as at ingest. `python -m pytest tests/test_pii_corpus.py -s` prints the table."""

import json
import re
from pathlib import Path

from daemon.ingest.privacy import PLACEHOLDERS, scrubber_for_ticket
from daemon.tickets import ticket_from_dict

CORPUS = Path(__file__).parent / "data" / "pii" / "corpus.jsonl"
TYPE_OF_PLACEHOLDER = {
    "<EMAIL>": "EMAIL", "<CUSTOMER_EMAIL>": "EMAIL", "<AGENT_EMAIL>": "EMAIL",
    "<PHONE>": "PHONE", "<CUSTOMER_PHONE>": "PHONE", "<CARD_NUMBER>": "CARD", "<IBAN>": "IBAN", "<SSN>": "SSN",
    "<IP_ADDRESS>": "IP", "<SECRET>": "SECRET", "<STREET_ADDRESS>": "ADDRESS", "<POSTCODE>": "POSTCODE",
    "<DATE_OF_BIRTH>": "DOB", "<ID_NUMBER>": "ID_NUMBER", "<PERSON_NAME>": "OTHER_PERSON",
    **{f"<{side}_{part}>": "PERSON" for side in ("CUSTOMER", "AGENT") for part in ("NAME", "FIRST_NAME", "LAST_NAME")},
}
TYPES = {"EMAIL", "PHONE", "CARD", "IBAN", "SSN", "IP", "SECRET", "ADDRESS", "POSTCODE", "PERSON", "OTHER_PERSON",
         "DOB", "ID_NUMBER"}
MIN_RECALL = {kind: 0.99 if kind in ("EMAIL", "PHONE", "CARD") else 0.95 for kind in TYPES}
MIN_PRECISION = 0.95
MIN_KEPT = 0.97
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def load_corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def scrub_record(record: dict) -> str:
    messages = [{"author_role": "customer", "body": "x"}]
    if record.get("agent"):
        agent = record["agent"]
        messages.append({"author_role": "agent", "author_name": agent.get("name"),
                         "author_email": agent.get("email"), "body": "y"})
    ticket = ticket_from_dict({"ticket_id": "1", "status": "solved", "requester": record.get("requester") or {},
                               "language": record.get("language"), "messages": messages})
    return scrubber_for_ticket(ticket).scrub(record["text"])


def replaced_spans(text: str, scrubbed: str) -> list[tuple[int, int, str]]:
    """(start, end, placeholder) in `text` for every placeholder in `scrubbed`: the kept text between the
    placeholders is matched literally, each placeholder stands for the shortest non-empty run between."""
    placeholders = _PLACEHOLDER.findall(scrubbed)
    literals = _PLACEHOLDER.split(scrubbed)
    pattern = "(.+?)".join(re.escape(literal) for literal in literals)
    match = re.fullmatch(pattern, text, re.DOTALL)
    assert match is not None, f"scrubbed text does not align with its source: {scrubbed!r}"
    return [(*match.span(index + 1), placeholder) for index, placeholder in enumerate(placeholders)]


def labelled_spans(record: dict) -> list[tuple[int, int, str]]:
    """Where each labelled value sits in the text: longest values first, whole words, one place each."""
    claimed: list[tuple[int, int, str]] = []
    for span in sorted(record["spans"], key=lambda s: len(s["value"]), reverse=True):
        value = span["value"]
        for found in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", record["text"]):
            if not any(found.start() < end and start < found.end() for start, end, _ in claimed):
                claimed.append((found.start(), found.end(), span["type"]))
                break
        else:
            raise AssertionError(f"labelled value not found as a whole word: {value!r} in {record['text']!r}")
    return claimed


def kept_spans(record: dict, replaced: list[tuple[int, int, str]]) -> list[tuple[str, bool]]:
    """Each must-keep value of the snippet and whether no placeholder touches it."""
    found = []
    for value in record.get("keep", []):
        start = record["text"].index(value)
        found.append((value, not any(s < start + len(value) and start < e for s, e, _ in replaced)))
    return found


def measure(corpus: list[dict]) -> tuple[dict, dict, list[str]]:
    """Per type: labelled and recalled counts (a value is recalled when placeholders cover all of it), and
    replaced and correct counts (a replacement is correct when it overlaps a labelled value); under "KEEP"
    in the first, the must-keep values and how many stayed."""
    recall: dict[str, list[int]] = {}
    precision: dict[str, list[int]] = {}
    mistakes = []
    for record in corpus:
        text = record["text"]
        scrubbed = scrub_record(record)
        replaced = replaced_spans(text, scrubbed)
        labelled = labelled_spans(record)
        for value, kept in kept_spans(record, replaced):
            counts = recall.setdefault("KEEP", [0, 0])
            counts[0] += 1
            counts[1] += kept
            if not kept:
                mistakes.append(f"lost KEEP {value!r}: {scrubbed!r}")
        for start, end, kind in labelled:
            covered = all(any(s <= i < e for s, e, _ in replaced) for i in range(start, end))
            counts = recall.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += covered
            if not covered:
                mistakes.append(f"missed {kind} {text[start:end]!r}: {scrubbed!r}")
        for start, end, placeholder in replaced:
            kind = TYPE_OF_PLACEHOLDER[placeholder]
            correct = any(start < e and s < end for s, e, _ in labelled)
            counts = precision.setdefault(kind, [0, 0])
            counts[0] += 1
            counts[1] += correct
            if not correct:
                mistakes.append(f"false {kind} {text[start:end]!r}: {scrubbed!r}")
    return recall, precision, mistakes


def table(recall: dict, precision: dict) -> str:
    lines = [f"{'type':<12} {'labelled':>8} {'recall':>7} {'replaced':>8} {'precision':>9}"]
    for kind in sorted(set(recall) | set(precision)):
        labelled, found = recall.get(kind, [0, 0])
        replaced, correct = precision.get(kind, [0, 0])
        lines.append(f"{kind:<12} {labelled:>8} {found / labelled if labelled else 1:>7.1%} {replaced:>8} "
                     f"{correct / replaced if replaced else 1:>9.1%}")
    replaced = sum(c[0] for c in precision.values())
    correct = sum(c[1] for c in precision.values())
    pii = [c for kind, c in recall.items() if kind != "KEEP"]
    lines.append(f"{'overall':<12} {sum(c[0] for c in pii):>8} "
                 f"{sum(c[1] for c in pii) / sum(c[0] for c in pii):>7.1%} "
                 f"{replaced:>8} {correct / replaced:>9.1%}")
    return "\n".join(lines)


def test_the_corpus_is_large_and_covers_every_type_and_plenty_of_negatives():
    corpus = load_corpus()
    assert len(corpus) >= 600
    types = {span["type"] for record in corpus for span in record["spans"]}
    assert types == TYPES
    assert sum(1 for record in corpus if not record["spans"]) >= 150
    assert sum(len(record.get("keep", [])) for record in corpus) >= 180


def test_recall_and_precision_per_type_on_the_labelled_corpus():
    recall, precision, mistakes = measure(load_corpus())
    report = table(recall, precision)
    print("\n" + report)
    low_recall = {kind: found / labelled for kind, (labelled, found) in recall.items()
                  if found / labelled < MIN_RECALL.get(kind, MIN_KEPT)}
    overall = sum(c[1] for c in precision.values()) / sum(c[0] for c in precision.values())
    message = f"\n{report}\n" + "\n".join(mistakes)
    assert not low_recall, message
    assert overall >= MIN_PRECISION, message


def test_replaced_spans_align_placeholders_with_the_source_text():
    assert replaced_spans("call 212-555-0199 or mail a@b.io", "call <PHONE> or mail <EMAIL>") == [
        (5, 17, "<PHONE>"), (26, 32, "<EMAIL>"),
    ]
