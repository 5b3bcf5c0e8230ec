"""Per-version outcome records for online probation (daemon/champion/online.py): one row per resolved
ticket whose first answer an adapter version drafted.

A row keeps numbers and labels only (version, category, CSAT, the draft's outcome and edit size, when the
ticket resolved), never text. It is recorded before the quality filters (a low-CSAT ticket the filters drop
is exactly the signal), so the requester's keyed identities are kept beside it: an erasure by ticket, email
or id removes it (`ExampleTables._delete`), and a suppressed ticket or requester is never recorded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daemon.store.db import Database, utc_now


@dataclass(frozen=True)
class OutcomeRow:
    ticket_id: str
    model_name: str | None
    model_version: str
    resolved_at: str  # ISO-8601 UTC: the ticket's resolved_at, else updated_at, else when it was read
    category: str | None
    csat: float | None
    outcome: str  # sent_as_is, edited, discarded
    edit_ratio: float | None
    identities: tuple[str, ...] = ()  # the requester's normalised ids (kept only as keyed hashes)


class OnlineTables(Database):
    """`online_outcomes`."""

    def record_outcomes(self, rows: Sequence[OutcomeRow]) -> int:
        """Upserts the rows in one transaction (a ticket's later record replaces its earlier one); a
        suppressed ticket or requester is left out. Returns how many were written."""
        written = 0
        with self._write() as db:
            for row in rows:
                subjects = [self.keyed("ticket:" + row.ticket_id)] + [self.keyed(i) for i in row.identities]
                marks = ",".join("?" * len(subjects))
                if db.execute(f"SELECT 1 FROM suppressions WHERE subject IN ({marks}) LIMIT 1", subjects).fetchone():
                    continue
                db.execute(
                    "INSERT INTO online_outcomes (ticket_id, model_name, model_version, resolved_at, category, csat,"
                    " outcome, edit_ratio, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(ticket_id) DO UPDATE SET model_name = excluded.model_name,"
                    " model_version = excluded.model_version, resolved_at = excluded.resolved_at,"
                    " category = excluded.category, csat = excluded.csat, outcome = excluded.outcome,"
                    " edit_ratio = excluded.edit_ratio, recorded_at = excluded.recorded_at",
                    (row.ticket_id, row.model_name, row.model_version, row.resolved_at, row.category, row.csat,
                     row.outcome, row.edit_ratio, utc_now()),
                )
                db.executemany("INSERT OR IGNORE INTO example_identities (ticket_id, identity) VALUES (?, ?)",
                               [(row.ticket_id, self.keyed(i)) for i in row.identities])
                written += 1
        return written

    def outcomes(self, version: str, *, since: str | None = None, before: str | None = None,
                 newest_first: bool = False, limit: int | None = None) -> list[dict]:
        """The outcome rows of one version, resolved at or after `since` and before `before`."""
        sql = "SELECT * FROM online_outcomes WHERE model_version = ?"
        args: list = [str(version)]
        if since is not None:
            sql += " AND resolved_at >= ?"
            args.append(since)
        if before is not None:
            sql += " AND resolved_at < ?"
            args.append(before)
        sql += f" ORDER BY resolved_at {'DESC' if newest_first else 'ASC'}, ticket_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [dict(r) for r in self._db.execute(sql, args)]

    def outcome_versions_since(self, since: str) -> dict[str, int]:
        """How many outcome rows each version has, resolved at or after `since`."""
        return {r[0]: r[1] for r in self._db.execute(
            "SELECT model_version, count(*) FROM online_outcomes WHERE resolved_at >= ? GROUP BY model_version",
            (since,))}

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row is not None else None
