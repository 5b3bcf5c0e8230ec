"""Quality filters between a ticket and the store: each drop has one reason code (a bounded metric label).

Ticket checks (CSAT, language) run before pairs.py; example checks (token length, auto-reply answers,
exact and near duplicates of another ticket's example) run on the scrubbed example.

The dedupe index: with a store (the service and `ticketune ingest`), the stored examples' signatures
and LSH band buckets live in the store's SQLite tables and only the batch being ingested is held in
memory, so the process's memory stays flat however many tickets it has taken in (a soak of 200,000
tickets grew an all-in-memory index by about 3 KB per example). Without a store (tests, one-off
checks) everything is held in memory.

This module owns the signatures (MinHash, the exact hash, the LSH band keys and their layout); the
store only keeps and looks up what it is given (daemon/store/dedupe.py). Judging changes nothing: the
ingest loop records what it keeps (`QualityFilter.record`), and the store writes each example's
signature and band keys with the example, in the batch's one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from daemon.config import QualityConfig
from daemon.ingest.pairs import Example
from daemon.tickets import Ticket

log = logging.getLogger(__name__)

REASON_LOW_CSAT = "low_csat"
REASON_LANGUAGE = "language_not_allowed"
REASON_TOO_SHORT = "too_short"
REASON_TOO_LONG = "too_long"
REASON_AUTOMATED = "automated_answer"
REASON_EXACT_DUPLICATE = "exact_duplicate"
REASON_NEAR_DUPLICATE = "near_duplicate"
REASONS = (
    REASON_LOW_CSAT,
    REASON_LANGUAGE,
    REASON_TOO_SHORT,
    REASON_TOO_LONG,
    REASON_AUTOMATED,
    REASON_EXACT_DUPLICATE,
    REASON_NEAR_DUPLICATE,
)

NUM_PERM = 128
SHINGLE_WORDS = 5
CHARS_PER_TOKEN = 4  # the fallback estimate when the base model's tokenizer.json is not on disk
TOKENS_PER_MESSAGE = 4  # what a chat template adds around each turn (role marker, newline, end-of-turn)
SIGNATURE_VERSION = 3  # 3: shingles hashed from word hashes (2: from their text)
_EXACT_BYTES = 16
KEYS_MEMO_SIZE = 4096  # examples whose band keys a filter remembers between committed() calls
WORD_HASHES_SIZE = 50_000  # words whose CRC-32 the MinHash remembers (about 6 MB when full)
_SIGNATURE_BYTES = 1 + _EXACT_BYTES + 4 * NUM_PERM

# An assistant turn is an auto-reply when, without its sentences that carry one of these markers, hardly
# anything is left: a real answer that merely ends with a "do not reply" footer is kept.
AUTOREPLY_MAX_OTHER_WORDS = 25
AUTOREPLY_MARKERS = re.compile(
    r"this is an automated|automatic(?:ally generated)? (?:reply|response|message)|auto-?reply"
    r"|out of (?:the )?office|do not (?:reply|respond) to this"
    r"|we(?: have|'ve)? received your (?:request|message|email|ticket|enquiry|inquiry)"
    r"|your (?:request|ticket|message)(?: #?\S+)? has been received"
    r"|(?:an agent|a member of our team|one of our agents) will (?:get back to you|reply|respond|be in touch)",
    re.IGNORECASE,
)
# Every marker above contains one of these (lower-cased): an answer without any is not an auto-reply.
_AUTOREPLY_HINTS = ("auto", "out of", "do not re", "received", "will get back", "will reply", "will respond",
                    "be in touch")
# The same, narrower, for an ASCII answer: "auto" is there only as "an automated", "automatic ", "automatically
# generated", "autoreply" or "auto-reply", so an answer saying a refund goes out "automatically" (about one in six
# of the sample answers) skips the sentence split and the marker search (about 25 µs each). Only for ASCII: with
# IGNORECASE the markers' "i" and "s" also match "ı", "İ" and "ſ", which `lower()` keeps apart.
_AUTOREPLY_ASCII_HINTS = ("an automated", "automatic ", "automatically generated", "autoreply", "auto-reply",
                          *(hint for hint in _AUTOREPLY_HINTS if hint != "auto"))
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_WORDS = re.compile(r"<[A-Z][A-Z0-9_]*>|\w+")
# ASCII bytes that are not word characters (\w) become spaces: an ASCII text's words are then `bytes.split()`
_ASCII_NON_WORD = bytes(byte if chr(byte).isalnum() or byte == ord("_") else ord(" ") for byte in range(128)) \
    + b" " * 128


def tokenizer_json_for(model_base: str) -> Path | None:
    """`<model.base>/tokenizer.json` when the base is a local directory that has one, else None."""
    path = Path(model_base).expanduser() / "tokenizer.json"
    return path if path.is_file() else None


def _conversation_text(example: Example) -> str:
    """The user and assistant turns, lowercased with whitespace collapsed (the system prompt is not content)."""
    return "\n".join(
        f"{m['role']}: {' '.join(m['content'].lower().split())}" for m in example.messages if m["role"] != "system"
    )


class _WordHashes(dict):
    """CRC-32 of each word's UTF-8, remembered: support conversations reuse a small vocabulary, so most words
    of a ticket were hashed before (a lookup costs half of hashing); cleared when it is full."""

    def __missing__(self, word: bytes) -> int:
        if len(self) >= WORD_HASHES_SIZE:
            self.clear()
        value = self[word] = zlib.crc32(word)
        return value


_word_hashes = _WordHashes()
_rng = np.random.default_rng(20261128)  # fixed: stored signatures must stay comparable across restarts
_PERM_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)  # odd multipliers
_MIX = np.uint64(0x9E3779B97F4A7C15)  # the shingle polynomial's multiplier (odd: 2**64 / golden ratio)


def _words(text: str, encoded: bytes) -> list[bytes]:
    """The UTF-8 of each word `_WORDS` finds in a lower-cased text, `encoded` being the text's UTF-8. An ASCII
    text (most are) is split with bytes operations, a fifth of the pattern's cost: in lower case only the
    pattern's runs of letters, digits and "_" can match, and those are what is left between the spaces."""
    if len(encoded) == len(text):
        return encoded.translate(_ASCII_NON_WORD).split()
    return [word.encode() for word in _WORDS.findall(text)]


def _minhash(words: list[bytes]) -> np.ndarray:
    """128 MinHash values (uint32) of the word 5-gram shingles of a text's words (`_words`).

    Each word is hashed with CRC-32 (C speed, stable across processes); a shingle's hash is a polynomial of
    its five words' (mod 2**64, vectorised over the text); it is permuted 128 ways by multiply-shift
    hashing, (a*x mod 2**64) >> 32 with odd a, and since the shift keeps order the minimum is taken before
    it. A repeated shingle counts once, as in a set. Fewer than five words make one shingle of them all.
    """
    hashes = np.fromiter(map(_word_hashes.__getitem__, words), dtype=np.uint64, count=len(words))
    width = min(SHINGLE_WORDS, len(words))
    count = len(words) - width + 1
    shingles = hashes[:count] * _MIX if width else np.zeros(1, dtype=np.uint64)
    for k in range(1, width):
        shingles = (shingles + hashes[k : k + count]) * _MIX
    return ((shingles[:, None] * _PERM_A).min(axis=0) >> np.uint64(32)).astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) whose S-curve 1 - (1 - j**rows)**bands best separates pairs around the threshold.

    Missed pairs (above it) weigh 4x false candidates (below it): candidates are verified anyway.
    """
    j = np.linspace(0.0, 1.0, 1001)
    best = None
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1 - (1 - j**rows) ** bands
        cost = float(np.sum(np.where(j < threshold, p, 4 * (1 - p))))
        if best is None or cost < best[0]:
            best = (cost, bands, rows)
    return best[1], best[2]


def example_signature(example: Example) -> bytes:
    """What the store keeps per example so the dedupe index survives restarts (529 bytes).

    Version byte, 16 bytes of the normalised conversation's SHA-256, 128 MinHash values as uint32.
    Independent of the configuration, so a stored one stays valid whatever the threshold.
    """
    text = _conversation_text(example)
    encoded = text.encode()
    exact = hashlib.sha256(encoded).digest()[:_EXACT_BYTES]
    return bytes([SIGNATURE_VERSION]) + exact + _minhash(_words(text, encoded)).astype("<u4").tobytes()


def band_key(band: int, values: np.ndarray, rows: int) -> int:
    """The bucket of one LSH band: a hash that is the same in every process (it is stored)."""
    return band_keys_of(values, band + 1, rows)[band]


def band_keys_of(values: np.ndarray, bands: int, rows: int) -> list[int]:
    """`band_key` of every band, from one copy of the values' bytes."""
    raw = np.ascontiguousarray(values, dtype="<u4").tobytes()
    width = 4 * rows
    return [int.from_bytes(hashlib.blake2b(raw[band * width : (band + 1) * width], digest_size=8).digest(),
                           "little", signed=True) for band in range(bands)]


def band_keys(signature: bytes, bands: int, rows: int) -> list[int] | None:
    """The LSH buckets of a stored signature, one per band; None for an outdated signature."""
    split = _split_signature(signature)
    if split is None:
        return None
    return band_keys_of(split[1], bands, rows)


class DedupeStore(Protocol):
    """What the dedupe index needs from `daemon.store.ExampleStore`: its band table and signature lookups
    (daemon/store/dedupe.py), which take and give keys and signatures that this module computes."""

    def band_layout(self) -> str | None: ...

    def clear_bands(self) -> None: ...

    def set_band_layout(self, layout: str) -> None: ...

    def indexed_count(self) -> int: ...

    def signature_pages(self) -> Iterator[list[tuple[str, bytes | None, bool]]]: ...

    def set_signatures(self, entries: Iterable[tuple[str, bytes, Sequence[int] | None]]) -> None: ...

    def set_band_keys(self, entries: Iterable[tuple[str, Sequence[int] | None]]) -> None: ...

    def get_example(self, ticket_id: str) -> dict | None: ...

    def exact_owners(self, exact: bytes) -> set[str]: ...

    def band_candidates(self, keys: Sequence[int]) -> set[str]: ...

    def signatures_of(self, ticket_ids: Iterable[str]) -> dict[str, bytes]: ...

    def would_discard(self, example: Example) -> bool: ...

    def exact_owners_of(self, exacts: Iterable[bytes]) -> dict[bytes, set[str]]: ...

    def bucket_members(self, buckets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], set[str]]: ...

    def discards(self, examples: Sequence[Example]) -> list[bool]: ...


def signature_is_current(signature: bytes | None) -> bool:
    return signature is not None and len(signature) == _SIGNATURE_BYTES and signature[0] == SIGNATURE_VERSION


def _split_signature(signature: bytes) -> tuple[bytes, np.ndarray] | None:
    if len(signature) != _SIGNATURE_BYTES or signature[0] != SIGNATURE_VERSION:
        return None
    exact = signature[1 : 1 + _EXACT_BYTES]
    return exact, np.frombuffer(signature, dtype="<u4", offset=1 + _EXACT_BYTES).astype(np.uint32)


def is_autoreply(text: str) -> bool:
    lowered = text.lower()
    if not any(hint in lowered for hint in (_AUTOREPLY_ASCII_HINTS if text.isascii() else _AUTOREPLY_HINTS)):
        return False
    sentences = [sentence for sentence in _SENTENCES.split(text) if sentence.strip()]
    other = [sentence for sentence in sentences if not AUTOREPLY_MARKERS.search(sentence)]
    return len(other) < len(sentences) and len(" ".join(other).split()) <= AUTOREPLY_MAX_OTHER_WORDS


class TokenCounter:
    """Counts an example's tokens with the base model's tokenizer.json, or estimates chars/4 without one."""

    def __init__(self, tokenizer_path: Path | None) -> None:
        self._tokenizer = None
        if tokenizer_path is not None and tokenizer_path.is_file():
            try:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
            except Exception as exc:  # not installed, or not a tokenizer file: estimate rather than stop ingest
                log.warning(
                    "cannot load %s (%s); estimating example length as characters/%d",
                    tokenizer_path,
                    type(exc).__name__,
                    CHARS_PER_TOKEN,
                )
        else:
            log.info(
                "no tokenizer.json for the base model; estimating example length as characters/%d", CHARS_PER_TOKEN
            )

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, messages: list[dict[str, str]]) -> int:
        overhead = 1 + TOKENS_PER_MESSAGE * len(messages)  # bos, then each turn's template markers
        if self._tokenizer is None:
            return overhead + sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        # one encode call per message: encode_batch's thread pool costs more than it saves on a few texts
        encode = self._tokenizer.encode
        return overhead + sum(len(encode(m["content"], add_special_tokens=False).ids) for m in messages)


@dataclass(frozen=True)
class _Prefetched:
    """The store's answers for one batch (`QualityFilter.prefetch`): which exact hashes and buckets were asked
    about, their owners and members, those members' signatures, and whether the store would discard each
    (ticket id, revision)."""

    exacts: set[bytes]
    exact_owners: dict[bytes, set[str]]
    buckets: set[tuple[int, int]]
    members: dict[tuple[int, int], set[str]]
    signatures: dict[str, bytes]
    discards: dict[tuple[str, str], bool]


class QualityFilter:
    """Applies the `quality:` settings. `check_ticket` and `judge` (`check_example`) only judge; the ingest
    loop changes the dedupe index itself: `record` for each example it keeps (right away, so a second copy
    in the same batch is caught), `forget` for each deletion, `committed` once the batch is stored, and
    `load` once at start."""

    def __init__(self, cfg: QualityConfig, tokenizer_path: Path | None, store: DedupeStore | None = None) -> None:
        self.cfg = cfg
        # with a store, the in-memory index below holds only what was recorded since `committed()`
        self._store = store
        self._store_synced = False  # whether `load` made the store's band table this filter's layout
        self._forgotten: set[str] = set()  # deleted in the batch being ingested, still in the store
        self.tokens = TokenCounter(tokenizer_path)
        self._languages = {code.lower() for code in cfg.languages} if cfg.languages is not None else None
        self._bands, self._rows = lsh_bands(cfg.near_duplicate_threshold)
        self.layout = f"{self._bands}x{self._rows}"  # what the store's band table is kept for
        self._buckets: list[dict[int, set[str]]] = [{} for _ in range(self._bands)]
        self._by_ticket: dict[str, tuple[bytes, np.ndarray]] = {}
        self._by_exact: dict[bytes, set[str]] = {}
        self._keys_memo: dict[bytes, list[int]] = {}  # band keys by MinHash values, for the batch under way
        self._splits: dict[bytes, tuple[bytes, np.ndarray]] = {}  # signatures split, for the batch under way
        self._prefetched: _Prefetched | None = None  # the store's answers for the batch under way

    def __len__(self) -> int:
        return len(self._by_ticket)

    def check_ticket(self, ticket: Ticket, *, csat: bool = True) -> str | None:
        """The first ticket check it fails; `csat=False` leaves out `min_csat` (a low-CSAT ticket that a
        preference objective keeps as an undesirable example)."""
        cfg = self.cfg
        if csat and cfg.min_csat is not None:
            if ticket.csat is None:
                if cfg.require_csat:
                    return REASON_LOW_CSAT
            elif ticket.csat < cfg.min_csat:
                return REASON_LOW_CSAT
        if self._languages is not None:
            language = (ticket.language or "").strip().lower()
            if language:
                if language not in self._languages and language.split("-")[0] not in self._languages:
                    return REASON_LANGUAGE
            elif cfg.require_language:
                return REASON_LANGUAGE
        return None

    def check_example(self, example: Example) -> str | None:
        """The reason to drop the example, or None (see `judge`)."""
        return self.judge(example)[0]

    def judge(self, example: Example) -> tuple[str | None, Example]:
        """(the reason to drop the example or None, the example signed); changes nothing.

        An example that passes the length and auto-reply checks comes back with its dedupe signature
        and, once `load` has synced a store's band table, its band keys: what `record` counts and the
        store keeps (written with the example, in its transaction). `screen` then `duplicate_reason`.
        """
        reason, signed = self.screen(example)
        if reason:
            return reason, signed
        return self.duplicate_reason(signed), signed

    def screen(self, example: Example) -> tuple[str | None, Example]:
        """The checks of the example alone (length, auto-reply); one that passes comes back signed."""
        cfg = self.cfg
        tokens = self.tokens.count(example.messages)
        if tokens < cfg.min_tokens:
            return REASON_TOO_SHORT, example
        if tokens > cfg.max_tokens:
            return REASON_TOO_LONG, example
        answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
        if cfg.drop_bot_only and all(is_autoreply(answer) for answer in answers):
            return REASON_AUTOMATED, example
        signature = example_signature(example)
        keys = self._band_keys(self._split(signature)[1])
        return None, example.signed(signature, tuple(keys) if self._store is not None and self._store_synced else None)

    def duplicate_reason(self, signed: Example) -> str | None:
        """Whether an example `screen` signed copies another ticket's, exactly or nearly (the index as it
        is, the batch's recorded examples included); changes nothing."""
        cfg = self.cfg
        exact, values = self._split(signed.quality_signature)
        if cfg.dedupe_exact and self._exact_owners(exact) - {signed.ticket_id}:
            return REASON_EXACT_DUPLICATE
        if cfg.dedupe_near:
            needed = cfg.near_duplicate_threshold * NUM_PERM
            for other_values in self._candidate_values(self._band_keys(values), signed.ticket_id):
                # LSH only proposes candidates; the share of equal MinHash values estimates the Jaccard
                if np.count_nonzero(other_values == values) >= needed:
                    return REASON_NEAR_DUPLICATE
        return None

    def prefetch(self, signed: Sequence[Example]) -> None:
        """Reads from the store, in a few queries, what judging and recording these examples (a poll batch,
        as `screen` signed them) will ask of it; the batch's `duplicate_reason` and `record` calls then
        read the answers instead of querying per example, until `committed`. Without a store: nothing."""
        if self._store is None:
            return
        split = [self._split(e.quality_signature) for e in signed if signature_is_current(e.quality_signature)]
        exacts = {exact for exact, _ in split}
        buckets = {(band, key) for _, values in split for band, key in enumerate(self._band_keys(values))}
        members = self._store.bucket_members(buckets)
        self._prefetched = _Prefetched(
            exacts=exacts, exact_owners=self._store.exact_owners_of(exacts), buckets=buckets, members=members,
            signatures=self._store.signatures_of(set().union(*members.values())),
            discards={(e.ticket_id, e.revision): d for e, d in zip(signed, self._store.discards(signed), strict=True)},
        )

    def _exact_owners(self, exact: bytes) -> set[str]:
        owners = set(self._by_exact.get(exact, ()))
        if self._store is not None:
            known = self._prefetched
            stored = (known.exact_owners.get(exact, set()) if known is not None and exact in known.exacts
                      else self._store.exact_owners(exact))
            owners.update(self._unrecorded(stored))
        return owners

    def _candidate_values(self, keys: list[int], ticket_id: str) -> list[np.ndarray]:
        """The MinHash values of every other example sharing an LSH bucket with these band keys."""
        found = self._candidates_for(keys) - {ticket_id}
        candidates = [self._by_ticket[other][1] for other in found]
        if self._store is not None:
            known = self._prefetched
            pairs = list(enumerate(keys))
            if known is not None and known.buckets.issuperset(pairs):
                stored = set().union(*(known.members.get(pair, ()) for pair in pairs))
            else:
                stored = self._store.band_candidates(keys)
            stored = {other for other in self._unrecorded(stored) if other != ticket_id and other not in found}
            signatures = {t: known.signatures[t] for t in stored if t in known.signatures} if known else {}
            if len(signatures) < len(stored):
                signatures.update(self._store.signatures_of(stored - signatures.keys()))
            for signature in signatures.values():
                split = _split_signature(signature)
                if split is not None:
                    candidates.append(split[1])
        return candidates

    def _unrecorded(self, stored: set[str]) -> Iterator[str]:
        """The tickets of a store answer that the batch has not deleted or recorded again (the batch's own
        entries hold their current text). Tested one by one: an answer holds a few tickets, the batch up to a
        poll's worth, and `stored - self._by_ticket.keys()` copied all of those for every example."""
        forgotten, recorded = self._forgotten, self._by_ticket
        return (ticket for ticket in stored if ticket not in forgotten and ticket not in recorded)

    # the explicit changes to the dedupe index (the ingest loop's) --------------------------------
    def record(self, example: Example) -> None:
        """Counts an example the ingest loop keeps (as `judge` returned it) in the index of the batch.

        With a store, one the store will refuse (an older revision than it holds, redelivered after a
        crash) is not counted: it would shadow the text the store keeps and make a later ticket of the
        batch a "duplicate" of what is not stored. What the store keeps of the index (the signature, the
        band keys) it writes with the example; `committed` then empties the batch's index here.
        """
        if self._store is not None and self._discards(example):
            return
        signature = example.quality_signature
        if not signature_is_current(signature):
            signature = example_signature(example)
        self._add(example.ticket_id, signature)

    def _discards(self, example: Example) -> bool:
        known = self._prefetched.discards.get((example.ticket_id, example.revision)) if self._prefetched else None
        return self._store.would_discard(example) if known is None else known

    def forget(self, ticket_id: str) -> None:
        """A deletion in the batch: the ticket's text no longer counts as a copy, stored or recorded."""
        if self._store is not None:
            self._forgotten.add(ticket_id)
        self._remove(ticket_id)

    def committed(self) -> None:
        """The ingest loop stored what was recorded: with a store, the memory holds none of it now."""
        self._prefetched = None
        self._keys_memo.clear()
        self._splits.clear()
        if self._store is not None:
            self._buckets = [{} for _ in range(self._bands)]
            self._by_ticket.clear()
            self._by_exact.clear()
            self._forgotten.clear()

    def load(self, rows: Iterable[tuple[str, bytes | None]]) -> int:
        """Rebuilds the dedupe index from stored (ticket_id, signature) rows; returns how many it took.

        Rows without a signature of this version are skipped. With a store, `rows` is not read: the
        store's own band table is brought to this filter's layout instead (`_sync_store`).
        """
        if self._store is not None:
            return self._sync_store(self._store)
        loaded = 0
        for ticket_id, signature in rows:
            if signature is not None and _split_signature(signature) is not None:
                self._add(ticket_id, signature)
                loaded += 1
        return loaded

    def _sync_store(self, store: DedupeStore) -> int:
        """Makes the store's band table hold every stored example's keys of this layout; returns how many.

        Missing or outdated signatures are computed (and stored with their keys) first. Another layout (a
        new near-duplicate threshold), or none yet, empties the table and rebuilds it; the layout is
        recorded only once the rebuild is complete, so one that a crash cut short is started again.
        Examples stored without keys (by a filter that holds its index in memory) get theirs. From then
        on the keys come with each example `judge` signs.
        """
        if store.band_layout() != self.layout:
            store.clear_bands()
        for page in store.signature_pages():
            resigned: list[tuple[str, bytes, list[int]]] = []
            unindexed: list[tuple[str, list[int]]] = []
            for ticket_id, signature, indexed in page:
                if not signature_is_current(signature):
                    stored = store.get_example(ticket_id)
                    if stored is None:
                        continue
                    signature = example_signature(Example(ticket_id=ticket_id, revision="",
                                                          messages=stored["messages"]))
                    resigned.append((ticket_id, signature, band_keys(signature, self._bands, self._rows)))
                elif not indexed:
                    unindexed.append((ticket_id, band_keys(signature, self._bands, self._rows)))
            if resigned:
                store.set_signatures(resigned)
            if unindexed:
                store.set_band_keys(unindexed)
        if store.band_layout() != self.layout:
            store.set_band_layout(self.layout)
        self._store_synced = True
        return store.indexed_count()

    # the in-memory index ------------------------------------------------------------------------
    def _band_keys(self, values: np.ndarray) -> list[int]:
        # an example's keys are asked for by `screen`, `prefetch`, `duplicate_reason` and `record`
        raw = values.tobytes()
        keys = self._keys_memo.get(raw)
        if keys is None:
            if len(self._keys_memo) >= KEYS_MEMO_SIZE:
                self._keys_memo.clear()
            keys = self._keys_memo[raw] = band_keys_of(values, self._bands, self._rows)
        return keys

    def _candidates_for(self, keys: list[int]) -> set[str]:
        found: set[str] = set()
        for buckets, key in zip(self._buckets, keys, strict=True):
            found |= buckets.get(key, set())
        return found

    def _split(self, signature: bytes) -> tuple[bytes, np.ndarray]:
        """`_split_signature` of a current signature, remembered until `committed` (a batch's examples are
        split by `screen`, `prefetch`, `duplicate_reason` and `record`)."""
        split = self._splits.get(signature)
        if split is None:
            if len(self._splits) >= KEYS_MEMO_SIZE:
                self._splits.clear()
            split = self._splits[signature] = _split_signature(signature)
        return split

    def _add(self, ticket_id: str, signature: bytes) -> None:
        self._remove(ticket_id)  # a revision replaces the ticket's earlier text
        exact, values = self._split(signature)
        self._by_ticket[ticket_id] = (exact, values)
        self._by_exact.setdefault(exact, set()).add(ticket_id)
        for buckets, key in zip(self._buckets, self._band_keys(values), strict=True):
            buckets.setdefault(key, set()).add(ticket_id)

    def _remove(self, ticket_id: str) -> None:
        known = self._by_ticket.pop(ticket_id, None)
        if known is None:
            return
        exact, values = known
        owners = self._by_exact[exact]
        owners.discard(ticket_id)
        if not owners:
            del self._by_exact[exact]
        for buckets, key in zip(self._buckets, self._band_keys(values), strict=True):
            members = buckets[key]
            members.discard(ticket_id)
            if not members:
                del buckets[key]
