"""The examples and their erasure: idempotent upserts by ticket id (one transaction per batch),
deterministic train/eval splits, deletions, erasure requests with their suppressions, retention, and
the reads about the examples.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from daemon.ingest.feedback import KINDS as FEEDBACK_KINDS
from daemon.ingest.pairs import PIPELINE_VERSION, Example
from daemon.store.db import Database, unit_hash, utc_now

OUTCOME_STORED = "stored"
OUTCOME_REVISED = "revised"
OUTCOME_UNCHANGED = "unchanged"
OUTCOME_STALE = "stale"
OUTCOME_DELETED = "deleted"
OUTCOME_ABSENT = "absent"
OUTCOME_SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class Deletion:
    """A deletion request (a Kafka tombstone) for one ticket."""

    ticket_id: str


@dataclass
class _BatchState:
    """What the store holds of one batch's tickets, read up front and kept up to date as `apply` goes."""

    store: ExampleTables
    suppressed: set[str]
    rows: dict[str, tuple[str, str]]  # ticket id -> (revision, pipeline version) of the stored example
    deletions: dict[str, str]  # ticket id -> the revision its deletion covers
    keyed: dict[int, list[str]] = field(default_factory=dict)
    identities: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # to write, by ticket id
    bands: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)

    @classmethod
    def read(cls, store: ExampleTables, examples: Sequence[Example]) -> _BatchState:
        """In three queries per 500 examples, on the store's connection (inside `apply`'s write transaction
        when it calls)."""
        state = cls(store, set(), {}, {})
        if not examples:
            return state
        subjects = {s for example in examples for s in state.subjects(example)}
        state.suppressed = {row[0] for row in store._rows_in(
            "SELECT subject FROM suppressions WHERE subject IN ({})", subjects)}
        ids = {example.ticket_id for example in examples}
        state.rows = {row[0]: (row[1], row[2]) for row in store._rows_in(
            "SELECT ticket_id, revision, pipeline_version FROM examples WHERE ticket_id IN ({})", ids)}
        state.deletions = {row[0]: row[1] for row in store._rows_in(
            "SELECT ticket_id, revision FROM deletions WHERE ticket_id IN ({})", ids)}
        return state

    def refusal(self, example: Example) -> str | None:
        """Why `apply` would leave this example out as things stand (suppressed, or stale: older than what
        the store holds, or than its deletion), or None."""
        if not self.suppressed.isdisjoint(self.subjects(example)):
            return OUTCOME_SUPPRESSED  # the customer asked to be forgotten: a replay must not bring it back
        row = self.rows.get(example.ticket_id)
        if row is not None:
            return OUTCOME_STALE if example.revision < row[0] else None
        deleted = self.deletions.get(example.ticket_id)
        return OUTCOME_STALE if deleted is not None and example.revision <= deleted else None  # a redelivery

    def subjects(self, example: Example) -> list[str]:
        """The keyed ticket id, then the keyed identities, of an example of the batch."""
        found = self.keyed.get(id(example))
        if found is None:
            found = self.keyed[id(example)] = [self.store.keyed("ticket:" + example.ticket_id)] + [
                self.store.keyed(identity) for identity in example.identities]
        return found

    def stored(self, example: Example) -> None:
        """An upsert went in: its identities and band keys (the quality filter's, if it gave any) are written
        with the batch's others at the end (`write_rows`), in two statements instead of two per example."""
        self.rows[example.ticket_id] = (example.revision, PIPELINE_VERSION)
        self.identities[example.ticket_id] = [(example.ticket_id, keyed) for keyed in self.subjects(example)[1:]]
        self.bands[example.ticket_id] = [(band, key, example.ticket_id)
                                         for band, key in enumerate(example.dedupe_keys or ())]

    def deleted(self, ticket_id: str) -> None:
        row = self.rows.pop(ticket_id, None)
        self.deletions[ticket_id] = max(self.deletions.get(ticket_id, ""), row[0] if row is not None else "")
        self.identities.pop(ticket_id, None)  # written by no statement yet: nothing of it to delete later
        self.bands.pop(ticket_id, None)

    def write_rows(self, db: sqlite3.Connection) -> None:
        db.executemany("INSERT OR IGNORE INTO example_identities (ticket_id, identity) VALUES (?, ?)",
                       [row for rows in self.identities.values() for row in rows])
        db.executemany("INSERT OR IGNORE INTO dedupe_bands (band, bucket, ticket_id) VALUES (?, ?, ?)",
                       [row for rows in self.bands.values() for row in rows])


class ExampleTables(Database):
    """`examples`, `deletions`, `example_identities`, `suppressions` and `erasures`."""

    # ingest --------------------------------------------------------------------------------
    def split_for(self, group_key: str) -> str:
        return "eval" if unit_hash("split:" + group_key) < self.eval_fraction else "train"

    def apply(self, changes: Sequence[Example | Deletion]) -> list[str]:
        """Applies upserts and deletions in one transaction, durable when it returns.

        Outcome per change, in order: stored, revised, unchanged, stale, deleted or absent. What the
        store holds of the batch's tickets is read in three queries up front, then kept as the batch
        changes it (a ticket upserted twice, or deleted then stored again, in one batch).
        """
        outcomes = []
        with self._write() as db:
            state = self._batch_state(db, [c for c in changes if not isinstance(c, Deletion)])
            for change in changes:
                if isinstance(change, Deletion):
                    outcomes.append(self._delete(db, change.ticket_id))
                    state.deleted(change.ticket_id)
                else:
                    outcomes.append(self._upsert(db, change, state))
            state.write_rows(db)
        return outcomes

    def would_discard(self, example: Example) -> bool:
        """Whether `apply` would leave this example out: an erased subject, or a revision older than
        what the store holds or deleted (a redelivered record). The dedupe index must not count it."""
        return self.discards([example])[0]

    def discards(self, examples: Sequence[Example]) -> list[bool]:
        """`would_discard` of each example, in three queries per 500 (a poll batch's worth), against the store
        as it is (not as the others would change it).

        The queries run in one read transaction, and what they read is kept for this thread's next `apply`
        (`_batch_state`): the quality filter asks this of a poll batch's examples just before the ingest loop
        stores them, and `apply` would read the same rows again (about 9 µs a ticket)."""
        db = self._db
        if db.in_transaction:  # inside a transaction of the caller's: read, keep nothing
            state = _BatchState.read(self, examples)
            return [state.refusal(example) is not None for example in examples]
        db.execute("BEGIN")
        try:
            state = _BatchState.read(self, examples)
            version = db.execute("PRAGMA data_version").fetchone()[0]
        finally:
            if db.in_transaction:  # one SQLite ended itself (an I/O error) is not ended twice, hiding the error
                db.execute("COMMIT")  # a read: nothing to keep or undo
        verdicts = [state.refusal(example) is not None for example in examples]
        self._local.batch_read = (list(examples), state, version, db.total_changes)
        return verdicts

    def _batch_state(self, db: sqlite3.Connection, examples: Sequence[Example]) -> _BatchState:
        """`_BatchState.read` of `apply`'s examples, inside its write transaction; or what `discards` last read on
        this thread, when that covered every one of these examples (the same objects, so the same subjects) and
        nothing was written to the store since: not by this connection (its count of changed rows is the same),
        not by any other, another thread's erasure included (SQLite's `data_version` is the same). The rows read
        then are the rows there now; extra tickets in it (examples the filter dropped) are never looked up."""
        kept, self._local.batch_read = getattr(self._local, "batch_read", None), None  # used once at most
        if kept is not None:
            read, state, version, changes = kept
            if db.total_changes == changes and db.execute("PRAGMA data_version").fetchone()[0] == version:
                known = {id(example) for example in read}  # `read` holds them: their ids are not reused
                if all(id(example) in known for example in examples):
                    return state
        return _BatchState.read(self, examples)

    def _upsert(self, db: sqlite3.Connection, example: Example, state: _BatchState) -> str:
        refusal = state.refusal(example)
        if refusal is not None:
            return refusal
        row = state.rows.get(example.ticket_id)
        if row is None:
            outcome = OUTCOME_STORED
        elif example.revision == row[0] and row[1] == PIPELINE_VERSION:
            return OUTCOME_UNCHANGED
        else:
            outcome = OUTCOME_REVISED  # a later revision, or the same one rebuilt by a newer pipeline
        db.execute(
            "INSERT INTO examples (ticket_id, revision, example_json, category, group_key, split, batch_id,"
            " stored_at, pipeline_version, quality_signature) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)"
            " ON CONFLICT(ticket_id) DO UPDATE SET revision = excluded.revision,"
            " example_json = excluded.example_json, category = excluded.category,"
            " group_key = excluded.group_key, split = excluded.split, batch_id = NULL,"
            " stored_at = excluded.stored_at, pipeline_version = excluded.pipeline_version,"
            " quality_signature = excluded.quality_signature",
            (
                example.ticket_id,
                example.revision,
                example.to_json(),
                example.category,
                self.keyed("group:" + example.group_key),
                self.split_for(example.group_key),  # from the unkeyed group hash: the same in every store
                utc_now(),
                PIPELINE_VERSION,
                example.quality_signature,
            ),
        )
        if outcome == OUTCOME_REVISED:  # the earlier revision's rows go now, the new ones with the batch's
            db.execute("DELETE FROM example_identities WHERE ticket_id = ?", (example.ticket_id,))
            db.execute("DELETE FROM dedupe_bands WHERE ticket_id = ?", (example.ticket_id,))
        state.stored(example)
        return outcome

    def _delete(self, db: sqlite3.Connection, ticket_id: str) -> str:
        """Deletes a ticket everywhere it is kept, snapshots and trusted sets included."""
        row = db.execute("SELECT revision FROM examples WHERE ticket_id = ?", (ticket_id,)).fetchone()
        db.execute("DELETE FROM examples WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM snapshot_items WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM trusted_sets WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM example_identities WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM online_outcomes WHERE ticket_id = ?", (ticket_id,))
        revision = row["revision"] if row is not None else ""
        db.execute(
            "INSERT INTO deletions (ticket_id, revision, deleted_at) VALUES (?, ?, ?)"
            " ON CONFLICT(ticket_id) DO UPDATE SET revision = max(revision, excluded.revision),"
            " deleted_at = excluded.deleted_at",
            (ticket_id, revision, utc_now()),
        )
        return OUTCOME_DELETED if row is not None else OUTCOME_ABSENT

    # erasure and retention ----------------------------------------------------------------
    def forget(self, *, ticket_id: str | None = None, requester_email: str | None = None,
               requester_id: str | None = None) -> dict:
        """Erases a ticket, or every ticket of a requester, everywhere the store keeps it, and
        suppresses it for good (a replay or redelivery is not stored again).

        Returns the erasure id, how many tickets went, and the model versions trained on them
        (they get tagged in the registry; the next cycle retrains without them). The audit row
        keeps only keyed hashes, never the id or address itself.
        """
        if sum(x is not None for x in (ticket_id, requester_email, requester_id)) != 1:
            raise ValueError("forget takes exactly one of ticket_id, requester_email, requester_id")
        if ticket_id is not None:
            kind, subject = "ticket", self.keyed("ticket:" + ticket_id)
        elif requester_email is not None:
            kind, subject = "requester_email", self.keyed("email:" + requester_email.strip().lower())
        else:
            kind, subject = "requester_id", self.keyed(f"id:{requester_id}")
        with self._write() as db:
            if ticket_id is not None:
                tickets = [ticket_id]
            else:
                tickets = [r[0] for r in db.execute(
                    "SELECT DISTINCT ticket_id FROM example_identities WHERE identity = ?", (subject,))]
            marks = ",".join("?" * len(tickets))
            affected = sorted({r[0] for r in db.execute(
                "SELECT DISTINCT c.model_version FROM snapshot_items s JOIN cycles c ON c.snapshot_id = s.snapshot_id"
                f" WHERE s.ticket_id IN ({marks}) AND s.part IN ('batch_train', 'replay')"
                " AND c.model_version IS NOT NULL", tickets)}, key=lambda v: (len(v), v)) if tickets else []
            removed = sum(self._delete(db, t) == OUTCOME_DELETED for t in tickets)
            db.execute("INSERT OR IGNORE INTO suppressions (subject, added_at) VALUES (?, ?)", (subject, utc_now()))
            for t in tickets:
                db.execute("INSERT OR IGNORE INTO suppressions (subject, added_at) VALUES (?, ?)",
                           (self.keyed("ticket:" + t), utc_now()))
            cursor = db.execute(
                "INSERT INTO erasures (requested_at, kind, subject, tickets_removed, affected_versions, tagged_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (utc_now(), kind, subject, removed, json.dumps(affected), None if affected else utc_now()),
            )
        return {"erasure_id": cursor.lastrowid, "tickets_removed": removed, "affected_versions": affected}

    def pending_erasures(self) -> list[dict]:
        """Erasures whose affected model versions are not tagged in the registry yet."""
        rows = self._db.execute(
            "SELECT id, requested_at, kind, affected_versions FROM erasures WHERE tagged_at IS NULL ORDER BY id"
        ).fetchall()
        return [{"erasure_id": r["id"], "requested_at": r["requested_at"], "kind": r["kind"],
                 "affected_versions": json.loads(r["affected_versions"])} for r in rows]

    def mark_erasure_tagged(self, erasure_id: int) -> None:
        with self._write() as db:
            db.execute("UPDATE erasures SET tagged_at = ? WHERE id = ?", (utc_now(), erasure_id))

    def versions_trained_on_erased_data(self) -> set[str]:
        versions: set[str] = set()
        for (affected,) in self._db.execute("SELECT affected_versions FROM erasures"):
            versions.update(json.loads(affected))
        return versions

    def purge_older_than(self, days: float) -> int:
        """Retention: deletes examples whose ticket revision is older than `days` (not suppressed)."""
        cutoff = datetime.fromtimestamp(time.time() - days * 86400, timezone.utc).isoformat(timespec="microseconds")
        with self._write() as db:
            old = [r[0] for r in db.execute(
                "SELECT ticket_id FROM examples WHERE revision != '' AND revision < ?", (cutoff,))]
            for ticket_id in old:
                self._delete(db, ticket_id)
        return len(old)

    # reads ---------------------------------------------------------------------------------
    def get_example(self, ticket_id: str) -> dict | None:
        row = self._db.execute("SELECT example_json FROM examples WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return json.loads(row["example_json"]) if row else None

    def counts(self) -> dict[str, int]:
        db = self._db
        total = db.execute("SELECT count(*) FROM examples").fetchone()[0]
        pending = self.pending_count()
        quarantined = db.execute(
            "SELECT count(*) FROM examples e JOIN batches b ON e.batch_id = b.id WHERE b.state = 'quarantined'"
        ).fetchone()[0]
        return {"examples": total, "pending": pending, "quarantined": quarantined}

    def feedback_counts(self) -> dict[str, int]:
        """Stored examples by kind of preference data (`feedback.KINDS`): desirable, undesirable, pair."""
        row = self._db.execute(
            "SELECT sum(json_extract(example_json, '$.feedback.label') = 'desirable'),"
            " sum(json_extract(example_json, '$.feedback.label') = 'undesirable'),"
            " sum(json_extract(example_json, '$.feedback.rejected') IS NOT NULL)"
            " FROM examples WHERE example_json LIKE '%\"feedback\"%'"
        ).fetchone()
        return {kind: int(row[i] or 0) for i, kind in enumerate(FEEDBACK_KINDS)}

    def freshness(self, top_categories: int = 20) -> dict:
        """Newest stored_at and examples per category (the largest ones; the rest as 'other')."""
        db = self._db
        newest = db.execute("SELECT max(stored_at) FROM examples").fetchone()[0]
        rows = db.execute(
            "SELECT coalesce(category, 'none') AS c, count(*) AS n FROM examples GROUP BY c ORDER BY n DESC"
        ).fetchall()
        by_category = {r["c"]: r["n"] for r in rows[:top_categories]}
        if len(rows) > top_categories:
            by_category["other"] = sum(r["n"] for r in rows[top_categories:])
        return {"newest_stored_at": newest, "by_category": by_category}

    def pending_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM examples WHERE batch_id IS NULL").fetchone()[0]
