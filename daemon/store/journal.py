"""The journal: the cycle log (each cycle's attempts, verdict and reasons) and the audit log of
champion moves (recorded before each alias move, settled after it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.store.db import Database, utc_now


@dataclass(frozen=True)
class RetryableCycle:
    """The most recent cycle, when it failed after its snapshot in a way a retry may fix."""

    cycle_id: str
    snapshot_id: str
    attempts: int


class JournalTables(Database):
    """`cycles` and `champion_moves`."""

    # cycles --------------------------------------------------------------------------------
    def start_cycle(self, cycle_id: str, trigger: str) -> int:
        """Records the start of a cycle, or of another attempt of it (its end and verdict cleared);
        returns the attempt number, 1 for a new cycle."""
        with self._write() as db:
            db.execute(
                "INSERT INTO cycles (cycle_id, trigger, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT(cycle_id) DO UPDATE SET attempts = attempts + 1, trigger = excluded.trigger,"
                " started_at = excluded.started_at, ended_at = NULL, verdict = NULL, model_version = NULL,"
                " reasons_json = NULL, metrics_json = NULL, retryable = 0",
                (cycle_id, trigger, utc_now()),
            )
            return db.execute("SELECT attempts FROM cycles WHERE cycle_id = ?", (cycle_id,)).fetchone()[0]

    def finish_cycle(
        self,
        cycle_id: str,
        *,
        verdict: str,
        model_version: str | None,
        snapshot_id: str | None,
        reasons: list[str],
        metrics: dict,
        retryable: bool = False,
    ) -> None:
        """`retryable`: a failure that another attempt with the same snapshot and spec may fix."""
        with self._write() as db:
            db.execute(
                "UPDATE cycles SET ended_at = ?, verdict = ?, model_version = ?, snapshot_id = ?,"
                " reasons_json = ?, metrics_json = ?, retryable = ? WHERE cycle_id = ?",
                (utc_now(), verdict, model_version, snapshot_id, json.dumps(reasons), json.dumps(metrics),
                 int(retryable and verdict == "failed"), cycle_id),
            )

    def record_skip(self, cycle_id: str, trigger: str, reason: str) -> None:
        """Records a cycle that was planned and skipped before it started anything (too few new examples)."""
        now = utc_now()
        with self._write() as db:
            db.execute(
                "INSERT INTO cycles (cycle_id, trigger, started_at, ended_at, verdict, reasons_json, metrics_json)"
                " VALUES (?, ?, ?, ?, 'skipped', ?, '{}')",
                (cycle_id, trigger, now, now, json.dumps([reason])),
            )

    def retryable_cycle(self) -> RetryableCycle | None:
        """The most recent cycle that ran (a recorded skip ran nothing: another process's cycle held
        the lock, or too few new examples) if it failed retryably after its snapshot, its batch is still
        open and nothing of its snapshot was erased since; the caller checks the rest (files, champion,
        attempts left)."""
        db = self._db
        row = db.execute(
            "SELECT cycle_id, verdict, retryable, snapshot_id, attempts FROM cycles"
            " WHERE verdict IS NULL OR verdict != 'skipped' ORDER BY started_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        if row is None or row["verdict"] != "failed" or not row["retryable"] or row["snapshot_id"] is None:
            return None
        snapshot_id = row["snapshot_id"]
        if db.execute("SELECT 1 FROM batches WHERE snapshot_id = ?", (snapshot_id,)).fetchone():
            return None
        counts = db.execute("SELECT counts_json FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        kept = dict(db.execute(
            "SELECT part, count(*) FROM snapshot_items WHERE snapshot_id = ? GROUP BY part", (snapshot_id,)
        ).fetchall())
        if counts is None or any(kept.get(part, 0) != n for part, n in json.loads(counts[0]).items()):
            return None  # an erasure or retention removed examples: its files on disk are out of date
        return RetryableCycle(row["cycle_id"], snapshot_id, row["attempts"])

    def last_decided_at(self) -> str | None:
        """When the last cycle that reached the gate's decision (promoted, rejected or awaiting
        approval) ended, as ISO 8601 UTC; None before the first."""
        row = self._db.execute(
            "SELECT max(ended_at) FROM cycles WHERE verdict IN ('promoted', 'rejected', 'awaiting_approval')"
        ).fetchone()
        return row[0] if row else None

    def cycles(self, limit: int = 20) -> list[dict]:
        """The newest cycles first; one that has not ended shows the verdict `running`."""
        rows = self._db.execute(
            "SELECT * FROM cycles ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_cycle_row(r) for r in rows]

    def cycle(self, cycle_id: str) -> dict | None:
        """One cycle as `cycles` shows it, or None."""
        row = self._db.execute("SELECT * FROM cycles WHERE cycle_id = ?", (cycle_id,)).fetchone()
        return _cycle_row(row) if row is not None else None

    def unfinished_cycles(self) -> list[str]:
        """Cycles a crash left without an end (before `fail_unfinished_cycles` marks them)."""
        return [r[0] for r in self._db.execute("SELECT cycle_id FROM cycles WHERE ended_at IS NULL")]

    def fail_unfinished_cycles(self, reason: str) -> int:
        """Marks cycles that a crash left without an end as failed, and retryable (run at service start)."""
        with self._write() as db:
            return db.execute(
                "UPDATE cycles SET ended_at = ?, verdict = 'failed', reasons_json = ?, retryable = 1"
                " WHERE ended_at IS NULL",
                (utc_now(), json.dumps([reason])),
            ).rowcount

    # champion moves (the audit log) ---------------------------------------------------------
    def begin_move(self, action: str, version: str | None, previous: str | None, *, actor: str, reason: str,
                   forced: bool = False, state: str = "pending") -> int:
        """Records an alias move before it is made (`pending`), so that a watcher never mistakes it
        for an outside move and a crash halfway is visible; `end_move` settles it."""
        with self._write() as db:
            return db.execute(
                "INSERT INTO champion_moves (at, action, version, previous, actor, reason, forced, state, ended_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (utc_now(), action, version, previous, actor, reason, int(forced), state,
                 None if state == "pending" else utc_now()),
            ).lastrowid

    def end_move(self, move_id: int, state: str) -> None:
        if state not in ("done", "abandoned"):
            raise ValueError(f"a move ends done or abandoned, not {state!r}")
        with self._write() as db:
            db.execute("UPDATE champion_moves SET state = ?, ended_at = ? WHERE id = ?", (state, utc_now(), move_id))

    def pending_moves(self) -> list[dict]:
        rows = self._db.execute("SELECT * FROM champion_moves WHERE state = 'pending' ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def known_champion(self) -> tuple[bool, str | None]:
        """(whether any move was recorded, the champion the last completed move left)."""
        row = self._db.execute(
            "SELECT version FROM champion_moves WHERE state = 'done' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return (row is not None, row["version"] if row else None)

    def settled_moves_mark(self) -> tuple[int, int]:
        """(how many moves are settled, the newest settled one's id): it changes whenever a move of any
        process on this store ends, so a running service learns of a CLI's move without asking MLflow."""
        row = self._db.execute(
            "SELECT count(*), coalesce(max(id), 0) FROM champion_moves WHERE state != 'pending'"
        ).fetchone()
        return (row[0], row[1])

    def champion_moves(self, limit: int = 100) -> list[dict]:
        """The audit log of alias moves, newest first."""
        rows = self._db.execute(
            "SELECT id, at, action, version, previous, actor, reason, forced, state FROM champion_moves"
            " ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall()
        return [dict(r) | {"forced": bool(r["forced"])} for r in rows]


def _cycle_row(row: Mapping) -> dict:
    item = dict(row)
    item["reasons"] = json.loads(item.pop("reasons_json") or "[]")
    item["metrics"] = json.loads(item.pop("metrics_json") or "{}")
    if item["ended_at"] is None:
        item["verdict"] = "running"  # or left by a crash: the service marks such a cycle failed at start
    return item
