"""Personal-data scrubbing for ticket texts: ticket-aware (the requester's and agents' own names,
emails and phones, taken from the ticket) plus pattern detectors (emails, payment cards, phone
numbers, street addresses). Every hit becomes a placeholder from `PLACEHOLDERS`, which the adapter
records so a serving layer can fill or strip them. Nothing here logs, and no exception carries text.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from daemon.tickets import Role, Ticket

PLACEHOLDERS: dict[str, str] = {
    "<CUSTOMER_NAME>": "the customer's full name",
    "<CUSTOMER_FIRST_NAME>": "the customer's first (given) name",
    "<CUSTOMER_LAST_NAME>": "the customer's last name, or another part of the name after the first",
    "<CUSTOMER_EMAIL>": "the customer's own email address",
    "<CUSTOMER_PHONE>": "the customer's own phone number",
    "<AGENT_NAME>": "the support agent's full name",
    "<AGENT_FIRST_NAME>": "the support agent's first (given) name",
    "<AGENT_LAST_NAME>": "the support agent's last name, or another part of the name after the first",
    "<AGENT_EMAIL>": "the support agent's email address",
    "<EMAIL>": "an email address (not the customer's or an agent's own)",
    "<PHONE>": "a phone number (not the customer's own)",
    "<CARD_NUMBER>": "a payment card number",
    "<STREET_ADDRESS>": "a street address (house number, street, unit)",
}

DEFAULT_PHONE_REGION = "US"

# Name tokens that are also ordinary English words ("Will", "May", "Bill", "Brown") match only when
# written as a name (Capitalised or UPPER), never lower-case. A sentence that starts with one ("Will
# my refund...") is still replaced: for personal data we prefer a damaged sentence to a leaked name.
# Two-letter names ("Al", "Bo") need a capital too, and one-letter initials are not matched at all.
# All other name tokens match case-insensitively. Every name matches as a whole word only, so "Ana"
# never touches "Banana"; a possessive ("Ana's", "James'") keeps its suffix after the placeholder.
COMMON_WORD_NAMES = frozenset(
    """
    will may bill mark grant chase hope faith joy june april august rose frank art pat sue don guy ray
    dawn summer sky max jack rich bob carol holly iris ivy lily daisy amber ruby pearl jade crystal penny
    sandy rusty buck bud drew gene jean dean major sterling marshall bishop judge page park parks
    brown green white black gray grey young long short king hall wood woods bell price rice cook baker banks
    bush hill hills lane street field fields ford law mason stone wells west north south east winter
    day love hunt hunter fox swift sharp little strong cross bond case chance cash gold silver glass house
    church noble moody best snow frost rain storm power powers early haven wise wolf lamb bird finch crane
    drake fisher fish miller carter cole marsh moss reed rush sage dale glen heath brook brooks forest
    """.split()
)
# Honorifics, and lower-case particles of compound surnames ("de la", "van"), are not names on their own.
_HONORIFICS = frozenset("mr mrs ms miss mx dr prof sir jr sr ii iii iv st".split())
_SURNAME_PARTICLES = frozenset(
    "de del della da das do dos van von der den la le di du bin binti al el y".split()
)
_MIN_NAME_TOKEN = 2

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
# 13-19 digits, single spaces or dashes allowed between digits, not part of a longer digit group.
_CARD = re.compile(r"(?<!\d)(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
# Cheap prefilter: a digit run a phone number could hide in. Without a leading "+", a number of the
# default region needs its national length (10 digits in the US and Canada), so dates and short order
# numbers never reach the phone library.
_PHONE_CANDIDATE = re.compile(r"\+?\(?\d[\d\t ().\-/\u00a0]{5,}\d")
_NON_DIGIT = re.compile(r"\D")
_MIN_INTERNATIONAL_DIGITS = 7
_MIN_NATIONAL_DIGITS = {"US": 10, "CA": 10}
# A plain digit run (hyphens at most) right after one of these words is an identifier, not a phone
# number ("order 4155550199"); so is a number glued to an identifier ("INV-2026-000123").
_IDENTIFIER_CONTEXT = re.compile(
    r"(?:order|invoice|ticket|case|tracking|reference|ref|confirmation|rma|sku)\s*(?:number|no\.?|id)?[\s:#.]*$",
    re.IGNORECASE,
)
_PLAIN_DIGITS = re.compile(r"[\d-]+")
_STREET_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter"
    r"|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl"
)
_STREET_ADDRESS = re.compile(
    rf"(?<![\w#])\d{{1,6}}[A-Za-z]?(?:[ \t]+[A-Z][\w'.-]*){{1,4}}[ \t]+(?:{_STREET_SUFFIX})\b\.?"
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|#)\.?[ \t]*#?\w+)?"
)
_APOSTROPHES = "'\u2019"


class Scrubber:
    """Replaces personal data in the texts of one ticket; `used_placeholders` grows as it emits them."""

    def __init__(
        self,
        names: dict[str, str],
        emails: dict[str, str],
        phones: dict[str, str],
        phone_region: str = DEFAULT_PHONE_REGION,
    ) -> None:
        """`names`, `emails`: casefolded text → placeholder; `phones`: national digits → placeholder."""
        self.used_placeholders: set[str] = set()
        self._names = names
        self._emails = emails
        self._phones = phones
        self._phone_region = phone_region
        self._min_national_digits = _MIN_NATIONAL_DIGITS.get(phone_region, _MIN_INTERNATIONAL_DIGITS)
        self._name_pattern = _compile_names(names)
        self._known_phone_pattern = _compile_known_phones(phones)

    def scrub(self, text: str) -> str:
        # Order matters: emails first (a name inside "ana.ruiz@..." must not split the address),
        # cards before phones (a card is the longer digit run), names last (around the placeholders).
        if "@" in text:
            text = _EMAIL.sub(self._email_placeholder, text)
        if _PHONE_CANDIDATE.search(text) is not None:
            text = _CARD.sub(self._card_placeholder, text)
            if self._known_phone_pattern is not None:
                text = self._known_phone_pattern.sub(self._known_phone_placeholder, text)
            text = self._scrub_phones(text)
        text = _STREET_ADDRESS.sub(self._street_placeholder, text)
        if self._name_pattern is not None:
            text = self._name_pattern.sub(self._name_placeholder, text)
        return text

    def _emit(self, placeholder: str) -> str:
        self.used_placeholders.add(placeholder)
        return placeholder

    def _email_placeholder(self, match: re.Match[str]) -> str:
        return self._emit(self._emails.get(match.group().casefold(), "<EMAIL>"))

    def _card_placeholder(self, match: re.Match[str]) -> str:
        return self._emit("<CARD_NUMBER>") if luhn_valid(_NON_DIGIT.sub("", match.group())) else match.group()

    def _known_phone_placeholder(self, match: re.Match[str]) -> str:
        digits = _NON_DIGIT.sub("", match.group())
        for national, placeholder in self._phones.items():
            if digits.endswith(national):
                return self._emit(placeholder)
        return self._emit("<PHONE>")

    def _street_placeholder(self, match: re.Match[str]) -> str:
        return self._emit("<STREET_ADDRESS>")

    def _scrub_phones(self, text: str) -> str:
        if not any(self._could_be_phone(c.group()) for c in _PHONE_CANDIDATE.finditer(text)):
            return text
        pieces = []
        end = 0
        for match in phonenumbers.PhoneNumberMatcher(text, self._phone_region):
            if self._is_identifier(text, match.start, match.raw_string):
                continue
            national = str(match.number.national_number)
            pieces.append(text[end : match.start])
            pieces.append(self._emit(self._phones.get(national, "<PHONE>")))
            end = match.end
        pieces.append(text[end:])
        return "".join(pieces)

    def _could_be_phone(self, candidate: str) -> bool:
        needed = _MIN_INTERNATIONAL_DIGITS if candidate.startswith("+") else self._min_national_digits
        return len(_NON_DIGIT.sub("", candidate)) >= needed

    @staticmethod
    def _is_identifier(text: str, start: int, raw: str) -> bool:
        if start >= 2 and text[start - 1] in "-/_#" and text[start - 2].isalnum():
            return True
        plain = _PLAIN_DIGITS.fullmatch(raw) is not None
        return plain and _IDENTIFIER_CONTEXT.search(text, max(0, start - 40), start) is not None

    def _name_placeholder(self, match: re.Match[str]) -> str:
        start, end = match.span()
        if match.string[start - 1 : start] == "<" and match.string[start - 1 : end + 1] in PLACEHOLDERS:
            return match.group()  # a name that spells a placeholder word ("Phone") inside "<PHONE>"
        # `re` folds case character by character, `casefold` by whole strings; where they disagree (rare
        # scripts) the name is still removed, under the generic placeholder.
        return self._emit(self._names.get(_name_key(match.group()), "<CUSTOMER_NAME>"))


def scrubber_for_ticket(ticket: Ticket, phone_region: str = DEFAULT_PHONE_REGION) -> Scrubber:
    """A scrubber that knows this ticket's people: the requester (and other customer authors) and agents."""
    customers: list[tuple[str | None, str | None, str | None]] = []
    agents: list[tuple[str | None, str | None, str | None]] = []
    if ticket.requester is not None:
        customers.append((ticket.requester.name, ticket.requester.email, ticket.requester.phone))
    agents.extend((agent.name, agent.email, agent.phone) for agent in ticket.agents)
    for message in ticket.messages:
        if message.author_role == Role.customer:
            customers.append((message.author_name, message.author_email, None))
        elif message.author_role == Role.agent:
            agents.append((message.author_name, message.author_email, None))
    names: dict[str, str] = {}
    emails: dict[str, str] = {}
    phones: dict[str, str] = {}
    # Customers first: when an agent shares a name with the customer, the customer's placeholder wins.
    for people, side in ((customers, "CUSTOMER"), (agents, "AGENT")):
        for name, email, phone in people:
            if email and "@" in email:
                emails.setdefault(email.strip().casefold(), f"<{side}_EMAIL>")
            if phone:
                national = _national_number(phone, phone_region)
                if national:
                    phones.setdefault(national, "<CUSTOMER_PHONE>" if side == "CUSTOMER" else "<PHONE>")
            if name:
                _add_name_parts(name, side, names)
    return Scrubber(names, emails, phones, phone_region)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _add_name_parts(name: str, side: str, names: dict[str, str]) -> None:
    """"Dr. Ana María de la Cruz" → the name as spelled ("Ana María de la Cruz"), "Ana María Cruz" and
    "Ana Cruz" (full), "Ana" (first), "María" and "Cruz" (last: every part after the first)."""
    raw = name.strip()
    if "@" in raw:
        return
    if "," in raw:  # "Ruiz, Ana"
        last, _, first = raw.partition(",")
        raw = f"{first} {last}"
    spelled, tokens = [], []
    for word in raw.split():
        token = word.strip(".,;:()[]\"")
        if token.casefold() in _HONORIFICS:
            continue
        spelled.append(word.strip(",;:()[]\""))
        if tokens and token in _SURNAME_PARTICLES:
            continue
        if len(token) >= _MIN_NAME_TOKEN and any(c.isalpha() for c in token):
            tokens.append(token)
    if not tokens:
        return
    if len(tokens) > 1:
        for full in (" ".join(spelled), " ".join(tokens), f"{tokens[0]} {tokens[-1]}"):
            _add_name(full, f"<{side}_NAME>", names)
    _add_name(tokens[0], f"<{side}_FIRST_NAME>", names)
    for token in tokens[1:]:
        _add_name(token, f"<{side}_LAST_NAME>", names)


def _add_name(name: str, placeholder: str, names: dict[str, str]) -> None:
    for variant in (name, _strip_accents(name)):
        names.setdefault(_name_key(variant), placeholder)


def _name_key(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").split()).casefold()


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _compile_names(names: dict[str, str]) -> re.Pattern[str] | None:
    if not names:
        return None
    # Compiled once per ticket, so kept small: one case-insensitive alternation, longest names first.
    alternatives = "|".join(_name_regex(key) for key in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _name_regex(key: str) -> str:
    if " " not in key and (key in COMMON_WORD_NAMES or len(key) <= _MIN_NAME_TOKEN):
        return f"(?-i:{_token_regex(key.capitalize())}|{_token_regex(key.upper())})"
    return r"\s+".join(_token_regex(t) for t in key.split(" "))


def _token_regex(token: str) -> str:
    return "".join(f"[{_APOSTROPHES}]" if c in _APOSTROPHES else re.escape(c) for c in token)


def _national_number(text: str, region: str) -> str | None:
    try:
        national = str(phonenumbers.parse(text, region).national_number)
    except phonenumbers.NumberParseException:
        return None
    return national if len(national) >= 7 else None


def _compile_known_phones(phones: dict[str, str]) -> re.Pattern[str] | None:
    """The people's own numbers in any formatting, even where the phone library would not validate them."""
    if not phones:
        return None
    numbers = "|".join(r"[\s().\-]{0,2}".join(national) for national in phones)
    prefix = r"(?:\+\s?\d{1,3}[\s.\-]{0,2}|1[\s.\-]{0,2})?\(?0?"
    return re.compile(rf"(?<![\d+])(?:{prefix})(?:{numbers})(?!\d)")
