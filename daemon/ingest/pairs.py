"""Ticket → chat training example (system / user / assistant turns), or a skip with its reason.

Only public agent messages become assistant turns; internal notes, bot and system messages never
do. Consecutive turns of one role merge; customer turns after the last agent answer are dropped.
Every text is scrubbed of personal data before it leaves this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from daemon.ingest.feedback import FeedbackRules, feedback_for
from daemon.ingest.privacy import DEFAULT_POLICY, PrivacyPolicy, scrubber_for_ticket
from daemon.tickets import Role, Ticket

# Recorded with every stored example; bump it when turning tickets into examples changes (mapping,
# scrubbing), so that examples made by an older pipeline can be found and rebuilt.
PIPELINE_VERSION = "3"  # 2: international scrubbing (issue 16); 3: examples carry the ticket's feedback (issue 18)

SKIP_NOT_RESOLVED = "not_resolved"
SKIP_NO_AGENT_ANSWER = "no_public_agent_answer"
SKIP_NO_CUSTOMER_MESSAGE = "no_customer_message"
SKIP_EMPTY_BODY = "empty_body"
SKIP_REASONS = (SKIP_NOT_RESOLVED, SKIP_NO_AGENT_ANSWER, SKIP_NO_CUSTOMER_MESSAGE, SKIP_EMPTY_BODY)
# What `json.dumps(document, ensure_ascii=False, sort_keys=True)` builds on every call, built once (1 µs an example)
_EXAMPLE_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Example:
    """One chat example, already scrubbed; what the store keeps and the worker trains on."""

    ticket_id: str
    revision: str
    messages: list[dict[str, str]]
    category: str | None = None
    language: str | None = None
    group_key: str = ""
    placeholders: list[str] = field(default_factory=list)
    quality_signature: bytes | None = None  # set by the quality filter; the store keeps it for dedupe
    identities: tuple[str, ...] = ()  # the requester's normalised ids; the store keeps only keyed hashes
    dedupe_keys: tuple[int, ...] | None = None  # its LSH band keys, set by a store-backed quality filter
    feedback: dict | None = None  # daemon/ingest/feedback.py: the CSAT label, the agent's edit of a draft
    sft: bool = True  # False: kept only as an undesirable example (low CSAT under a preference objective)

    def signed(self, signature: bytes, dedupe_keys: tuple[int, ...] | None) -> Example:
        """`dataclasses.replace(self, quality_signature=signature, dedupe_keys=dedupe_keys)`, which the quality
        filter asks for once an example: the same copy without `replace`'s walk over the fields and a frozen
        `__init__` (0.6 µs instead of 3; the class has no `__post_init__` to run, a test pins the equality)."""
        copy = object.__new__(Example)
        copy.__dict__.update(self.__dict__, quality_signature=signature, dedupe_keys=dedupe_keys)
        return copy

    def to_json(self) -> str:
        document: dict = {
            "ticket_id": self.ticket_id,
            "messages": self.messages,
            "category": self.category,
            "language": self.language,
            "placeholders": self.placeholders,
        }
        if self.feedback:
            document["feedback"] = self.feedback
        if not self.sft:
            document["sft"] = False
        return _EXAMPLE_JSON.encode(document)


@dataclass(frozen=True)
class Skip:
    ticket_id: str
    reason: str


def requester_identities(ticket: Ticket) -> tuple[str, ...]:
    """`email:...` and `id:...` of the requester, normalised, for erasure requests by email or id."""
    requester = ticket.requester
    if requester is None:
        return ()
    found = []
    if requester.email and requester.email.strip():
        found.append("email:" + requester.email.strip().lower())
    if requester.id:
        found.append("id:" + requester.id)
    return tuple(found)


def group_key_for(ticket: Ticket) -> str:
    """Tickets of one requester share a key, so they land on the same side of the split."""
    requester = ticket.requester
    identity = None
    if requester is not None:
        identity = requester.id or (requester.email or "").strip().lower() or None
    basis = f"requester:{identity}" if identity else f"ticket:{ticket.ticket_id}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def ticket_to_example(ticket: Ticket, system_prompt: str | None = None, *, scrub: bool = True,
                      privacy: PrivacyPolicy = DEFAULT_POLICY, feedback: FeedbackRules | None = None,
                      sft: bool = True) -> Example | Skip:
    """`privacy`: the scrubbing policy (regions, the company's kept contact details); `feedback`: the
    thresholds that turn CSAT and drafts into preference data (default ones when None); `sft=False` marks
    an example kept only as an undesirable one."""
    if not ticket.is_resolved:
        return Skip(ticket.ticket_id, SKIP_NOT_RESOLVED)

    turns: list[tuple[str, str]] = []
    saw_empty = False
    for message in ticket.messages:
        if message.author_role == Role.customer:
            role = "user"
        elif message.author_role == Role.agent and message.public:
            role = "assistant"
        else:
            continue  # internal notes, bots and system messages are never trained on
        body = message.body.strip()
        if not body:
            saw_empty = True
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + body)
        else:
            turns.append((role, body))

    while turns and turns[-1][0] == "user":
        turns.pop()
    while turns and turns[0][0] == "assistant":
        turns.pop(0)  # an agent opening without a question teaches nothing answerable
    if not any(role == "assistant" for role, _ in turns):
        has_agent = any(m.author_role == Role.agent and m.public and m.body.strip() for m in ticket.messages)
        if saw_empty and not has_agent:
            return Skip(ticket.ticket_id, SKIP_EMPTY_BODY)
        if has_agent:
            return Skip(ticket.ticket_id, SKIP_NO_CUSTOMER_MESSAGE)
        return Skip(ticket.ticket_id, SKIP_NO_AGENT_ANSWER)

    scrubber = scrubber_for_ticket(ticket, privacy) if scrub else None
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    # scrub=False exists for the tests of the gate's PII check (privacy.scrub: false); never in production
    texts = scrubber.scrub_all([text for _, text in turns]) if scrubber else [text for _, text in turns]
    messages.extend({"role": role, "content": text} for (role, _), text in zip(turns, texts, strict=True))
    first_answer = next(m["content"] for m in messages if m["role"] == "assistant")
    reply = ticket.first_public_agent_reply()
    if reply is None or not next(text for role, text in turns if role == "assistant").startswith(reply.body.strip()):
        first_answer = None  # the first reply opened the conversation: its draft has no question to pair with
    return Example(
        ticket_id=ticket.ticket_id,
        revision=ticket.revision,
        messages=messages,
        category=ticket.category,
        language=ticket.language,
        group_key=group_key_for(ticket),
        placeholders=sorted(scrubber.used_placeholders) if scrubber else [],
        identities=requester_identities(ticket),
        feedback=feedback_for(ticket, first_answer, feedback or FeedbackRules(),
                              scrubber.scrub if scrubber else (lambda text: text)),
        sft=sft,
    )
