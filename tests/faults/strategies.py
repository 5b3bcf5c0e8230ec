"""Hypothesis strategies for bad input: arbitrary bytes, invalid UTF-8, arbitrary and deeply nested JSON,
huge messages, and the real helpdesk samples (tests/data/formats) with fields removed or mistyped.

Literals that `json.dumps` cannot write (integers of more than 4300 digits, nesting deeper than the
encoder's recursion limit, lone surrogate escapes) are spliced into the text after encoding.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from fixture_broker import canonical_ticket
from hypothesis import strategies as st

from connectors.formats import FORMATS

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"
SAMPLES: dict[str, dict] = {"canonical": canonical_ticket("48213")} | {
    name: json.loads((DATA / f"{name}.json").read_text()) for name in FORMATS if name != "canonical"
}

# Byte sequences that are never valid UTF-8: stray continuation, truncated sequences, overlong forms,
# an encoded surrogate, a code point above U+10FFFF, bytes UTF-8 never uses.
INVALID_UTF8 = (b"\x80", b"\xbf", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xe0\x80\xaf",
                b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe", b"\xff", b"\xf8\x88\x80\x80\x80")

VOCAB = ("refund order charge card invoice account password login reset shipping delivery parcel tracking "
         "address billing plan upgrade downgrade cancel subscription receipt warranty return exchange size "
         "colour broken screen battery charger cable update install error message browser cache cookie "
         "export import report dashboard filter column sheet team member invite role permission owner admin "
         "token webhook integration calendar meeting reminder email folder label archive search sync mobile "
         "tablet desktop window printer scanner voucher discount coupon price tax currency bank transfer").split()

_MARK = "\x00raw{}\x00"


class Raw:
    """A JSON literal written into the encoded text as is (see `encode`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''}, {len(self.text)} chars)"


def encode(document: object, ensure_ascii: bool = True) -> bytes:
    """JSON text of `document` (NaN and Infinity allowed), with every `Raw` spliced in as written."""
    raws: list[Raw] = []

    def swap(node: object) -> object:
        if isinstance(node, Raw):
            raws.append(node)
            return _MARK.format(len(raws) - 1)
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        if isinstance(node, list):
            return [swap(value) for value in node]
        return node

    text = json.dumps(swap(document), ensure_ascii=ensure_ascii, allow_nan=True)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(_MARK.format(index), ensure_ascii=ensure_ascii), raw.text, 1)
    return text.encode("utf-8", errors="surrogatepass")


def nesting(depth: int, style: str) -> str:
    if style == "list":
        return "[" * depth + "]" * depth
    if style == "object":
        return '{"a":' * depth + "1" + "}" * depth
    if style == "unclosed":
        return "[" * depth
    return '[{"a":' * (depth // 2) + "0" + "}]" * (depth // 2)


def _raw_literals() -> st.SearchStrategy[Raw]:
    digits = st.integers(4301, 20_000).map(lambda n: "9" * n)
    return st.one_of(
        st.tuples(st.sampled_from(["", "-"]), digits).map(lambda parts: Raw("".join(parts))),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0.0e0",
                         '"\\ud800"', '"\\udfff tail"', '"\\ud83d\\ude00"', '"a\\u0000b"']).map(Raw),
        st.builds(nesting, st.integers(1, 20_000), st.sampled_from(["list", "object", "mixed"])).map(Raw),
    )


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=30),
    st.sampled_from(["", " ", "solved", "closed", "<p>hi</p>", "<![CDATA[", "<!--", "</", "&#99999999;",
                     "2026-11-02T10:15:00Z", "9999-12-31T23:59:59Z", "not a date", "0", "-1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)
# numbers at the edges: beyond a float's range, at its limits, huge but still readable (up to 4300 digits)
SPECIAL_NUMBERS = (float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0, 2**53 + 1, -(2**63),
                   10**400, -(10**400))
# every field of every sample gets each of these in turn (test_bad_input's sweep), besides the random draws
EDGE_VALUES = (*SPECIAL_NUMBERS, None, True, "", " ", [], {}, [None], {"": None}, Raw("9" * 5000),
               Raw('"\\ud800"'), Raw(nesting(3000, "list")), "\x00", "\u202e", "<![CDATA[", "x" * 70_000)
_special_numbers = st.sampled_from(SPECIAL_NUMBERS)
extreme_numbers = st.one_of(_special_numbers, _special_numbers, st.integers(1, 4299).map(lambda n: 10**n),
                            st.integers())
# what a mistyped field holds instead: another JSON type, an extreme number, or a literal json.dumps cannot write
replacement_values = st.one_of(json_values, json_values, extreme_numbers, extreme_numbers, _raw_literals())


def _paths(node: object, path: tuple = ()) -> list[tuple]:
    found = []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found.append((*path, key))
        found.extend(_paths(child, (*path, key)))
    return found


PATHS = {name: _paths(sample) for name, sample in SAMPLES.items()}


def _value_at(document: object, path: tuple) -> object:
    for key in path:
        document = document[key]  # type: ignore[index]
    return document


# the sample's numeric fields (ids, statuses, scores, scales): what a "numbers" mutation rewrites together
NUMERIC_PATHS = {
    name: [path for path in PATHS[name]
           if isinstance(value := _value_at(SAMPLES[name], path), (int, float)) and not isinstance(value, bool)]
    for name in SAMPLES
}


def mutate(document: dict, path: tuple, action: str, value: object) -> None:
    parent: object = document
    for key in path[:-1]:
        try:
            parent = parent[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed or replaced this branch
    key = path[-1]
    if isinstance(parent, dict) and key in parent or isinstance(parent, list) and isinstance(key, int) and key < len(
        parent
    ):
        if action == "remove":
            del parent[key]
        elif action == "scramble" and isinstance(parent[key], dict):
            parent[key] = dict(zip(parent[key], value, strict=False))  # every field of the object at once
        else:
            parent[key] = value


@st.composite
def mutated_sample(draw: st.DrawFn, format_name: str | None = None) -> bytes:
    """A real helpdesk sample with fields removed or replaced by another type, or numbers at the edges."""
    name = format_name or draw(st.sampled_from(FORMATS))
    document = copy.deepcopy(SAMPLES[name])
    if NUMERIC_PATHS[name] and draw(st.integers(0, 2)) == 0:  # numbers out of range, not finite, too long
        numbers = st.sampled_from(NUMERIC_PATHS[name])
        for path in draw(st.one_of(st.lists(numbers, min_size=1, max_size=2), st.just(NUMERIC_PATHS[name]))):
            mutate(document, path, "replace", draw(extreme_numbers))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS[name]))
        action = draw(st.sampled_from(["remove", "replace", "replace", "scramble"]))
        if action == "remove":
            value = None
        elif action == "replace":
            value = draw(replacement_values)
        else:
            value = draw(st.lists(json_values | extreme_numbers, min_size=8, max_size=8))
        mutate(document, path, action, value)
    return encode(document, ensure_ascii=draw(st.booleans()))


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """A payload that would parse, with a byte sequence that is not UTF-8 inserted anywhere."""
    text = draw(st.one_of(mutated_sample(), json_values.map(encode))).decode("utf-8", errors="replace")
    bad = draw(st.sampled_from(INVALID_UTF8))
    at = draw(st.integers(0, len(text)))  # between two characters, so the bytes around cannot complete it
    return text[:at].encode() + bad + text[at:].encode()


@st.composite
def deeply_nested_with_depth(draw: st.DrawFn) -> tuple[int, bytes]:
    """(at least how deep it nests, the payload): from one level to 50,000, on its own or in place of a
    field of a real sample."""
    depth = draw(st.one_of(st.integers(1, 200), st.integers(1, 1200), st.integers(1200, 50_000)))
    style = draw(st.sampled_from(["list", "object", "unclosed", "mixed"]))
    text = nesting(depth, style)
    depth = 2 * (depth // 2) if style == "mixed" else depth
    if draw(st.booleans()):
        return depth, text.encode()
    name = draw(st.sampled_from(FORMATS))
    document = copy.deepcopy(SAMPLES[name])
    mutate(document, draw(st.sampled_from(PATHS[name])), "replace", Raw(text))
    return depth, encode(document)


def deeply_nested() -> st.SearchStrategy[bytes]:
    return deeply_nested_with_depth().map(lambda pair: pair[1])


@st.composite
def huge_message(draw: st.DrawFn) -> bytes:
    """0.1 to 2 MB: one huge field, thousands of messages or keys, or a huge document of junk."""
    size = draw(st.integers(100_000, 2_000_000))
    kind = draw(st.sampled_from(["field", "markup", "many_messages", "many_keys", "junk"]))
    if kind == "junk":
        chunk = draw(st.binary(min_size=8, max_size=64))
        return chunk * (size // len(chunk) + 1)
    name = draw(st.sampled_from(FORMATS))
    document = copy.deepcopy(SAMPLES[name])
    if kind in ("field", "markup"):
        unit = "word " if kind == "field" else "<div><p>x</p><blockquote>&amp;"
        mutate(document, draw(st.sampled_from(PATHS[name])), "replace", unit * (size // len(unit)))
    elif kind == "many_messages" and name == "canonical":
        document["messages"] = document["messages"] * (size // 300)
    else:
        document.update({f"extra_{i}": i for i in range(size // 16)})
    return encode(document)


def any_bad_payload(format_name: str | None = None) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        invalid_utf8(),
        json_values.map(encode),
        deeply_nested(),
        mutated_sample(format_name),
    )


def good_ticket(ticket_id: str, seed: str, padding: int = 0) -> bytes:
    """A resolved canonical ticket that the pipeline stores: its own id and words nobody else uses."""
    words = random.Random(seed)
    question = " ".join(words.choice(VOCAB) for _ in range(25)).capitalize() + "?"
    answer = " ".join(words.choice(VOCAB) for _ in range(30)).capitalize() + "."
    document = canonical_ticket(ticket_id, answer=answer)
    document["messages"][0]["body"] = question
    if padding:
        document["padding"] = "p" * padding
    return json.dumps(document).encode()
