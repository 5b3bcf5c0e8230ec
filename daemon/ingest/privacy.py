"""Personal-data scrubbing for ticket texts: ticket-aware (the requester's and agents' own names,
emails and phones, taken from the ticket) plus pattern detectors (pasted secrets, IBANs, US SSNs, IP
addresses, emails, payment cards, phone numbers, street addresses). Every hit becomes a placeholder
from `PLACEHOLDERS`, which the adapter records so a serving layer can fill or strip them. Nothing
here logs, and no exception carries text.
"""

from __future__ import annotations

import functools
import ipaddress
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
    "<IBAN>": "an international bank account number (ISO 13616, checksum-valid)",
    "<SSN>": "a US social security number",
    "<IP_ADDRESS>": "an IPv4 or IPv6 address",
    "<SECRET>": "a credential: API key, token, private key or password value (any label before it is kept)",
}

# What a serving layer can fill from the conversation it serves (a support UI knows the customer and
# the agent by name); an answer carrying any other placeholder would reach the customer unfilled.
FILLABLE_PLACEHOLDERS = frozenset({
    "<CUSTOMER_NAME>", "<CUSTOMER_FIRST_NAME>", "<CUSTOMER_LAST_NAME>",
    "<AGENT_NAME>", "<AGENT_FIRST_NAME>", "<AGENT_LAST_NAME>",
    "<CUSTOMER_EMAIL>", "<CUSTOMER_PHONE>", "<AGENT_EMAIL>",  # the ticket's own people: a support UI knows them
})

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
_ACCOUNT_PREFIX = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[0-9A-Z]{4})*[ ]?$")
_STREET_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter"
    r"|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl"
)
_STREET_ADDRESS = re.compile(
    rf"(?<![\w#])\d{{1,6}}[A-Za-z]?(?:[ \t]+[A-Z][\w'.-]*){{1,4}}[ \t]+(?:{_STREET_SUFFIX})\b\.?"
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|#)\.?[ \t]*#?\w+)?"
)
_APOSTROPHES = "'\u2019"

# Pasted credentials: keys with a vendor prefix, JWTs and PEM private keys are replaced whole; for a
# labelled value ("password: x", "pwd=x", "Authorization: Bearer x", "api_key=x") only the value goes,
# so the answer still reads "password: <SECRET>". Only after "=" may a password be a plain word; after
# ":" or "is" it needs a digit, symbol or quotes, so "my password is expired" and "password: click" stay.
_SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"
    r"|(?<![\w-])(?:(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|gh[pousr]_[0-9A-Za-z]{20,}"
    r"|github_pat_\w{20,}|glpat-[\w-]{20}|xox[abposr]-[0-9A-Za-z-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[\w-]{35}|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*)(?![\w-])"
    r"|(?P<label>(?i:\bbearer[ \t]+|\b(?:api[_ -]?key|access[_ -]?token|auth[_ -]?token|client[_ -]?secret"
    r"|secret[_ -]?key|token)[\"']?[ \t]*[:=][ \t]*[\"']?))(?P<token>[\w.~+/=-]{16,})"
    r"|(?P<pwlabel>(?i:\b(?:password|passwd|passcode|pwd|pw)\b[\"']?)[ \t]*(?:[:=]|(?i:is|was)\b)[ \t]*)"
    r"(?P<password>\"[^\"\n]{1,64}\"|'[^'\n]{1,64}'|\S+)",
)
# Every credential above contains one of these (lower-cased): texts without any skip the secret pass.
_SECRET_HINTS = (
    "pass", "pwd", "pw", "bearer", "token", "secret", "api", "begin", "k_live_", "k_test_", "ghp_", "gho_", "ghu_",
    "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "akia", "asia", "aiza", "eyj",
)
_PROSE_PASSWORD_WORDS = re.compile(r"[A-Za-z]+[.,;:!?]?")

# IBAN lengths by country, from the ISO 13616 registry; the country fixes where an IBAN written in
# groups ends, and the mod-97 check decides whether it is one.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_CANDIDATE = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?:[ \t]?[0-9A-Za-z]){11,30}")
# AAA-GG-SSSS (dashes or spaces, the same between both groups), never area 000, 666 or 9xx, group 00
# or serial 0000; nine bare digits only right after an SSN label.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
_LABELLED_SSN = re.compile(
    r"(?P<label>(?i:\b(?:ssn\b|ss#|social[ \t]+security\b(?:[ \t]+(?:number\b|no\.|#))?))[^\w\n]{0,3}"
    r"(?:(?i:is|number)[ \t]+)?)(?P<bare>(?!000|666|9)\d{3}(?!00)\d{2}(?!0000)\d{4})(?!\d)"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
# A dotted quad after one of these words is a version ("kernel 5.15.0.91", "upgraded to 1.2.3.4").
_VERSION_CONTEXT = re.compile(
    r"(?i:\b(?:version|ver|v|firmware|build|release|kernel|driver|bios|patch|update[ds]?|upgraded?)\b)"
    r"[\s:#.]*(?:to\s+)?$"
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?:%\w+)?(?![\w:])"
)


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
        # Secrets go first (keys hold digit runs and "@"), then IBANs, SSNs and IP addresses, whose
        # digit groups a card or phone pass would otherwise take.
        lowered = text.lower()
        if any(hint in lowered for hint in _SECRET_HINTS):
            text = _SECRET.sub(self._secret_placeholder, text)
        if "::" in text or text.count(":") >= 7:
            text = _IPV6.sub(self._ipv6_placeholder, text)
        if "@" in text:
            text = _EMAIL.sub(self._email_placeholder, text)
        if _PHONE_CANDIDATE.search(text) is not None:
            text = self._scrub_ibans(text)
            text = _SSN.sub(self._ssn_placeholder, text)
            if "ss" in lowered or "social" in lowered:
                text = _LABELLED_SSN.sub(self._labelled_ssn_placeholder, text)
            text = _IPV4.sub(self._ipv4_placeholder, text)
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

    def _secret_placeholder(self, match: re.Match[str]) -> str:
        if match.group("token") is not None:
            return match.group("label") + self._emit("<SECRET>")
        password = match.group("password")
        if password is None:
            return self._emit("<SECRET>")
        label = match.group("pwlabel")
        if password[0] not in "\"'" and _PROSE_PASSWORD_WORDS.fullmatch(password) and not label.rstrip().endswith("="):
            return match.group()  # "my password is expired", "password: click the link": prose, not a value
        if len(password) > 1 and password[-1] in ".,;:)":  # "my password is Hunter2." keeps the full stop
            return label + self._emit("<SECRET>") + password[-1]
        return label + self._emit("<SECRET>")

    def _scrub_ibans(self, text: str) -> str:
        pieces = []
        end = 0
        for match in _IBAN_CANDIDATE.finditer(text):
            if match.start() < end:
                continue
            iban_end = _iban_end(text, match.start(), match.end())
            if iban_end is None:
                continue
            pieces.append(text[end : match.start()])
            pieces.append(self._emit("<IBAN>"))
            end = iban_end
        if not pieces:
            return text
        pieces.append(text[end:])
        return "".join(pieces)

    def _ssn_placeholder(self, match: re.Match[str]) -> str:
        return self._emit("<SSN>")

    def _labelled_ssn_placeholder(self, match: re.Match[str]) -> str:
        return match.group("label") + self._emit("<SSN>")

    def _ipv4_placeholder(self, match: re.Match[str]) -> str:
        if _VERSION_CONTEXT.search(match.string, max(0, match.start() - 24), match.start()) is not None:
            return match.group()
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            return match.group()
        return self._emit("<IP_ADDRESS>")

    def _ipv6_placeholder(self, match: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(match.group())
        except ValueError:
            return match.group()
        return self._emit("<IP_ADDRESS>")

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
        if start >= 1 and text[start - 1].isalnum():  # "ZIP+4 94107-1234"
            return True
        if start >= 2 and text[start - 1] in "-/_#" and text[start - 2].isalnum():
            return True
        if _ACCOUNT_PREFIX.search(text, max(0, start - 40), start) is not None:
            return True  # the digit groups of an account number (an IBAN that failed its checksum)
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


def scrub_patterns(text: str, phone_region: str = DEFAULT_PHONE_REGION) -> tuple[str, set[str]]:
    """`text` through the pattern detectors alone (no ticket, so no names): the scrubbed text and the
    placeholders it used; for texts no ticket vouches for, such as a model's answer."""
    scrubber = Scrubber({}, {}, {}, phone_region)
    return scrubber.scrub(text), scrubber.used_placeholders


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


def iban_valid(iban: str) -> bool:
    """The ISO 13616 check: country length, then the mod-97 remainder of the rearranged number is 1."""
    compact = "".join(iban.split()).upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _iban_end(text: str, start: int, limit: int) -> int | None:
    """Where the IBAN starting at `start` ends (its country's length of characters, spaces skipped), or
    None when no checksum-valid IBAN of that length starts there or it runs on into more characters."""
    length = IBAN_LENGTHS.get(text[start : start + 2])
    if length is None:
        return None
    chars = []
    position = start
    while position < limit and len(chars) < length:
        if not text[position].isspace():
            chars.append(text[position])
        position += 1
    if len(chars) < length or text[position : position + 1].isalnum() or not iban_valid("".join(chars)):
        return None
    return position


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
    # One case-insensitive alternation, longest names first; the same people recur across tickets
    # (agents above all), so compiled patterns are cached beyond re's own 512 entries.
    return _compile_alternation("|".join(_name_regex(key) for key in sorted(names, key=len, reverse=True)))


@functools.lru_cache(maxsize=8192)
def _compile_alternation(alternatives: str) -> re.Pattern[str]:
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
