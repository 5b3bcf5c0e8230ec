"""The dedupe index's tables: what daemon/ingest/filters.py looks up so that the ingest process holds
only the batch it is ingesting in memory, however many examples the store keeps.

The filters own the signatures: they compute each example's signature (kept, as given, in
`examples.quality_signature`), its LSH band keys and the layout (bands x rows, e.g. "16x8") the keys
are of. The store only keeps and finds keys: band keys in, the tickets sharing a bucket out; an
exact hash in (bytes 2 to 17 of a signature, indexed by migration 7), the tickets with that
conversation out. An example's band keys are written with the example (`ExampleStore.apply`, one
transaction), and leave with it (a trigger on `examples`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from daemon.store.db import Database

PAGE_ROWS = 5000


def write_band_keys(db: sqlite3.Connection, ticket_id: str, keys: Sequence[int] | None) -> None:
    """Replaces a ticket's band keys (one per band, in order) in the caller's transaction; none: it has none."""
    db.execute("DELETE FROM dedupe_bands WHERE ticket_id = ?", (ticket_id,))
    if keys:
        db.executemany("INSERT OR IGNORE INTO dedupe_bands (band, bucket, ticket_id) VALUES (?, ?, ?)",
                       [(band, key, ticket_id) for band, key in enumerate(keys)])


class DedupeTables(Database):
    """The band table (`dedupe_bands`), its layout (`meta.dedupe_layout`) and the signature lookups."""

    # the layout -------------------------------------------------------------------------------
    def band_layout(self) -> str | None:
        """The layout the band table holds every signed example's keys of; None before the first build
        and while a rebuild is under way (so a rebuild that a crash cut short is started again)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dedupe_layout'").fetchone()
        return row["value"] if row is not None else None

    def clear_bands(self) -> None:
        """Starts a rebuild: empties the band table and forgets its layout, in one transaction."""
        with self._write() as db:
            db.execute("DELETE FROM dedupe_bands")
            db.execute("DELETE FROM meta WHERE key = 'dedupe_layout'")

    def set_band_layout(self, layout: str) -> None:
        """Ends a rebuild: the band table holds the keys of `layout` for every signed example."""
        with self._write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('dedupe_layout', ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (layout,))

    def indexed_count(self) -> int:
        """How many examples the band table holds keys for."""
        return self._db.execute("SELECT count(DISTINCT ticket_id) FROM dedupe_bands").fetchone()[0]

    # writes ----------------------------------------------------------------------------------
    def set_band_keys(self, entries: Iterable[tuple[str, Sequence[int] | None]]) -> None:
        """Replaces the band keys of these (ticket id, keys) in one transaction (None removes them)."""
        with self._write() as db:
            for ticket_id, keys in entries:
                write_band_keys(db, ticket_id, keys)

    def set_signatures(self, entries: Iterable[tuple[str, bytes, Sequence[int] | None]]) -> None:
        """Stores recomputed (ticket id, signature, band keys) of stored examples, in one transaction."""
        with self._write() as db:
            for ticket_id, signature, keys in entries:
                db.execute("UPDATE examples SET quality_signature = ? WHERE ticket_id = ?", (signature, ticket_id))
                write_band_keys(db, ticket_id, keys)

    # reads -----------------------------------------------------------------------------------
    def signature_pages(self, rows: int = PAGE_ROWS) -> Iterator[list[tuple[str, bytes | None, bool]]]:
        """Every stored example as (ticket id, signature or None, whether it has band keys), a page at a
        time in ticket id order; each page is its own query, so the caller may write between pages."""
        select = ("SELECT ticket_id, quality_signature,"
                  " EXISTS (SELECT 1 FROM dedupe_bands b WHERE b.ticket_id = e.ticket_id) AS indexed FROM examples e")
        page = self._db.execute(f"{select} ORDER BY ticket_id LIMIT ?", (rows,)).fetchall()
        while page:
            yield [(r["ticket_id"], r["quality_signature"], bool(r["indexed"])) for r in page]
            page = self._db.execute(f"{select} WHERE ticket_id > ? ORDER BY ticket_id LIMIT ?",
                                    (page[-1]["ticket_id"], rows)).fetchall()

    def quality_signatures(self) -> list[tuple[str, bytes]]:
        """(ticket_id, signature) of every stored example that has one, as stored (for a filter that holds
        its whole index in memory; a store-backed `QualityFilter.load` re-signs outdated ones)."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT ticket_id, quality_signature FROM examples WHERE quality_signature IS NOT NULL")]

    def exact_owners(self, exact: bytes) -> set[str]:
        """Tickets whose stored conversation has this exact hash (bytes 2 to 17 of the signature)."""
        rows = self._db.execute(
            "SELECT ticket_id FROM examples WHERE substr(quality_signature, 2, 16) = ?", (exact,)).fetchall()
        return {row[0] for row in rows}

    def band_candidates(self, keys: Sequence[int]) -> set[str]:
        """Tickets sharing at least one LSH bucket with these band keys (one per band, in order)."""
        if not keys:
            return set()
        # one primary-key search per band (SQLite scans the whole table for a row-value IN (VALUES ...))
        where = " OR ".join("(band = ? AND bucket = ?)" for _ in keys)
        values = [v for band, key in enumerate(keys) for v in (band, key)]
        rows = self._db.execute(f"SELECT DISTINCT ticket_id FROM dedupe_bands WHERE {where}", values).fetchall()
        return {row[0] for row in rows}

    def exact_owners_of(self, exacts: Iterable[bytes]) -> dict[bytes, set[str]]:
        """`exact_owners` of many exact hashes at once (those with no owner are left out)."""
        found: dict[bytes, set[str]] = {}
        for ticket_id, exact in self._rows_in("SELECT ticket_id, substr(quality_signature, 2, 16) FROM examples"
                                              " WHERE substr(quality_signature, 2, 16) IN ({})", exacts):
            found.setdefault(exact, set()).add(ticket_id)
        return found

    def bucket_members(self, buckets: Iterable[tuple[int, int]]) -> dict[tuple[int, int], set[str]]:
        """The tickets in each of these (band, bucket) pairs, in a query per band (empty buckets are left out):
        what `band_candidates` answers for a whole batch of examples at once."""
        by_band: dict[int, list[int]] = {}
        for band, bucket in buckets:
            by_band.setdefault(band, []).append(bucket)
        found: dict[tuple[int, int], set[str]] = {}
        for band, wanted in by_band.items():
            for bucket, ticket_id in self._rows_in(
                    "SELECT bucket, ticket_id FROM dedupe_bands WHERE band = ? AND bucket IN ({})", wanted, band):
                found.setdefault((band, bucket), set()).add(ticket_id)
        return found

    def signatures_of(self, ticket_ids: Iterable[str]) -> dict[str, bytes]:
        """The stored signatures of these tickets (those that have one)."""
        return {ticket_id: signature for ticket_id, signature in self._rows_in(
            "SELECT ticket_id, quality_signature FROM examples WHERE ticket_id IN ({})"
            " AND quality_signature IS NOT NULL", ticket_ids)}
