"""What customers and agents said about answers, as preference data beside each chat example.

- CSAT: a ticket rated at or above `feedback.good_csat` is a desirable example, at or below
  `feedback.bad_csat` an undesirable one (unpaired data for KTO).
- Drafts: a ticket whose agent edited or discarded the model's draft of the first answer gives a pair,
  the answer the agent sent (chosen) over the draft (rejected), when the edit ratio (1 - difflib's
  word-level similarity ratio) is at least `feedback.min_edit_ratio` (DPO).

The feedback travels inside the example (the `feedback` object of its JSON), so it follows the
example's idempotency, erasure, split and batch rules; its prompt and answer are the example's first
exchange. The draft is scrubbed with the ticket's own scrubber, like every other text.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from daemon.config import FeedbackConfig, Settings
from daemon.tickets import DraftOutcome, Ticket

DESIRABLE = "desirable"
UNDESIRABLE = "undesirable"
PAIR = "pair"
KINDS = (DESIRABLE, UNDESIRABLE, PAIR)  # the bounded label values of ticketune_feedback_examples{kind}
# the eval sets of held-out feedback the worker scores (like any eval file) and the gate's preference check reads
FEEDBACK_THUMBS = "feedback_thumbs"
FEEDBACK_CHOSEN = "feedback_chosen"
FEEDBACK_REJECTED = "feedback_rejected"
FEEDBACK_EVAL_SETS = (FEEDBACK_THUMBS, FEEDBACK_CHOSEN, FEEDBACK_REJECTED)


@dataclass(frozen=True)
class FeedbackRules:
    """The `feedback` thresholds, and whether the objective keeps low-CSAT tickets that `quality.min_csat`
    would drop (as undesirable examples the supervised part never trains on)."""

    good_csat: float = 4
    bad_csat: float = 2
    min_edit_ratio: float = 0.2
    keep_undesirable: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackRules:
        cfg: FeedbackConfig = settings.feedback
        return cls(cfg.good_csat, cfg.bad_csat, cfg.min_edit_ratio,
                   keep_undesirable=settings.training.preference is not None)

    def label(self, csat: float | None) -> str | None:
        if csat is None:
            return None
        if csat >= self.good_csat:
            return DESIRABLE
        if csat <= self.bad_csat:
            return UNDESIRABLE
        return None


def edit_ratio(draft: str, sent: str) -> float:
    """How much of the draft the agent changed: 1 - difflib's similarity ratio over the words of both
    (0.0 sent as drafted, 1.0 nothing in common)."""
    return round(1.0 - difflib.SequenceMatcher(None, draft.split(), sent.split(), autojunk=False).ratio(), 4)


def feedback_for(ticket: Ticket, first_answer: str | None, rules: FeedbackRules,
                 scrub: Callable[[str], str]) -> dict | None:
    """The example's `feedback` object, or None when the ticket says nothing about its answers.

    `first_answer` is the example's first assistant turn (scrubbed), or None when the ticket's first
    public agent reply opens the conversation (then a draft of it has no question to pair with).
    """
    found: dict = {}
    label = rules.label(ticket.csat)
    if label is not None:
        found["label"] = label
    assist = ticket.ai_assist
    reply = ticket.first_public_agent_reply()
    if assist is not None and reply is not None and first_answer is not None:
        draft = scrub(assist.draft.strip())
        ratio = edit_ratio(draft, scrub(reply.body.strip()))
        found.update(outcome=assist.outcome.value, model_version=assist.model_version, edit_ratio=ratio)
        if assist.outcome != DraftOutcome.sent_as_is and draft and ratio >= rules.min_edit_ratio:
            found["rejected"] = draft
    return found or None


def feedback_kinds(feedback: dict | None) -> list[str]:
    """The kinds of preference data one example's feedback gives: desirable or undesirable, and pair."""
    if not feedback:
        return []
    kinds = [feedback["label"]] if feedback.get("label") in (DESIRABLE, UNDESIRABLE) else []
    return kinds + ([PAIR] if feedback.get("rejected") else [])


def first_exchange(example: dict) -> tuple[list[dict], str] | None:
    """(the messages before the first answer, the first answer) of a stored example, or None."""
    messages = example.get("messages") or []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            prompt = [dict(m) for m in messages[:index]]
            if any(m.get("role") == "user" for m in prompt) and str(message.get("content", "")).strip():
                return prompt, str(message["content"])
            return None
    return None


def trains_sft(example: dict, preference: bool) -> bool:
    """Whether the supervised part may see an example: never one kept only as undesirable, and under a
    preference objective never one whose customer rated it at or below `feedback.bad_csat`."""
    if example.get("sft") is False:
        return False
    return not (preference and (example.get("feedback") or {}).get("label") == UNDESIRABLE)


def preference_rows(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """The examples' feedback as training rows: thumbs `{ticket_id, prompt, completion, label}` (KTO) and
    pairs `{ticket_id, prompt, chosen, rejected}` (DPO), in the examples' order."""
    thumbs, pairs = [], []
    for example in examples:
        feedback = example.get("feedback") or {}
        exchange = first_exchange(example) if feedback else None
        if exchange is None:
            continue
        prompt, answer = exchange
        ticket_id = example["ticket_id"]
        if feedback.get("label") in (DESIRABLE, UNDESIRABLE):
            thumbs.append({"ticket_id": ticket_id, "prompt": prompt, "completion": answer, "label": feedback["label"]})
        if feedback.get("rejected"):
            pairs.append({"ticket_id": ticket_id, "prompt": prompt, "chosen": answer, "rejected": feedback["rejected"]})
    return thumbs, pairs


def heldout_feedback(*parts: list[dict]) -> tuple[list[dict], list[dict]]:
    """The held-out feedback the gate judges on (thumbs, pairs): every part's examples, each ticket once."""
    seen: dict[str, dict] = {}
    for part in parts:
        for example in part:
            seen.setdefault(example["ticket_id"], example)
    return preference_rows([seen[t] for t in sorted(seen)])


def feedback_eval_sets(thumbs: list[dict], pairs: list[dict]) -> dict[str, list[dict]]:
    """The held-out feedback as eval sets every model is scored on like any chat example: each thumbs
    answer, and each pair's chosen and rejected answer, after its prompt (ticket ids pair them up)."""
    def chat(row: dict, answer: str) -> dict:
        return {"ticket_id": row["ticket_id"], "messages": row["prompt"] + [{"role": "assistant", "content": answer}]}

    return {
        FEEDBACK_THUMBS: [chat(row, row["completion"]) for row in thumbs],
        FEEDBACK_CHOSEN: [chat(row, row["chosen"]) for row in pairs],
        FEEDBACK_REJECTED: [chat(row, row["rejected"]) for row in pairs],
    }


def draft_accepted(outcome: str, ratio: float | None, min_edit_ratio: float) -> bool:
    """Sent as is, or edited by less than `feedback.min_edit_ratio`: the draft was good enough to send."""
    if outcome == DraftOutcome.sent_as_is.value:
        return True
    return outcome == DraftOutcome.edited.value and ratio is not None and ratio < min_edit_ratio
