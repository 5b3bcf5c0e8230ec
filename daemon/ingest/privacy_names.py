"""People's names in ticket texts: the ticket's own people found by their folded spelling (accents,
`ø`, `ß` and case do not matter; "José" finds "Jose" and "Weiß" finds "Weiss"), and people the ticket
does not name, found after cue phrases ("my husband Peter", "ask Dr. Patel", "on behalf of Jane Roe").
Folding keeps every character's position, so a match in the folded text is a match in the text.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Name tokens that are also ordinary words ("Will", "May", "Bill", "Brown", months) match only when
# written as a name (Capitalised or UPPER), and not where the word is plainly a word: beside a number
# ("12 April", "May 3"), after a preposition or article ("in June", "the Brown box"), or before a
# pronoun ("Will you ship?"). Two-letter names need a capital too; one-letter initials never match.
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
    january march july september october november december monday friday sunday autumn spring
    """.split()
)
_WORD_BEFORE_A_WORD = frozenset(
    "in on since until till by of from through during before after last next this every early late mid end the "
    "a an per each".split()
)
_WORD_AFTER_A_WORD = frozenset(
    "you i we it they he she the a an my your our this that there be not please is are was me us him her them".split()
)
HONORIFICS = frozenset("mr mrs ms miss mx dr prof sir jr sr ii iii iv st".split())
SURNAME_PARTICLES = frozenset("de del della da das do dos van von der den la le di du bin binti al el y".split())
MIN_NAME_TOKEN = 2


def _fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in list(range(0x41, 0x250)) + list(range(0x370, 0x530)):
        char = chr(code)
        lower = char.lower()
        if len(lower) != 1:
            lower = char
        base = "".join(c for c in unicodedata.normalize("NFKD", lower) if not unicodedata.combining(c))
        folded = base if len(base) == 1 else lower
        if folded != char:
            table[code] = folded
    table.update({ord(k): v for k, v in {"ø": "o", "Ø": "o", "đ": "d", "Đ": "d", "ł": "l", "Ł": "l", "ı": "i",
                                         "ẞ": "ß", "\u2019": "'", "\u2018": "'", "\u02bc": "'", "\n": " ",
                                         "\t": " ", "\u00a0": " ", "\r": " "}.items()})
    return table


FOLD = _fold_table()
# Pairs one spelling writes as one letter and another as two: every name key gets both spellings.
_LIGATURES = (("ß", "ss"), ("æ", "ae"), ("œ", "oe"))


def fold(text: str) -> str:
    """Lower case without accents, `ø` as `o`, `ß` kept as itself, one character for each character."""
    if text.isascii():  # most texts: str.replace is far cheaper than a translate table
        return text.lower().replace("\n", " ").replace("\t", " ").replace("\r", " ").replace("\x0b", " ") \
            .replace("\x0c", " ")
    return text.translate(FOLD)


def name_keys(name: str) -> set[str]:
    """The folded spellings a name is found by: "Weiß" → {"weiß", "weiss"}, "Strasse" → also "straße"."""
    key = " ".join(fold(name).split())
    keys = {key}
    if key.isascii() and "ss" not in key and "ae" not in key and "oe" not in key and name.isascii():
        return keys  # nothing to respell (most names)
    lowered = name.lower()
    if "ä" in lowered or "ö" in lowered or "ü" in lowered:  # "Müller" is also written "Mueller"
        keys.add(" ".join(fold(lowered.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")).split()))
    for one, two in _LIGATURES:
        if any(one in k or two in k for k in keys):
            keys |= {k.replace(one, two) for k in keys} | {k.replace(two, one) for k in keys}
    return keys


@functools.lru_cache(maxsize=8192)
def name_parts(name: str, side: str) -> tuple[tuple[str, str], ...]:
    """"Dr. Ana María de la Cruz" → (key, placeholder) for the name as spelled, "Ana María Cruz" and
    "Ana Cruz" (full), "Ana" (first), "María" and "Cruz" (last: every part after the first)."""
    raw = name.strip()
    if "@" in raw:
        return ()
    if "," in raw:  # "Ruiz, Ana"
        last, _, first = raw.partition(",")
        raw = f"{first} {last}"
    spelled, tokens = [], []
    for word in raw.split():
        token = word.strip(".,;:()[]\"")
        if fold(token) in HONORIFICS:
            continue
        spelled.append(word.strip(",;:()[]\""))
        if tokens and token in SURNAME_PARTICLES:
            continue
        if len(token) >= MIN_NAME_TOKEN and any(c.isalpha() for c in token):
            tokens.append(token)
    if not tokens:
        return ()
    parts: list[tuple[str, str]] = []
    if len(tokens) > 1:
        for full in (" ".join(spelled), " ".join(tokens), f"{tokens[0]} {tokens[-1]}"):
            parts.extend((key, f"<{side}_NAME>") for key in name_keys(full))
    parts.extend((key, f"<{side}_FIRST_NAME>") for key in name_keys(tokens[0]))
    for token in tokens[1:]:
        parts.extend((key, f"<{side}_LAST_NAME>") for key in name_keys(token))
    return tuple(parts)


NameKeys = tuple[tuple[str, str, tuple[str, ...], str], ...]


def prepare_names(names: dict[str, str]) -> NameKeys:
    """`names` (folded name → placeholder) for `find_names`: (name, first word, other words, placeholder),
    longest names first."""
    return tuple((key, *_split_name(key), names[key]) for key in sorted(names, key=len, reverse=True))


def _split_name(key: str) -> tuple[str, tuple[str, ...]]:
    first, *rest = key.split(" ")
    return first, tuple(rest)


def find_names(text: str, names: NameKeys) -> list[tuple[int, int, str]]:
    """(start, end, placeholder) of every known name in `text` (from `prepare_names`), longest names first,
    whole words only; each first word is looked for once."""
    folded = fold(text)
    first_at: dict[str, int] = {}  # where each first word first occurs (-1: nowhere), one search for each
    found: list[tuple[int, int, str]] = []
    for key, first, rest, placeholder in names:
        at = first_at.get(first)
        if at is None:
            at = first_at[first] = folded.find(first)
        while at != -1:
            end = _rest_of_name(folded, at + len(first), rest)
            if end != -1 and _whole_word(folded, at, end) and _written_as_name(text, at, end, key) \
                    and not any(at < e and s < end for s, e, _ in found):
                found.append((at, end, placeholder))
            at = folded.find(first, at + 1)
    found.sort()
    return found


def _rest_of_name(folded: str, at: int, tokens: tuple[str, ...]) -> int:
    """Where a name ends when its `tokens` follow `at`, each after a run of spaces ("Ana  Ruiz"), or -1."""
    for token in tokens:
        spaces = at
        while spaces < len(folded) and folded[spaces] == " ":
            spaces += 1
        if spaces == at or not folded.startswith(token, spaces):
            return -1
        at = spaces + len(token)
    return at


def _whole_word(folded: str, start: int, end: int) -> bool:
    before = folded[start - 1] if start else " "
    after = folded[end] if end < len(folded) else " "
    return not (before.isalnum() or before in "_<" or after.isalnum() or after in "_>")


def _written_as_name(text: str, start: int, end: int, key: str) -> bool:
    if " " in key or (key not in COMMON_WORD_NAMES and len(key) > MIN_NAME_TOKEN):
        return True
    written = text[start:end]
    if text[end : end + 2] in ("'s", "’s"):
        return written[0].isupper()  # "Brown's refund": a possessive is a name
    if not (written[0].isupper() and (written[1:].islower() or written.isupper() or len(written) == 1)):
        return False
    if key not in COMMON_WORD_NAMES:
        return True
    before = text[max(0, start - 16) : start].split()
    after = text[end : end + 16].split()
    if (before and (before[-1][-1:].isdigit() or before[-1].lower() in _WORD_BEFORE_A_WORD)) or \
            (after and (after[0][:1].isdigit() or after[0].lower().strip(",.?!") in _WORD_AFTER_A_WORD)):
        return False
    return True


# --- people the ticket does not name -------------------------------------------------------------
_NAME_TOKEN = r"[A-ZÀ-ÖØ-Þ][^\W\d_]*(?:['’-][^\W\d_]+)*"
_PARTICLES = r"(?:van|von|de|da|di|del|della|le|la|du|dos|das|ter|ten|van der|van den|de la)"
_NAME = rf"(?:{_PARTICLES}[ \t]+)?{_NAME_TOKEN}(?:[ \t]+(?:{_PARTICLES}[ \t]+)?{_NAME_TOKEN}){{0,2}}"
_RELATIONS = (
    "husband|wife|partner|spouse|son|daughter|child|kid|mother|father|mum|mom|dad|parent|brother|sister|friend"
    "|colleague|co-?worker|boss|manager|neighbou?r|grand(?:mother|father|ma|pa|son|daughter)|aunt|uncle|cousin"
    "|nephew|niece|fianc[ée]e?|girlfriend|boyfriend|assistant|landlord|landlady|tenant|room-?mate|flatmate"
    "|step(?:son|daughter|mother|father)|(?:mother|father|brother|sister|son|daughter)-in-law|carer|caregiver"
    "|lawyer|solicitor|attorney|accountant|doctor|dentist|secretary|employee|team-?mate|supervisor"
    "|Mann|Frau|Ehemann|Ehefrau|Sohn|Tochter|Mutter|Vater|Bruder|Schwester|Freundin|Freund|Kollegin|Kollege"
    "|Partnerin|Nachbarin|Nachbar|mari|femme|fils|fille|m[èe]re|p[èe]re|fr[èe]re|s(?:œ|oe)ur|amie?|coll[èe]gue"
    "|conjointe?|voisine?|marido|esposa|esposo|mujer|hija|hijo|madre|padre|hermana|hermano|amiga|amigo"
    "|compañer[oa]|vecin[oa]|jef[ea]|novi[oa]|marito|moglie|figli[oa]|fratello|sorella|amic[oa]|collega"
    "|man|vrouw|zoon|dochter|moeder|vader|broer|zus|vriendin|vriend|buurman|buurvrouw"
    "|filh[oa]|m[ãa]e|pai|irm[ãa]o?|namorad[oa]|vizinh[oa]|chefe|colega"
)
_POSSESSIVES = ("my|our|his|her|their|mein|meine|meinem|meiner|meinen|unser|unsere|ma|mon|mes|notre|mi|mis|nuestr[oa]"
                "|il mio|la mia|mio|mia|mijn|onze|minha|meu")
_HONORIFIC = (r"(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof|Herrn|Herr|Frau|Hrn|Hr|Fr|Mme|Mlle|Sr|Sra|Srta|Sig|Sig\.ra|Dott|Dott\.ssa"
              r"|Dhr|Mevr|Mw|Dña|Don|Doña)\.?")
_CUES = (r"(?i:ask|tell|speak(?:ing)?[ \t]+(?:to|with)|talk(?:ed)?[ \t]+to|spoke[ \t]+(?:to|with)"
         r"|on[ \t]+behalf[ \t]+of"
         r"|addressed[ \t]+to|signed[ \t]+by|named|name[ \t]+is|name's|account[ \t]+holder(?:[ \t]+is)?"
         r"|card[ \t]?holder(?:[ \t]+is)?|attn:?|attention:?|c/o|care[ \t]+of|cc:?|recipient(?:[ \t]+is)?"
         r"|deliver(?:ed)?[ \t]+to|addressed[ \t]+to|for[ \t]+the[ \t]+attention[ \t]+of|heißt|s'appelle"
         r"|se[ \t]+llama|si[ \t]+chiama|heet|chama-se)")
OTHER_PERSON = re.compile(
    rf"(?P<lead>(?<![\w.])(?:(?i:{_POSSESSIVES})[ \t]+(?i:{_RELATIONS})(?:,|[ \t]+(?i:is|was|named|called))?"
    rf"|(?<!\w){_HONORIFIC}|(?<![\w-]){_CUES}(?:[ \t]+{_HONORIFIC})?)[ \t]+)(?P<name>{_NAME})"
)
# Words in lower case, as the scrubber's `Seen` takes them. The pattern is tried at honorifics and the first words
# of cue phrases, and at possessives when a relation occurs ("my husband Peter").
RELATION_WORDS = frozenset(
    "husband wife partner spouse son daughter child kid mother father mum mom dad parent brother sister friend "
    "brother-in-law sister-in-law mother-in-law father-in-law son-in-law daughter-in-law co-worker room-mate "
    "team-mate colleague coworker boss manager neighbour neighbor grandmother grandfather grandma grandpa grandson "
    "granddaughter aunt uncle cousin nephew niece fiancé fiancée fiance fiancee girlfriend boyfriend assistant "
    "landlord landlady tenant roommate flatmate stepson stepdaughter stepmother stepfather carer caregiver "
    "lawyer solicitor attorney accountant doctor dentist secretary employee teammate supervisor mann frau ehemann "
    "ehefrau sohn tochter mutter vater bruder schwester freundin freund kollegin kollege partnerin nachbarin nachbar "
    "mari femme fils fille mère mere père pere frère frere sœur soeur ami amie collègue collegue conjoint conjointe "
    "voisin voisine marido esposa esposo mujer hija hijo madre padre hermana hermano amiga amigo compañero "
    "compañera vecino vecina jefe jefa novio novia marito moglie figlio figlia fratello sorella amico amica collega "
    "man vrouw zoon dochter moeder vader broer zus vriendin vriend buurman buurvrouw filho filha mãe mae pai irmão "
    "irmao irmã irma namorado namorada vizinho vizinha chefe".split()
)
POSSESSIVE_WORDS = frozenset(
    "my our his her their mein meine meinem meiner meinen unser unsere ma mon mes notre mi mis nuestra nuestro il "
    "la mio mia mijn onze minha meu".split()
)
OTHER_PERSON_TRIGGERS = frozenset(
    "dr mr mrs ms mx miss prof herrn herr hrn hr fr mme mlle sr sra srta sig dott dhr mevr mw dña don doña "
    "ask tell speak speaking talk talked spoke on addressed signed named name name's account card cardholder attn "
    "attention c/o care cc recipient deliver delivered for heißt s'appelle se si heet chama".split()
)
OTHER_PERSON_WORDS = RELATION_WORDS | OTHER_PERSON_TRIGGERS
# Common words that open a cue only with a second word after them ("on behalf of", "for the attention of",
# "account holder", "card holder", "se llama"): tried only when that word is among the text's words too.
CUE_SECOND_WORDS = {"on": "behalf", "for": "attention", "account": "holder", "card": "holder", "se": "llama"}
# Capitalised words a cue is often followed by that are no one's name.
NOT_NAMES = frozenset(
    """
    i i'm i've i'll i'd we you he she they it the a an my our your his her their this that these those there here
    please thanks thank hi hello dear regards best cheers ok okay yes no not also and or but so if when then now
    today tomorrow yesterday monday tuesday wednesday thursday friday saturday sunday support customer customers
    service services sales billing team help helpdesk desk admin account accounts manager management it hr
    legal finance shipping returns order orders store shop company us me him them who what which where why how
    everyone someone anyone nobody all both each amazon google apple paypal visa mastercard ups dhl fedex usps
    """.split()
)
