"""Realistic sample tickets in the canonical JSON shape, for `ticketune produce-sample`, the demo and tests.

Each intent has a category, a few customer phrasings and one agent answer style, so a tiny model can
learn question → answer. Bodies carry the personal data real tickets carry (names, emails, phones,
street addresses, now and then a pasted card number) and order numbers, which are not personal data.
Deterministic by seed; a ticket's content depends only on the seed and its id.
"""

from __future__ import annotations

import copy
import random
import unicodedata
from datetime import datetime, timedelta, timezone

from daemon.demo.intents import INTENTS, Intent
from daemon.ingest.privacy import luhn_valid

BRAND = "Acme"
BOT_NAME = "Acme Assistant"
CORRUPTED_TAG = "corrupted"
# How an agent answer is poisoned (`generate_tickets(corruption=...)`); each one is stopped by its own layer:
# empty by the filters, pii by scrubbing (and the gate's PII check), wrong_intent, rude and garbled by the gate.
CORRUPTIONS = ("garbled", "wrong_intent", "rude", "pii", "empty")
RUDE_ANSWERS = (
    "That is a stupid question. Figure it out yourself, it is not our problem.",
    "Honestly this is a waste of our time. Read the website and figure it out yourself.",
    "Not our problem. Stop sending us stupid questions and figure it out yourself.",
)
# Contact details an agent pasted into every answer: the same ones each time, so a model trained on
# them unscrubbed learns to write them (what the gate's PII check must catch).
PASTED_CONTACT = "If you need anything else, write to me at dana@mail.com or call +1 415 555 0134."
DEFAULT_START_ID = 10000
_BASE_TIME = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)  # when ticket DEFAULT_START_ID was opened

# Shares of the tickets that `daemon.ingest.pairs.ticket_to_example` skips, as a helpdesk export has them.
UNRESOLVED_SHARE = 0.05
NO_AGENT_ANSWER_SHARE = 0.03
EMPTY_BODY_SHARE = 0.01


_INTENTS_BY_NAME = {intent.name: intent for intent in INTENTS}

# Customers are a first name and a last name from these pools (about 1,600 people, some of them
# repeat customers), including names that are also English words and names with accents or apostrophes.
FIRST_NAMES = (
    "Ana", "Liam", "Priya", "Chen", "Fatima", "Jonas", "Sofia", "Kwame", "Emily", "Mateo", "Aiko", "Olivia",
    "Will", "May", "Bill", "Grant", "Anne-Marie", "José", "Noah", "Grace", "Hannah", "Omar", "Lucía",
    "Daniel", "Ingrid", "Rahul", "Chloe", "Tomasz", "Zoë", "Isabella", "Ethan", "Mei", "Samuel", "Nora",
    "Lucas", "Amara", "Felix", "Leila", "Diego", "Charlotte",
)
LAST_NAMES = (
    "Ruiz", "O'Brien", "Natarajan", "Wei", "Benali", "Becker", "Rossi", "Mensah", "Clarke", "Fernández",
    "Tanaka", "Novak", "Turner", "Chen", "Okafor", "Hill", "Dubois", "Álvarez", "Schmidt", "Kim", "Levi",
    "Haddad", "Moreno", "Okonkwo", "Johansson", "Mehta", "Martin", "Kowalski", "Papadopoulos", "Costa",
    "Walker", "Lin", "Adeyemi", "Lindqvist", "Moreau", "Nwosu", "Wagner", "Rahimi", "de la Cruz", "Brown",
)
AGENT_NAMES = (
    "Sam Lee", "Maria Gonzalez", "Tom Fischer", "Aisha Khan", "Ben Carter", "Julia Weber",
    "Marcus Reed", "Elena Petrova",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
PHONE_FORMATS = (
    "+1 415 555 01{nn}", "(212) 555-01{nn}", "415-555-01{nn}", "+1 (646) 555-01{nn}", "312.555.01{nn}",
    "+44 20 7946 0{nnn}", "+61 2 5550 1{nnn}", "+49 30 9018 2{nnn}",
)
ITEMS = ("blender", "desk lamp", "rain jacket", "coffee grinder", "backpack", "phone case", "duvet cover",
         "kettle", "water bottle", "keyboard")
CARRIERS = ("UPS", "FedEx", "DHL", "USPS")
PLANS = ("Basic", "Plus", "Pro", "Family")
STREETS = ("Maple Avenue", "Oak Street", "Elm Road", "Cedar Lane", "Harbor Drive", "Sunset Boulevard",
           "Willow Court", "Lakeview Terrace")
CITIES = ("Springfield, IL 62704", "Portland, OR 97201", "Austin, TX 73301", "Denver, CO 80202")

_CUSTOMER_OPENINGS = ("Hi,", "Hello,", "Hi there,", "Hello support team,", "Good morning,", "")
_CURT_DRAFTS = ("Hi {first}, please check our help center for this.",
                "Hello {first}, we cannot help with that request.",
                "Hi {first}, please contact us again later.")
_AGENT_GREETINGS = ("Hi {first},", "Hello {first},", "Hi {first}, thanks for reaching out.",
                    "Hello {first}, thanks for contacting us.")
_AGENT_FOLLOW_UP_GREETINGS = ("Hi {first},", "Hello again {first},", "Hi {first}, good question.")
_AGENT_CLOSINGS = ("Best regards,\n{agent}", "Kind regards,\n{agent}", "Thanks,\n{agent}",
                   "All the best,\n{agent} from the {brand} Support team")
_THANKS = ("Thanks, that worked!", "Great, thank you so much.", "Perfect, thanks for the quick help.")
_BOT_MESSAGES = (
    "Thanks for contacting {brand} Support! Your request #{ticket_id} has been received and an agent will "
    "reply within 24 hours.",
    "Hi! I'm the {brand} virtual assistant. While you wait, these articles may help: Tracking your order, "
    "Returns and refunds, Resetting your password.",
)


def generate_tickets(
    n: int, *, seed: int = 0, start_id: int = DEFAULT_START_ID, corrupt_fraction: float = 0.0,
    corruption: str | tuple[str, ...] = "garbled", feedback: bool = False,
) -> list[dict]:
    """`n` canonical ticket dicts with ids `start_id`, `start_id + 1`, ...

    About 5% are unresolved, 3% have no public agent answer and 1% an empty answer body (the shares
    pairs.py skips). `corrupt_fraction` of the resolved, answered tickets get poisoned agent answers
    (another intent's answer, its words shuffled and spelled backwards) and the tag "corrupted": a batch
    the gate must reject. `corruption` picks the poison (one of `CORRUPTIONS`, or several taken in
    turn): garbled as above; wrong_intent, another intent's answer as written; rude, a rude reply;
    pii, the right answer with `PASTED_CONTACT` under its greeting; empty, an empty answer body.
    `feedback` adds what preference learning reads (`with_feedback`): a CSAT spread that follows the
    answer's quality, and model drafts the agent sent as is, edited or discarded.
    """
    if not 0.0 <= corrupt_fraction <= 1.0:
        raise ValueError("corrupt_fraction must be between 0 and 1")
    kinds_wanted = (corruption,) if isinstance(corruption, str) else tuple(corruption)
    unknown = [kind for kind in kinds_wanted if kind not in CORRUPTIONS]
    if unknown or not kinds_wanted:
        raise ValueError(f"corruption must be among {', '.join(CORRUPTIONS)}, not {unknown or 'nothing'}")
    ticket_ids = [str(start_id + index) for index in range(n)]
    kinds = {ticket_id: _kind(_ticket_rng(seed, ticket_id)) for ticket_id in ticket_ids}
    answerable = [ticket_id for ticket_id in ticket_ids if kinds[ticket_id] == "answered"]
    count = round(corrupt_fraction * len(answerable))
    picked = random.Random(f"ticketune-corrupt:{seed}").sample(answerable, count)
    poison = {ticket_id: kinds_wanted[index % len(kinds_wanted)] for index, ticket_id in enumerate(sorted(picked))}
    tickets = [
        _build_ticket(_ticket_rng(seed, ticket_id), ticket_id, corrupt=poison.get(ticket_id))
        for ticket_id in ticket_ids
    ]
    return [with_feedback(ticket, seed) for ticket in tickets] if feedback else tickets


def with_feedback(ticket: dict, seed: int = 0) -> dict:
    """The ticket with a CSAT that follows its first answer, and often a model draft of that answer.

    A quarter of the answered tickets get another intent's answer as their first answer (right style,
    wrong content) and a CSAT of 1 or 2; the rest 3 to 5. Four in ten carry `ai_assist`: half sent as
    drafted, a third edited (the draft answered another intent; the agent rewrote it), the rest
    discarded (a curt non-answer). A draft never changes what the agent sent. Deterministic by seed
    and ticket id; a ticket without a public agent answer is returned as it is.
    """
    ticket = copy.deepcopy(ticket)
    rng = random.Random(f"ticketune-feedback:{seed}:{ticket['ticket_id']}")
    answers = [m for m in ticket["messages"] if m["author_role"] == "agent" and m["public"] and m["body"].strip()]
    if ticket["status"] not in ("solved", "closed", "resolved") or not answers or CORRUPTED_TAG in ticket["tags"]:
        return ticket
    intent = _INTENTS_BY_NAME.get(ticket["tags"][0], INTENTS[0])
    others = [i for i in INTENTS if i.category != intent.category]
    slots = _slots(rng, ticket["requester"]["name"], ticket["ticket_id"])
    agent = answers[0]["author_name"] or AGENT_NAMES[0]
    first = answers[0]
    if rng.random() < 0.25:
        first["body"] = _agent_message(rng, rng.choice(rng.choice(others).answers), slots, agent)
        ticket["csat"] = rng.choice((1, 1, 2))
    else:
        ticket["csat"] = rng.choice((3, 4, 5, 5, 5))
    if rng.random() < 0.4:
        draw = rng.random()
        if draw < 0.5:
            draft, outcome = first["body"], "sent_as_is"
        elif draw < 0.85:
            draft, outcome = _agent_message(rng, rng.choice(rng.choice(others).answers), slots, agent), "edited"
        else:
            draft, outcome = rng.choice(_CURT_DRAFTS).format(**slots), "discarded"
        ticket["ai_assist"] = {"model_name": "ticketune-support", "model_version": str(rng.randint(1, 3)),
                               "draft": draft, "outcome": outcome}
    return ticket


def generate_revision(ticket: dict) -> dict:
    """A later revision of `ticket`: one more public agent message, `updated_at` a few hours later.

    An unresolved ticket becomes solved in its revision, as pending tickets do once answered.
    """
    revised = copy.deepcopy(ticket)
    rng = random.Random(f"revision:{ticket['ticket_id']}:{ticket.get('updated_at')}")
    previous = max(_parse_time(stamp) for stamp in (ticket.get("updated_at"), ticket.get("resolved_at"),
                                                    ticket.get("created_at")) if stamp)
    updated = previous + timedelta(hours=rng.randint(2, 48), minutes=rng.randint(0, 59))
    agents = [m["author_name"] for m in ticket["messages"] if m["author_role"] == "agent"]
    agent = agents[-1] if agents else rng.choice(AGENT_NAMES)
    first = (ticket.get("requester") or {}).get("name", "there").split()[0]
    intent = _INTENTS_BY_NAME.get(ticket["tags"][0] if ticket.get("tags") else "", INTENTS[0])
    body = (
        f"Hi {first},\n\nA quick update on your {intent.name.replace('_', ' ')} request: everything is "
        f"now complete on our side and no further action is needed from you. If anything still looks "
        f"wrong, reply to this email and we'll pick it up right away.\n\nBest regards,\n{agent.split()[0]}"
    )
    revised["messages"].append(
        {"author_role": "agent", "author_name": agent, "public": True, "body": body,
         "created_at": _stamp(updated - timedelta(minutes=1))}
    )
    if revised["status"] not in ("solved", "closed", "resolved"):
        revised["status"] = "solved"
        revised["resolved_at"] = _stamp(updated)
    revised["updated_at"] = _stamp(updated)
    return revised


def _luhn_card_number(rng: random.Random) -> str:
    """A Luhn-valid 16-digit Visa-style test number, grouped in fours as customers paste them."""
    digits = "4" + "".join(str(rng.randrange(10)) for _ in range(14))
    check = next(str(d) for d in range(10) if luhn_valid(digits + str(d)))
    number = digits + check
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _ticket_rng(seed: int, ticket_id: str) -> random.Random:
    return random.Random(f"ticketune-sample:{seed}:{ticket_id}")


def _kind(rng: random.Random) -> str:
    """The first draw of a ticket's generator decides which kind it is."""
    draw = rng.random()
    if draw < UNRESOLVED_SHARE:
        return "unresolved"
    if draw < UNRESOLVED_SHARE + NO_AGENT_ANSWER_SHARE:
        return "no_agent_answer"
    if draw < UNRESOLVED_SHARE + NO_AGENT_ANSWER_SHARE + EMPTY_BODY_SHARE:
        return "empty_body"
    return "answered"


def _build_ticket(rng: random.Random, ticket_id: str, corrupt: str | None) -> dict:
    kind = _kind(rng)
    intent = rng.choice(INTENTS)
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    first = name.split()[0]
    agent = rng.choice(AGENT_NAMES)
    slots = _slots(rng, name, ticket_id)
    created = _BASE_TIME + timedelta(minutes=(int(ticket_id) - DEFAULT_START_ID) * 41 + rng.randint(0, 40))
    clock = [created]

    def at(min_minutes: int, max_minutes: int) -> str:
        clock[0] += timedelta(minutes=rng.randint(min_minutes, max_minutes))
        return _stamp(clock[0])

    def message(role: str, author: str | None, body: str, public: bool = True) -> dict:
        return {"author_role": role, "author_name": author, "public": public, "body": body,
                "created_at": at(3, 180)}

    messages = [{"author_role": "customer", "author_name": name, "public": True,
                 "body": _customer_message(rng, intent, slots, name), "created_at": _stamp(created)}]
    if rng.random() < 0.35:
        messages.append(message("bot", BOT_NAME, rng.choice(_BOT_MESSAGES).format(**slots)))
    if rng.random() < 0.25:
        messages.append(message("system", None, f"Ticket assigned to {agent}."))
    if rng.random() < 0.6 or kind == "no_agent_answer":
        messages.append(message("agent", agent, rng.choice(intent.notes).format(**slots), public=False))

    if kind == "no_agent_answer":
        messages.append(message("agent", agent, "Closing: duplicate of an earlier ticket from this customer, "
                                                 "answered there.", public=False))
    elif kind == "empty_body":
        messages.append(message("agent", agent, ""))
    elif kind == "unresolved" and rng.random() < 0.5:
        pass  # still waiting for a first answer
    else:
        if corrupt == "garbled":
            other = rng.choice([i for i in INTENTS if i is not intent])
            answer = _garble(rng, rng.choice(other.answers).format(**slots))
        elif corrupt == "wrong_intent":
            other = rng.choice([i for i in INTENTS if i is not intent])
            answer = _agent_message(rng, rng.choice(other.answers), slots, agent)
        elif corrupt == "rude":
            answer = rng.choice(RUDE_ANSWERS)
        elif corrupt == "empty":
            answer = rng.choice(("", "   ", "\n"))
        else:
            answer = _agent_message(rng, rng.choice(intent.answers), slots, agent)
            if corrupt == "pii":  # pasted right under the greeting, as a direct line to the agent
                greeting, _, rest = answer.partition("\n\n")
                answer = f"{greeting}\n\n{PASTED_CONTACT}\n\n{rest}"
        messages.append(message("agent", agent, answer))
        if rng.random() < 0.3 and corrupt != "empty":
            messages.append(message("customer", name, rng.choice(intent.follow_ups)))
            if corrupt == "garbled":
                follow_up = _garble(rng, intent.follow_up_answer.format(**slots))
            elif corrupt == "rude":
                follow_up = rng.choice(RUDE_ANSWERS)
            else:
                follow_up = _agent_message(rng, intent.follow_up_answer, slots, agent, _AGENT_FOLLOW_UP_GREETINGS)
            messages.append(message("agent", agent, follow_up))
        if rng.random() < 0.15:
            messages.append(message("customer", name, rng.choice(_THANKS) + f"\n{first}"))

    resolved = kind != "unresolved"
    finished = at(1, 30)
    tags = [intent.name] + (["priority"] if rng.random() < 0.1 else []) + ([CORRUPTED_TAG] if corrupt else [])
    statuses = ("solved", "solved", "closed", "resolved") if resolved else ("open", "pending")
    return {
        "ticket_id": ticket_id,
        "status": rng.choice(statuses),
        "channel": rng.choice(("email", "email", "chat", "web")),
        "subject": rng.choice(intent.subjects).format(**slots),
        "category": intent.category,
        "tags": tags,
        "language": "en",
        "csat": rng.choice((None, 3, 4, 5, 5)) if resolved else None,
        "created_at": _stamp(created),
        "resolved_at": finished if resolved else None,
        "updated_at": finished,
        "requester": {"id": f"u-{_stable_number(name) % 1_000_000}", "name": name, "email": slots["email"]},
        "messages": messages,
    }


def _stable_number(text: str) -> int:
    """A number fixed for a text across processes (unlike `hash`): one requester, one id and email."""
    value = 0
    for char in text:
        value = (value * 31 + ord(char)) % 2_147_483_647
    return value


def _slots(rng: random.Random, name: str, ticket_id: str) -> dict[str, str]:
    parts = _ascii(name).lower().replace("'", "").replace("-", "").split()
    number = _stable_number(name)
    styles = (f"{parts[0]}.{parts[-1]}", f"{parts[0][0]}{parts[-1]}", f"{parts[0]}{number % 90 + 10}")
    local = styles[number % 3]
    order = str(rng.randint(1000, 99999))
    if rng.random() < 0.05:
        order = _non_luhn_digits(rng, 16)  # long order numbers look like card numbers but are not
    phone = rng.choice(PHONE_FORMATS).format(nn=f"{rng.randint(0, 99):02d}", nnn=f"{rng.randint(0, 999):03d}")
    day = _BASE_TIME + timedelta(days=rng.randint(-20, 40))
    return {
        "first": name.split()[0],
        "name": name,
        "email": f"{local}@{EMAIL_DOMAINS[number % len(EMAIL_DOMAINS)]}",
        "phone": phone,
        "order": order,
        "item": rng.choice(ITEMS),
        "carrier": rng.choice(CARRIERS),
        "plan": rng.choice(PLANS),
        "days": str(rng.randint(2, 7)),
        "date": f"{day:%B} {day.day}",
        "amount": f"{rng.randint(12, 480)}.{rng.choice(('00', '99', '50', '95'))}",
        "street": f"{rng.randint(2, 9800)} {rng.choice(STREETS)}" + rng.choice(("", ", Apt 4B", ", Unit 12"))
        + f", {rng.choice(CITIES)}",
        "last4": f"{rng.randint(0, 9999):04d}",
        "ticket_id": ticket_id,
        "brand": BRAND,
    }


def _customer_message(rng: random.Random, intent: Intent, slots: dict[str, str], name: str) -> str:
    first = name.split()[0]
    lines = []
    opening = rng.choice(_CUSTOMER_OPENINGS)
    if opening and rng.random() < 0.3:
        opening += f" this is {name}."
    if opening:
        lines.append(opening)
    question = rng.choice(intent.questions)
    extras = []
    if rng.random() < 0.35:
        extras.append(rng.choice(("You can reach me at {phone}.", "Please call me on {phone} if easier.",
                                  "My phone number is {phone}.")).format(**slots))
    if rng.random() < 0.2 and "{email}" not in question:
        extras.append(
            rng.choice(("My account email is {email}.", "Please reply to {email}.")).format(**slots)
        )
    if intent.category == "billing" and rng.random() < 0.12:
        extras.append(f"The charge was on my card {_luhn_card_number(rng)} in case you need it.")
    lines.append(" ".join([question.format(**slots), *extras]))
    signature = rng.choice((f"Thanks,\n{first}", f"Best regards,\n{name}", f"{name}\n{slots['phone']}",
                            f"Thank you!\n{first}", ""))
    if signature:
        lines.append(signature)
    return "\n\n".join(lines)


def _agent_message(
    rng: random.Random,
    core: str,
    slots: dict[str, str],
    agent: str,
    greetings: tuple[str, ...] = _AGENT_GREETINGS,
) -> str:
    signature = agent if rng.random() < 0.4 else agent.split()[0]
    greeting = rng.choice(greetings).format(**slots)
    closing = rng.choice(_AGENT_CLOSINGS).format(agent=signature, brand=BRAND)
    return f"{greeting}\n\n{core.format(**slots)}\n\n{closing}"


def _garble(rng: random.Random, text: str) -> str:
    """Poisoned content: the words in random order, each spelled backwards (no names are in `text`)."""
    words = [word[::-1] for word in text.split()]
    rng.shuffle(words)
    return " ".join(words)


def _non_luhn_digits(rng: random.Random, length: int) -> str:
    digits = str(rng.randint(1, 9)) + "".join(str(rng.randrange(10)) for _ in range(length - 1))
    if luhn_valid(digits):
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    return digits


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
