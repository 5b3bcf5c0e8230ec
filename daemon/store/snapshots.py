"""Snapshots (the immutable copy of what one cycle trains and judges on), the batches they close
(promoted, or quarantined until an operator releases or discards them) and the trusted eval sets
frozen with each model version.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from daemon.ingest.feedback import preference_rows, trains_sft
from daemon.store.db import Database, unit_hash, utc_now

MIN_VALIDATION_EXAMPLES = 8  # fewer make a validation loss too noisy to stop on


@dataclass
class Snapshot:
    """An immutable copy of what one cycle trains and judges on."""

    id: str
    cycle_id: str
    champion_version: str | None
    batch_train: list[dict] = field(default_factory=list)
    batch_eval: list[dict] = field(default_factory=list)
    replay: list[dict] = field(default_factory=list)
    trusted_eval: list[dict] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "batch_train": len(self.batch_train),
            "batch_eval": len(self.batch_eval),
            "replay": len(self.replay),
            "trusted_eval": len(self.trusted_eval),
        }

    def describe(self) -> str:
        """The counts in words, for a log line."""
        return (f"{len(self.batch_train)} new and {len(self.replay)} replayed examples "
                f"({len(self.batch_eval)} of the batch held out, {len(self.trusted_eval)} trusted to judge on)")

    def sft_view(self, preference: bool) -> Snapshot:
        """The snapshot as the supervised part sees it: without the examples it must never train or be
        judged on (`feedback.trains_sft`: kept only as undesirable, or low-rated under a preference objective)."""
        def keep(rows: list[dict]) -> list[dict]:
            return [row for row in rows if trains_sft(row, preference)]

        return Snapshot(self.id, self.cycle_id, self.champion_version, keep(self.batch_train), keep(self.batch_eval),
                        keep(self.replay), keep(self.trusted_eval))

    def write_jsonl(self, directory: Path, validation_fraction: float = 0.0, *,
                    preference: bool = False) -> dict[str, Path]:
        """Writes train (batch + replay, deterministically shuffled), validation, trusted and batch-held-out files
        of the supervised part (`sft_view`), and `preference_train` (the training examples' feedback as thumbs
        and pairs, `feedback.preference_rows`).

        Validation (for early stopping) is a slice of the new batch's training part chosen by a hash
        of the ticket id, so a retry of the cycle picks the same one; replay and the eval sets never
        join it. Under MIN_VALIDATION_EXAMPLES it stays empty and everything trains.
        """
        directory.mkdir(parents=True, exist_ok=True)
        in_validation = [ex for ex in self.batch_train
                         if unit_hash("validation:" + ex["ticket_id"]) < validation_fraction]
        sft = self.sft_view(preference)
        validation = [ex for ex in in_validation if trains_sft(ex, preference)]
        if len(validation) < MIN_VALIDATION_EXAMPLES:
            validation, in_validation = [], []
        held = {ex["ticket_id"] for ex in in_validation}
        train_all = sorted(
            [ex for ex in self.batch_train if ex["ticket_id"] not in held] + self.replay,
            key=lambda ex: unit_hash(self.id + ex["ticket_id"]),
        )
        train = [ex for ex in train_all if trains_sft(ex, preference)]
        thumbs, pairs = preference_rows(train_all)
        files = {
            "train": (directory / "train.jsonl", train),
            "validation": (directory / "validation.jsonl", validation),
            "trusted": (directory / "trusted.jsonl", sft.trusted_eval),
            "batch_heldout": (directory / "batch_heldout.jsonl", sft.batch_eval),
            "preference_train": (directory / "preference_train.jsonl", thumbs + pairs),
        }
        for path, rows in files.values():
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
        return {name: path for name, (path, _) in files.items()}


class SnapshotTables(Database):
    """`snapshots`, `snapshot_items`, `batches` and `trusted_sets`."""

    # snapshots -----------------------------------------------------------------------------
    def create_snapshot(
        self, cycle_id: str, champion_version: str | None, *, replay_fraction: float, seed: int = 0,
        replay_all: bool = False,
    ) -> Snapshot:
        """Copies the pending batch, a replay sample of trusted training data and the trusted eval set.

        With no champion, the trusted eval set is the batch's own held-out part (the first cycle
        compares with the base model there); otherwise it is the set frozen with the champion.
        """
        with self._write() as db:
            pending = db.execute(
                "SELECT ticket_id, revision, split, example_json FROM examples WHERE batch_id IS NULL"
                " ORDER BY ticket_id"
            ).fetchall()
            batch_train = [r for r in pending if r["split"] == "train"]
            batch_eval = [r for r in pending if r["split"] == "eval"]
            replay: list[sqlite3.Row] = []
            if replay_all or (replay_fraction > 0 and batch_train):
                candidates = db.execute(
                    "SELECT e.ticket_id, e.revision, e.example_json FROM examples e"
                    " JOIN batches b ON e.batch_id = b.id WHERE b.state = 'promoted' AND e.split = 'train'"
                    " ORDER BY e.ticket_id"
                ).fetchall()
                if replay_all:  # a full retrain on every trusted training example (after an erasure)
                    wanted = len(candidates)
                elif replay_fraction >= 1.0:
                    wanted = len(batch_train)
                else:
                    wanted = round(len(batch_train) * replay_fraction / (1.0 - replay_fraction))
                candidates.sort(key=lambda r: unit_hash(f"replay:{seed}:{cycle_id}:{r['ticket_id']}"))
                replay = candidates[:wanted]
            if champion_version is None:
                trusted = [(r["ticket_id"], r["revision"], r["example_json"]) for r in batch_eval]
            else:
                trusted = [
                    (r["ticket_id"], "", r["example_json"])
                    for r in db.execute(
                        "SELECT ticket_id, example_json FROM trusted_sets WHERE model_version = ?"
                        " ORDER BY ticket_id",
                        (champion_version,),
                    )
                ]
            parts = {
                "batch_train": [(r["ticket_id"], r["revision"], r["example_json"]) for r in batch_train],
                "batch_eval": [(r["ticket_id"], r["revision"], r["example_json"]) for r in batch_eval],
                "replay": [(r["ticket_id"], r["revision"], r["example_json"]) for r in replay],
                "trusted_eval": trusted,
            }
            digest = hashlib.sha256()
            for part, rows in parts.items():
                for ticket_id, revision, _ in rows:
                    digest.update(f"{part}\0{ticket_id}\0{revision}\n".encode())
            snapshot_id = f"snap-{cycle_id}-{digest.hexdigest()[:10]}"
            snapshot = Snapshot(
                id=snapshot_id,
                cycle_id=cycle_id,
                champion_version=champion_version,
                **{part: [json.loads(js) for _, _, js in rows] for part, rows in parts.items()},
            )
            db.execute(
                "INSERT INTO snapshots (id, cycle_id, champion_version, counts_json, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (snapshot_id, cycle_id, champion_version, json.dumps(snapshot.counts), utc_now()),
            )
            db.execute("UPDATE cycles SET snapshot_id = ? WHERE cycle_id = ?", (snapshot_id, cycle_id))
            db.executemany(
                "INSERT INTO snapshot_items (snapshot_id, part, ticket_id, revision, example_json)"
                " VALUES (?, ?, ?, ?, ?)",
                [(snapshot_id, part, t, rev, js) for part, rows in parts.items() for t, rev, js in rows],
            )
        return snapshot

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """The snapshot as `create_snapshot` returned it (minus anything erased since)."""
        db = self._db
        row = db.execute("SELECT cycle_id, champion_version FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown snapshot {snapshot_id}")
        snapshot = Snapshot(id=snapshot_id, cycle_id=row["cycle_id"], champion_version=row["champion_version"])
        for item in db.execute(
            "SELECT part, example_json FROM snapshot_items WHERE snapshot_id = ? ORDER BY rowid", (snapshot_id,)
        ):
            getattr(snapshot, item["part"]).append(json.loads(item["example_json"]))
        return snapshot

    def close_batch(self, snapshot_id: str, *, verdict: str, model_version: str | None) -> int:
        """Ends the snapshot's batch: `promoted`, or `rejected` (the batch is quarantined).

        Only the revisions that were snapshotted join the batch; anything stored or revised
        since stays pending for the next cycle.
        """
        if verdict not in ("promoted", "rejected"):
            raise ValueError(f"close_batch takes promoted or rejected, not {verdict!r}")
        state = "promoted" if verdict == "promoted" else "quarantined"
        with self._write() as db:
            snap = db.execute("SELECT cycle_id FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
            if snap is None:
                raise KeyError(f"unknown snapshot {snapshot_id}")
            cursor = db.execute(
                "INSERT INTO batches (cycle_id, snapshot_id, state, model_version, examples, closed_at)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (snap["cycle_id"], snapshot_id, state, model_version, utc_now()),
            )
            batch_id = cursor.lastrowid
            moved = db.execute(
                "UPDATE examples SET batch_id = ? WHERE batch_id IS NULL AND EXISTS ("
                " SELECT 1 FROM snapshot_items s WHERE s.snapshot_id = ? AND s.ticket_id = examples.ticket_id"
                " AND s.revision = examples.revision AND s.part IN ('batch_train', 'batch_eval'))",
                (batch_id, snapshot_id),
            ).rowcount
            db.execute("UPDATE batches SET examples = ? WHERE id = ?", (moved, batch_id))
        return batch_id

    def freeze_trusted_set(
        self, model_version: str, snapshot_id: str, parent_version: str | None, cap: int
    ) -> int:
        """Freezes the trusted eval set that goes with `model_version` if it becomes champion.

        It is the parent champion's set plus this snapshot's batch held-out part, capped by a
        bottom-k sample on a hash of the ticket id (a deterministic reservoir sample). With no
        parent it is the snapshot's trusted part (the first batch's held-out part).
        """
        with self._write() as db:
            rows: dict[str, str] = {}
            if parent_version is not None:
                for r in db.execute(
                    "SELECT ticket_id, example_json FROM trusted_sets WHERE model_version = ?", (parent_version,)
                ):
                    rows[r["ticket_id"]] = r["example_json"]
            for r in db.execute(
                "SELECT ticket_id, example_json FROM snapshot_items WHERE snapshot_id = ?"
                " AND part IN ('batch_eval', 'trusted_eval')",
                (snapshot_id,),
            ):
                rows[r["ticket_id"]] = r["example_json"]
            kept = sorted(rows, key=lambda t: unit_hash("trusted:" + t))[:cap]
            db.execute("DELETE FROM trusted_sets WHERE model_version = ?", (model_version,))
            db.executemany(
                "INSERT INTO trusted_sets (model_version, ticket_id, example_json) VALUES (?, ?, ?)",
                [(model_version, t, rows[t]) for t in kept],
            )
        return len(kept)

    def reopen_batch(self, snapshot_id: str, model_version: str) -> int:
        """Undoes `freeze_trusted_set` and `close_batch` for a registration of `model_version` that failed
        before it was complete: the batch's examples are pending again; returns how many."""
        with self._write() as db:
            reopened = 0
            for (batch_id,) in db.execute(
                "SELECT id FROM batches WHERE snapshot_id = ? AND model_version = ?", (snapshot_id, str(model_version))
            ).fetchall():
                reopened += db.execute("UPDATE examples SET batch_id = NULL WHERE batch_id = ?", (batch_id,)).rowcount
                db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            db.execute("DELETE FROM trusted_sets WHERE model_version = ?", (str(model_version),))
        return reopened

    def trusted_set_size(self, model_version: str) -> int:
        return self._db.execute(
            "SELECT count(*) FROM trusted_sets WHERE model_version = ?", (model_version,)
        ).fetchone()[0]

    # batches (quarantine) ------------------------------------------------------------------
    def list_batches(self) -> list[dict]:
        rows = self._db.execute(
            "SELECT id, cycle_id, snapshot_id, state, model_version, examples, closed_at, changed_at"
            " FROM batches ORDER BY id DESC"
        ).fetchall()
        return [dict(r) for r in rows]

    def release_batch(self, batch_id: int) -> int:
        """Returns a quarantined batch's examples to the pending pool (an operator's decision)."""
        return self._end_quarantine(batch_id, "released")

    def discard_batch(self, batch_id: int) -> int:
        """Deletes a quarantined batch's examples for good (an operator's decision)."""
        return self._end_quarantine(batch_id, "discarded")

    def _end_quarantine(self, batch_id: int, state: str) -> int:
        with self._write() as db:
            row = db.execute("SELECT state FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                raise KeyError(f"no batch {batch_id}; `ticketune quarantine list` shows the batches")
            if row["state"] != "quarantined":
                raise ValueError(f"batch {batch_id} is {row['state']}, not quarantined")
            if state == "released":
                n = db.execute("UPDATE examples SET batch_id = NULL WHERE batch_id = ?", (batch_id,)).rowcount
            else:
                n = db.execute("DELETE FROM examples WHERE batch_id = ?", (batch_id,)).rowcount
            db.execute("UPDATE batches SET state = ?, changed_at = ? WHERE id = ?", (state, utc_now(), batch_id))
        return n

    def batch_of_version(self, model_version: str) -> dict | None:
        """The batch closed with `model_version`: the store's half of a registered candidate."""
        row = self._db.execute(
            "SELECT id, cycle_id, snapshot_id, state FROM batches WHERE model_version = ? ORDER BY id DESC LIMIT 1",
            (str(model_version),),
        ).fetchone()
        return dict(row) if row else None
