"""The pattern detectors behind `daemon.ingest.privacy`: regular expressions and validators for the
personal data a ticket's text can carry without the ticket saying whose it is (phones of nine
countries, payment cards, street addresses and postcodes, dates of birth, identity-document numbers,
obfuscated emails), and for the identifiers that must survive (order, tracking and waybill numbers).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

import phonenumbers

# --- phones and the identifiers that look like them ----------------------------------------------
# A digit run a phone number could hide in: an optional "+" or "00", then digits with the separators
# people write ("(0)", spaces, dots, dashes, slashes); never glued to a word ("1Z999AA10123456784").
# Patterns here start with a character class, never a look-behind (which would cost a test at every
# position of every text): what may not come before a match is checked by `glued_to_word`. A single class
# first (`\d\d{2}`, not `\d{3}`) lets the regex engine skip ahead to where one occurs; where a pattern must
# open otherwise, a look-ahead of what every match starts with (`(?=[\dJZz])`) fails the other positions at
# one test each instead of trying every alternative there.
PHONE_CANDIDATE = re.compile(r"[+(\d][\d \t().\-/\u00a0]{5,}\d(?![\w@])")
NON_DIGIT = re.compile(r"\D")


def glued_to_word(text: str, start: int, also: str = "") -> bool:
    """Whether the match at `start` continues a word (or follows one of the characters in `also`)."""
    before = text[start - 1 : start]
    return bool(before) and (before.isalnum() or before == "_" or before in also)
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15
# Regions whose people write a national number without its trunk "0" ("98765 43210", "(71) 95392-1277");
# elsewhere a national number with a trunk prefix of "0" must start with it, so that bare digit runs
# ("666123456") do not pass as French or German numbers.
_TRUNK_OPTIONAL = frozenset({"IN", "BR"})
# A digit run right after one of these words is an identifier, not a phone number or a card ("order
# 4155550199", "tracking: 1Z...", "AWB 1234567890"); "number", "no." or "is" may come between.
IDENTIFIER_CONTEXT = re.compile(
    r"(?i:\b(?=[a-z])(?:order|orders|invoice|inv|ticket|case|tracking|track|trace|reference|ref|confirmation|booking|rma"
    r"|sku|item|article|art|part|model|serial|sn|s/n|lot|batch|imei|isbn|po|purchase order|receipt|transaction"
    r"|txn|shipment|consignment|parcel|package|waybill|air waybill|awb|bill of lading|ups|fedex|dhl|usps|gls|dpd"
    r"|royal mail|postnl|colissimo|chronopost|correos|seur|bartolini|brt|hermes|evri|delhivery|sedex|bestellung"
    r"|bestellnummer|auftrag|auftragsnummer|rechnung|rechnungsnummer|sendung|sendungsnummer|paket|commande"
    r"|facture|colis|suivi|pedido|factura|env[ií]o|seguimiento|ordine|fattura|spedizione|bestelling|factuur"
    r"|zending|pakket|nota fiscal|rastreamento|encomenda|account|acct|customer|member|membership|loyalty"
    r"|voucher|coupon|gift card|code|pin|otp|ean|gtin|upc|asin|id)\b"
    r"(?:[ \t]+(?:number|numbers|no\.?|nr\.?|n[º°]|num\.?|id|#|code|ref|nummer|numéro|número|numero))?"
    r"(?:[ \t]+(?:is|was|are|ist|est|es|è|is:))?[\s:#.=-]*)$"
)
IDENTIFIER_WINDOW = 48
# Identifier formats kept wherever they appear: UPS 1Z (spaced or not), Amazon-style order numbers,
# DHL waybills (JD/JJD + digits, 00340...), USPS 20-22 digits, FedEx 34 digits, dates, ISBNs.
PROTECTED = re.compile(
    r"(?=[\dJZz])(?:"  # every format starts with a digit, "J" (JD) or "z" (ZIP+4)
    r"(?<![\w-])1Z(?:[ \t]?[0-9A-Z]){16}(?![\w-])"
    r"|(?<![\w-])\d{3}-\d{7}-\d{7}(?![\w-])"
    r"|(?<!\w)J?JD(?:[ \t]?\d){16,20}(?!\w)"
    r"|(?<![\w-])(?:00340|9[1-5]\d\d|420\d{5})(?:[ \t]?\d){15,30}(?![\w-])"
    r"|(?<![\w.-])(?:\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d\d|(?:19|20)\d\d[./-]\d{1,2}[./-]\d{1,2})(?![\w.-]*\d)"
    r"|(?:(?<![\w-])(?<![\d)][ \t])|(?i:zip\+4[ \t]))\d{5}-\d{4}(?![\w-])"
    r"|(?<!\w)97[89][ -]?\d{1,5}[ -]\d{1,7}[ -]\d{1,7}[ -][\dX](?!\w))"
)
# Phone cue words: a run after one of these is a phone number even when it is not formatted as one.
PHONE_CONTEXT = re.compile(
    r"(?i:\b(?:phone|tel|telephone|mobile|cell|cellphone|call|ring|text|sms|whatsapp|fax|number|reach me|"
    r"handy|telefon|mobil|r[ée]f[ée]rence t[ée]l|t[ée]l[ée]phone|portable|t[ée]l|m[óo]vil|tel[ée]fono|"
    r"cellulare|telefoon|mobiel|celular|telefone|whats)\b)[^\n\x00]{0,24}$"
)


_NUMBER_TYPES = ("fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost", "personal_number", "voip",
                 "pager", "uan", "voicemail")


@functools.lru_cache(maxsize=512)
def _region_rules(region: str) -> tuple[re.Pattern[str], re.Pattern[str], str | None, frozenset[int]] | None:
    """From the phone library's metadata for a region: the pattern of its numbers (all types together),
    the pattern of a number of some known type (what the library calls valid), the trunk prefix and the
    possible lengths. Compiled once: the library itself validates a number in tens of microseconds."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.general_desc.national_number_pattern is None:
        return None
    general = metadata.general_desc
    typed = [desc.national_number_pattern for desc in (getattr(metadata, name) for name in _NUMBER_TYPES)
             if desc is not None and desc.national_number_pattern]
    return (re.compile(general.national_number_pattern), re.compile("|".join(f"(?:{p})" for p in typed) or "(?!)"),
            metadata.national_prefix, frozenset(general.possible_length))


def needs_trunk_zero(region: str) -> bool:
    rules = _region_rules(region)
    return rules is not None and rules[2] == "0" and region not in _TRUNK_OPTIONAL


def phone_national_number(candidate: str, regions: tuple[str, ...], lenient: bool = False,
                          digits: str | None = None) -> str | None:
    """The national number of `candidate` when it is a phone number: written with "+" or "00" (any
    country), or in the national format of one of `regions` (tried in order), and valid there (the phone
    library's check, run only on digits that fit the region's numbering plan at all). `lenient` (after a
    cue such as "call me on") takes any number of a possible length, fictional ones too.
    """
    stripped = candidate.strip(" \t().-/\u00a0")
    digits = NON_DIGIT.sub("", stripped) if digits is None else digits
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS + 2:
        return None
    if stripped.startswith(("+", "00")):
        digits = digits[2:] if stripped.startswith("00") else digits
        for length in (1, 2, 3):
            for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:length]), ()):
                national = _national_in(digits[length:], region, lenient)
                if national is not None:
                    return national
        return None
    zero = digits.startswith("0")
    for region in regions:
        if not zero and needs_trunk_zero(region):
            continue
        national = _national_in(digits, region, lenient)
        if national is not None:
            return national
    return None


def _national_in(digits: str, region: str, lenient: bool) -> str | None:
    """`digits` as a national number of `region` (its trunk prefix dropped when written), or None."""
    rules = _region_rules(region)
    if rules is None:
        return None
    general, typed, trunk, lengths = rules
    for national in ((digits[len(trunk):], digits) if trunk and digits.startswith(trunk) else (digits,)):
        if lenient and len(national) in lengths:
            return national
        if len(national) in lengths and general.fullmatch(national) is not None and typed.fullmatch(national):
            return national
    return None


@functools.lru_cache(maxsize=4096)
def region_of_phone(text: str) -> str | None:
    """The region of a number written with its country code ("+44 ..."), else None."""
    if not text.strip().startswith(("+", "00")):
        return None
    digits = NON_DIGIT.sub("", text)
    try:
        number = phonenumbers.parse("+" + (digits[2:] if text.strip().startswith("00") else digits), None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)


# --- payment cards -------------------------------------------------------------------------------
# 13-19 digits, single spaces or dashes allowed between digits, not part of a longer digit group.
CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![ -]?\d)(?![.,/-]\d)")


def card_brand_fits(digits: str) -> bool:
    """Whether the issuer prefix (IIN) and the length fit a card scheme: Visa, Mastercard, Amex, Diners,
    JCB, Discover, UnionPay, Mir, Maestro (and the local schemes inside those ranges: Elo, RuPay)."""
    n = len(digits)
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p2 in (36, 38, 39) or 300 <= p3 <= 305 or p4 == 3095:
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589 or 2200 <= p4 <= 2204 or p2 in (62, 81, 82):
        return 16 <= n <= 19
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:
        return 16 <= n <= 19
    return (p2 == 50 or 56 <= p2 <= 69) and 12 <= n <= 19


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


# --- emails written to dodge a parser ------------------------------------------------------------
_AT = r"(?:[ \t]*[\[({<][ \t]*(?i:at)[ \t]*[\])}>][ \t]*|[ \t]+(?i:at)[ \t]+|[ \t]*@[ \t]*)"
_DOT = r"(?:[ \t]*[\[({<][ \t]*(?i:dot)[ \t]*[\])}>][ \t]*|[ \t]+(?i:dot)[ \t]+|\.)"
_TLD = (r"(?i:com|org|net|edu|gov|io|co|uk|de|fr|nl|es|it|in|br|eu|info|biz|me|us|ca|au|ch|at|be|se|no|dk|pl"
        r"|pt|ie|app|dev|mail|online|shop)")
OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.+-])[\w+-]+(?:{_DOT}[\w+-]+)*{_AT}[\w-]+(?:{_DOT}[\w-]+)*{_DOT}{_TLD}(?![\w-])"
)
# The bracketed disguises of "@" and "." (may_hide_an_email tests " dot " on its own)
_DISGUISED_IN_BRACKETS = ("[at]", "(at)", "{at}", "<at>", "[ at ]", "( at )", "[dot]", "(dot)", "{dot}", "<dot>")
_DOMAIN_AFTER_AT = re.compile(rf"[\w-]+(?:\.[\w-]+)*\.{_TLD}\b")


def may_hide_an_email(lowered: str) -> bool:
    """Whether a lower-cased text has an "at" or "dot" written out, or "name at domain.tld"."""
    if "at" not in lowered and "dot" not in lowered:
        return False
    # most texts have no bracket, and skip the ten bracketed scans (about 3 µs)
    if " dot " in lowered or (("[" in lowered or "(" in lowered or "{" in lowered or "<" in lowered)
                              and any(word in lowered for word in _DISGUISED_IN_BRACKETS)):
        return True
    at = lowered.find(" at ")
    while at != -1:
        if _DOMAIN_AFTER_AT.match(lowered, at + 4) is not None:
            return True
        at = lowered.find(" at ", at + 4)
    return False
_OBFUSCATED_PARTS = re.compile(rf"{_AT}|{_DOT}")


def deobfuscate_email(text: str) -> str:
    """'jane dot doe at gmail dot com' → 'jane.doe@gmail.com' (to match the ticket's own addresses)."""
    return _OBFUSCATED_PARTS.sub(lambda m: "@" if "t" in m.group().lower() and "o" not in m.group().lower()
                                 else ".", text).casefold()


# --- dates of birth and identity documents -------------------------------------------------------
_MONTH_NAMES = (
    "septiembre|fevereiro|september|settembre|setiembre|diciembre|noviembre|septembre|febbraio|dicembre|n"
    "ovember|setembro|decembre|novembro|dezember|décembre|dezembro|february|december|februari|augustus|no"
    "vembre|februar|octobre|januari|ottobre|oktober|juillet|january|gennaio|janvier|october|fevrier|outub"
    "ro|février|octubre|febrero|janeiro|januar|luglio|aprile|giugno|maggio|agosto|august|marzo|abril|maer"
    "z|avril|april|julho|maart|junio|julio|junho|enero|march|março|janv|juli|june|févr|aout|märz|juni|mar"
    "s|july|mayo|sept|maio|août|juil|juin|mrt|avr|déc|dic|gen|giu|feb|lug|oct|nov|ene|abr|jan|jul|mag|jun"
    "|mei|dec|sep|mar|fév|apr|ott|set|may|mai|okt|aug|dez|jän|mär|ago"
)
_MONTHS = rf"(?i:{_MONTH_NAMES})\.?"
DATE = (rf"(?:\d{{1,2}}[./-]\d{{1,2}}[./-](?:\d{{4}}|\d{{2}})|\d{{4}}[./-]\d{{1,2}}[./-]\d{{1,2}}"
        rf"|\d{{1,2}}(?:st|nd|rd|th|er|º|°)?\.?[ \t]+(?:of[ \t]+|de[ \t]+)?{_MONTHS}(?:[ \t]+de)?,?[ \t]+\d{{4}}"
        rf"|{_MONTHS}[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}})")
DATE_OF_BIRTH = re.compile(
    r"(?P<label>(?i:\bd\.o\.b\.|\b(?:born(?:[ \t]+(?:on|in))?|date[ \t]+of[ \t]+birth|birth[ \t]*date|birthday"
    r"|d\.?o\.?b"
    r"|geboren(?:[ \t]+am)?|geburtsdatum|geburtstag|n[ée]e?[ \t]+le|date[ \t]+de[ \t]+naissance"
    r"|fecha[ \t]+de[ \t]+nacimiento|nacid[oa][ \t]+el|data[ \t]+di[ \t]+nascita|nat[oa][ \t]+il"
    r"|geboortedatum|geboren[ \t]+op|data[ \t]+de[ \t]+nascimento|nascid[oa][ \t]+em)\b)"
    r"(?:[ \t]+(?:is|was|ist|est|es|è|:))?[\s:,-]{0,3}(?:(?i:on|am|le|el|il|op|em)[ \t]+)?)"
    rf"(?P<date>{DATE})(?!\d)"
)
DATE_OF_BIRTH_WORDS = frozenset(
    "born birth birthday birthdate dob geboren geburtsdatum geburtstag née né naissance nacimiento nacido nacida "
    "nascita nato nata geboortedatum nascimento nascido nascida".split()
)
# After a document's name: the value (5-20 letters and digits, at least two digits, spaces or dashes
# inside), e.g. "passport number is 533380006", "Führerschein B072RRE2I55", "DNI 12345678Z".
ID_NUMBER = re.compile(
    r"(?P<label>(?i:\b(?:passport|passeport|pasaporte|passaporto|paspoort|reisepass|pass|passaporte"
    r"|driver'?s?[ \t]+licen[cs]e|driving[ \t]+licen[cs]e|licen[cs]e|f[üu]hrerschein|permis(?:[ \t]+de[ \t]+conduire)?"
    r"|carn[eé]t?[ \t]+de[ \t]+conducir|patente(?:[ \t]+di[ \t]+guida)?|rijbewijs|id[ \t]*card|identity[ \t]+card"
    r"|national[ \t]+id|personalausweis|ausweis|carte[ \t]+d'identit[ée]|carte[ \t]+nationale|cni|dni|nie|nif"
    r"|codice[ \t]+fiscale|carta[ \t]+d'identit[àa]|bsn|burgerservicenummer|aadhaa?r|pan|cpf|rg|nino"
    r"|national[ \t]+insurance|tax[ \t]+id|steuer-?id|id)\b)"
    r"(?:[ \t]+(?:card|number|numbers|no\.?|nr\.?|n[º°]\.?|num\.?|nummer|numéro|número|numero|#|id))?"
    r"(?:[ \t]+(?:is|was|ist|est|es|è|reads))?[ \t]*[:#=]?[ \t]*)"
    r"(?P<value>(?=[A-Z .-]{0,6}\d[ .-]?\d)[A-Z0-9](?:[A-Z0-9]|[ .-](?=[A-Z0-9])){4,22})(?![\w-])",
)
# The first word of every document name above: where the pattern is tried.
ID_WORDS = frozenset(
    "passport passeport pasaporte passaporto paspoort reisepass passaporte licence license driver's drivers driver "
    "driving führerschein fuhrerschein permis carnet carné carne patente rijbewijs id identity national carte "
    "codice carta personalausweis ausweis identité identite cni dni nie nif "
    "fiscale identità identita d'identità d'identita d'identité d'identite bsn burgerservicenummer aadhaar aadhar "
    "pan cpf rg nino insurance tax steuer".split()
)

# --- street addresses and postcodes (US, UK, DE, FR, NL, ES, IT) ---------------------------------
_CAP = r"[A-ZÀ-ÖØ-Þ](?:[\w'’-]|\.(?=[\w-]))*"  # a capitalised word; a full stop after it is not its own
_UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?|GIR)[ \t]?\d[ABD-HJLNP-UW-Z]{2}"
_CITY = rf"{_CAP}(?:[ \t-]+(?:{_CAP}|sur|upon|on|am|an|der|de|del|di|la|le|aan|den)){{0,3}}"
_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK"
    "|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC"
)
# What may follow a street on the same or the next line: "10115 Berlin", "1012 AB Amsterdam",
# "London SW1A 2AA", "Springfield, IL 62704", "00184 Roma (RM)".
_ADDRESS_TAIL = (
    rf"(?:,?[ \t]*\n?[ \t]*(?:(?:\d{{5}}|[1-9]\d{{3}}[ \t]?[A-Z]{{2}})[ \t]+{_CITY}(?:[ \t]+\(?[A-Z]{{2}}\)?(?!\w))?"
    rf"|{_CITY},?[ \t]+(?:(?:{_US_STATES})[ \t]+\d{{5}}(?:-\d{{4}})?|{_UK_POSTCODE})(?!\w)"
    rf"|{_UK_POSTCODE}(?!\w)))?"
)
_EN_SUFFIX_WORDS = (
    r"Street|Avenue|Road|Boulevard|Lane|Drive|Court|Way|Place|Terrace|Parkway|Circle|Highway|Square|Trail|Close"
    r"|Crescent|Gardens|Grove|Mews|Row|Rise|Walk|Hill|Park|View|Green|Parade|Esplanade|Embankment|Wharf|Yard|Quay"
    r"|Broadway|Alley|Loop|Heights|Meadows?|Vale|Gate"
)
_EN_SUFFIX_ABBREVIATIONS = r"St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Pkwy|Cir|Hwy|Sq|Trl|Cres|Gdns"  # their full stop is theirs
_EN_SUFFIX = rf"(?:{_EN_SUFFIX_WORDS})\b|(?:{_EN_SUFFIX_ABBREVIATIONS})\b\.?"
_UNIT = r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|Flat|#)\.?[ \t]*#?\w+)?"
_FR_TYPE = (r"(?i:rue|avenue|av\.|boulevard|bd|blvd|place|chemin|all[ée]e|impasse|quai|route|cours|square|passage"
            r"|rond-point|voie|sentier|cit[ée]|r[ée]sidence|lotissement|faubourg)")
_PARTICLE = (r"(?:de|du|des|de la|d'|d’|l'|l’|la|le|les|aux|à|del|della|delle|dei|degli|dello|di|da|de los|de las"
             r"|dels|van|y|e)")
_PREFIX_TYPE = (
    r"(?:Calle|C/|Avda\.?|Avenida|Av\.|Paseo|Pº|Plaza|Pza\.?|Carrer|Camino|Ronda|Traves[ií]a|Carretera|Glorieta"
    r"|Rambla|Passeig|Pla[çc]a|Via|Viale|V\.le|Piazza|P\.za|Piazzale|Corso|C\.so|Largo|Vicolo|Strada|Contrada"
    r"|Lungomare|Borgo|Salita|Laan|Rua|Travessa)"
)
_DE_NL_SUFFIX = (r"(?i:stra(?:ß|ss)e|str\.|weg|allee|platz|gasse|ufer|chaussee|steig|straat|gracht|laan|plein|kade"
                 r"|singel|dijk|dreef|steeg)")
# One pattern per way of writing a street, each run only when its words occur (`STREET_PATTERNS`).
_STREET_EN = re.compile(  # US, UK: "742 Evergreen Terrace", "350 Fifth Avenue, Suite 3300"
    rf"\d\d{{0,5}}[A-Za-z]?"
    rf"(?:[ \t]+[A-Z][\w'.-]*){{1,4}}[ \t]+(?:{_EN_SUFFIX}){_UNIT}{_ADDRESS_TAIL}"
)
_STREET_FR = re.compile(  # FR: "10 rue de Rivoli", "25, avenue des Champs-Élysées", "3 bis boulevard Haussmann"
    rf"\d\d{{0,3}}(?:[ \t]?(?:bis|ter)(?!\w))?,?[ \t]+{_FR_TYPE}[ \t]+(?:{_PARTICLE}[ \t]*)*{_CAP}"
    rf"(?:[ \t]+(?:{_PARTICLE}[ \t]+)?{_CAP}){{0,3}}{_ADDRESS_TAIL}"
)
_STREET_DE_NL = re.compile(  # DE, NL: "Hauptstraße 12", "Berliner Str. 45a", "Prinsengracht 263-267", "Am Markt 3"
    rf"(?:[A-ZÄÖÜ][\wäöüß'-]+{_DE_NL_SUFFIX}|[A-ZÄÖÜ][\wäöüß-]+[ \t]+(?:Stra(?:ß|ss)e|Str\.|Allee|Platz|Weg"
    rf"|Gasse|Ufer|Damm|Ring)|Am[ \t]+[A-ZÄÖÜ][\wäöüß-]+)[ \t]+\d{{1,4}}(?:[ \t]?[a-zA-Z](?!\w))?"
    rf"(?:[ \t]*[-/][ \t]*\d{{1,4}}[a-z]?)?{_ADDRESS_TAIL}"
)
_STREET_ES_IT = re.compile(  # ES, IT, PT, NL "Laan van": "Calle Mayor 5, 3º B", "Via Giuseppe Garibaldi, 25"
    rf"{_PREFIX_TYPE}[ \t]+(?:{_PARTICLE}[ \t]+)*{_CAP}(?:[ \t]+(?:{_PARTICLE}[ \t]+)?(?:{_CAP}|[IVX]+)){{0,4}}?"
    rf",?[ \t]+(?:n[º°o]\.?[ \t]*|n\.º[ \t]*|s/n)?\d{{1,4}}(?:[ \t]?[a-zA-Z](?!\w)|[ \t]*bis)?"
    rf"(?:,?[ \t]*\d{{1,2}}[º°ª](?:[ \t]*[A-Z](?!\w)|[ \t]*(?:izq|dcha|izda|izquierda|derecha)\.?)?)?{_ADDRESS_TAIL}"
)


# (the words that let a pattern run, the pattern); words in lower case, as written between spaces (the
# scrubber's `Seen` also takes them with a comma, a full stop or a bracket stuck to them).
STREET_PATTERNS = (
    (frozenset(f"{_EN_SUFFIX_WORDS}|{_EN_SUFFIX_ABBREVIATIONS}".replace("?", "").lower().split("|")) | {"meadow"},
     _STREET_EN),
    (frozenset("rue avenue av boulevard bd blvd place chemin allée allee impasse quai route cours square passage "
               "rond voie sentier cité cite résidence residence lotissement faubourg".split()), _STREET_FR),
    (frozenset("straße strasse str allee platz weg gasse ufer damm ring am".split()), _STREET_DE_NL),
    (frozenset("calle c/ avda avenida av paseo pº plaza pza carrer camino ronda travesía travesia carretera glorieta "
               "rambla passeig plaça placa via viale v.le piazza p.za piazzale corso c.so largo vicolo strada contrada "
               "lungomare borgo salita laan rua travessa".split()), _STREET_ES_IT),
)
# Street names written as one word with the street type at the end ("Hauptstraße", "Kalverstraat").
GLUED_STREET_SUFFIXES = ("straße", "strasse", "str.", "weg ", "allee", "platz", "gasse", "ufer", "chaussee", "steig",
                         "straat", "gracht", "laan", "plein", "kade", "singel", "dijk", "dreef", "steeg")
# A postcode standing alone: UK (its own shape, anywhere), NL "1012 AB" and five-digit codes after a
# comma, a line break or a cue word ("PLZ 80331", "Ich wohne in\n50667 Köln"), US as "City, ST 62704".
# A bare "ZIP 94107" stays (a US ZIP alone is too coarse to say who someone is).
_CODE = (r"(?P<code>\d{5}|[1-9]\d{3}[ \t]?(?!SA|SD|SS|MB|GB|KB|TB|PM|AM|AD|BC|CM|MM|KM|KG|HZ|PX|EU|US|UK)"
         r"[A-Z]{2})")
_AFTER_CODE = rf"(?=[ \t]+{_CAP}|[ \t]*(?:[,.;\n\x00]|$))"
# A UK postcode is found by its inward part ("2AA": rare in text), then its outward part before it.
UK_INWARD = re.compile(r"\d[ABD-HJLNP-UW-Z]{2}(?![\w-])")
UK_OUTWARD_BEFORE = re.compile(r"(?:[A-Z]{1,2}\d[A-Z\d]?|GIR)[ \t]?$")
POSTCODE_AFTER_BREAK = re.compile(rf"(?P<lead>[,;\n\x00][ \t]*){_CODE}{_AFTER_CODE}")  # run on "\n" + text
# "Flat 3, " before a street already replaced
UNIT_BEFORE_STREET = re.compile(r"(?:Flat|Apartment|Apt\.?|Unit|Suite)[ \t]+\w{1,5},?[ \t]+(?=<STREET_ADDRESS>)")
UNIT_WORDS = frozenset("flat apartment apt unit suite".split())
POSTCODE_AFTER_CUE = re.compile(
    r"(?P<lead>(?i:\b(?:postcode|post[ \t]+code|postal[ \t]+code|plz|postleitzahl|code[ \t]+postal|cp|cap|c\.p\."
    rf"|c[óo]digo[ \t]+postal|codice[ \t]+postale|postcode)\b)[ \t]*(?:is[ \t]+)?:?[ \t]*){_CODE}(?![\w-])"
)
POSTCODE_WORDS = frozenset("postcode post postal plz postleitzahl code cp cap c.p código codigo codice".split())
# What every cue above starts with, in lower case: the pattern is tried only there (`sub_at_words`); all of them,
# whichever word opened the gate (the gate's words are the text's words with spaces around, a cue may be glued on).
POSTCODE_CUE_TRIGGERS = ("post", "plz", "code", "cp", "cap", "c.p.", "código", "codigo", "codice")
US_ZIP_AFTER_STATE = re.compile(r"(?P<lead>,[ \t]*(?P<state>[A-Z]{2})[ \t]+)(?P<code>\d{5}(?:-\d{4})?)(?![\w-])")
US_STATES = frozenset(_US_STATES.split("|"))
CITY_BEFORE = re.compile(r"(?<![\w'.-])[A-Z][\w'.-]*$")


# --- credentials, bank accounts, SSNs, IP addresses -----------------------------------------------
# Pasted credentials: keys with a vendor prefix, JWTs and PEM private keys are replaced whole; for a
# labelled value ("password: x", "pwd=x", "Authorization: Bearer x", "api_key=x") only the value goes,
# so the answer still reads "password: <SECRET>". Only after "=" may a password be a plain word; after
# ":" or "is" it needs a digit, symbol or quotes, so "my password is expired" and "password: click" stay.
SECRET = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\x00]*?(?:-----END [A-Z ]*PRIVATE KEY-----|(?=\x00)|\Z)"
    r"|(?<![\w-])(?:(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|gh[pousr]_[0-9A-Za-z]{20,}"
    r"|github_pat_\w{20,}|glpat-[\w-]{20}|xox[abposr]-[0-9A-Za-z-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[\w-]{35}|eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"
    r"|sk-(?:proj-|ant-(?:api\d\d-)?|or-v1-|svcacct-|admin-)?[\w-]{20,})(?![\w-])"
    r"|(?P<label>(?i:\bbearer[ \t]+|\b(?:api[_ -]?key|access[_ -]?token|auth[_ -]?token|client[_ -]?secret"
    r"|secret[_ -]?key|token)[\"']?[ \t]*[:=][ \t]*[\"']?))(?P<token>[\w.~+/=-]{16,})"
    r"|(?P<pwlabel>(?i:\b(?:password|passwd|passcode|pwd|pw)\b[\"']?)[ \t]*(?:[:=]|(?i:is|was)\b)[ \t]*)"
    r"(?P<password>\"[^\"\n\x00]{1,64}\"|'[^'\n\x00]{1,64}'|[^\s\x00]+)",
)
# Every credential above starts with one of these (lower-cased), at the start of a word: the pattern is
# tried only there. They come grouped by a character that every credential they start has in it ("_" in
# "sk_live_...", ":" or "=" after "api_key"): a text without any of a group's characters skips looking for
# that group's triggers (each look is a scan of the whole text; most texts have no "_").
SECRET_TRIGGER_GROUPS = (
    ("", ("akia", "asia", "aiza", "bearer", "pass", "pwd", "pw")),
    ("_", ("sk_", "pk_", "rk_", "gh", "github_pat_")),
    ("-", ("-----begin", "glpat-", "xox", "sk-")),
    (".", ("eyj",)),
    (":=", ("api", "access", "auth", "client", "secret", "token")),
)
SECRET_TRIGGERS = tuple(trigger for _, triggers in SECRET_TRIGGER_GROUPS for trigger in triggers)


def secret_triggers(text: str) -> list[str]:
    """The `SECRET_TRIGGERS` a credential in `text` can start with, by the characters the text has."""
    return [trigger for needs, triggers in SECRET_TRIGGER_GROUPS
            if not needs or any(char in text for char in needs) for trigger in triggers]


PROSE_PASSWORD_WORDS = re.compile(r"[A-Za-z]+[.,;:!?]?")

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
IBAN_CANDIDATE = re.compile(r"[A-Z][A-Z]\d{2}(?:[ \t]?[0-9A-Za-z]){11,30}")
# AAA-GG-SSSS (dashes or spaces, the same between both groups), never area 000, 666 or 9xx, group 00
# or serial 0000; nine bare digits only right after an SSN label.
SSN = re.compile(r"\d\d{2}([- ])\d{2}\1\d{4}(?![\w-])")  # ranges checked by `_ssn_placeholder`
LABELLED_SSN = re.compile(
    r"(?P<label>(?i:\b(?:ssn\b|ss#|social[ \t]+security\b(?:[ \t]+(?:number\b|no\.|#))?))[^\w\n]{0,3}"
    r"(?:(?i:is|number)[ \t]+)?)(?P<bare>(?!000|666|9)\d{3}(?!00)\d{2}(?!0000)\d{4})(?!\d)"
)
IPV4 = re.compile(r"\d\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w-]|\.\d)")
# A dotted quad after one of these words is a version ("kernel 5.15.0.91", "upgraded to 1.2.3.4").
VERSION_CONTEXT = re.compile(
    r"(?i:\b(?:version|ver|v|firmware|build|release|kernel|driver|bios|patch|update[ds]?|upgraded?)\b)"
    r"[\s:#.]*(?:to\s+)?$"
)
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?:%\w+)?(?![\w:])"
)


def iban_valid(iban: str) -> bool:
    """The ISO 13616 check: country length, then the mod-97 remainder of the rearranged number is 1."""
    compact = "".join(iban.split()).upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def iban_end(text: str, start: int, limit: int) -> int | None:
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



# --- helpers of the scrubber -----------------------------------------------------------------------
def sub_at_words(
    pattern: re.Pattern[str], text: str, triggers: Iterable[str], repl: Callable[[re.Match[str]], str]
) -> str:
    """`pattern.sub(repl, text)` for a pattern whose every match starts with one of `triggers` (lower case)
    at the start of a word: the pattern is tried only there, not at every position of the text."""
    lowered = text.lower()
    if len(lowered) != len(text):  # lower() changed the length ("İ"): positions would not agree
        return pattern.sub(repl, text)
    starts = set()
    for trigger in triggers:
        at = lowered.find(trigger)
        while at != -1:
            if at == 0 or not lowered[at - 1].isalnum():
                starts.add(at)
            at = lowered.find(trigger, at + 1)
    pieces, end = [], 0
    for start in sorted(starts):
        match = pattern.match(text, start) if start >= end else None
        if match is not None and match.end() > start:
            pieces.append(text[end:start])
            pieces.append(repl(match))
            end = match.end()
    if not pieces:
        return text
    pieces.append(text[end:])
    return "".join(pieces)


def protected(match: re.Match[str]) -> bool:
    """Whether the match overlaps an identifier kept wherever it appears (a UPS number, a date, ...)."""
    return protected_span(match.string, match.start(), match.end())


def protected_span(text: str, start: int, end: int) -> bool:
    return any(found.start() < end and start < found.end()
               for found in PROTECTED.finditer(text, max(0, start - 24), min(len(text), end + 24)))


def after_identifier_word(text: str, start: int) -> bool:
    return IDENTIFIER_CONTEXT.search(text, max(0, start - IDENTIFIER_WINDOW), start) is not None
