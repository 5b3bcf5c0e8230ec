"""The example store: SQLite (WAL), idempotent upserts by ticket id, deterministic splits, snapshots.

It also keeps what the cycle contract needs: batches (pending until a cycle promotes or rejects
them; rejected ones are quarantined), the trusted eval set frozen with each model version, the
cycle log, and the OS file locks (ingest, cycle) that sit beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from daemon.config import StoreConfig
from daemon.ingest.filters import band_keys, example_signature, signature_is_current
from daemon.ingest.pairs import PIPELINE_VERSION, Example

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS examples (
    ticket_id    TEXT PRIMARY KEY,
    revision     TEXT NOT NULL,
    example_json TEXT NOT NULL,
    category     TEXT,
    group_key    TEXT NOT NULL,
    split        TEXT NOT NULL CHECK (split IN ('train', 'eval')),
    batch_id     INTEGER REFERENCES batches(id),
    stored_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_batch ON examples(batch_id);
CREATE TABLE IF NOT EXISTS batches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id      TEXT NOT NULL,
    snapshot_id   TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('promoted', 'quarantined', 'released', 'discarded')),
    model_version TEXT,
    examples      INTEGER NOT NULL,
    closed_at     TEXT NOT NULL,
    changed_at    TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
    id               TEXT PRIMARY KEY,
    cycle_id         TEXT NOT NULL,
    champion_version TEXT,
    counts_json      TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_items (
    snapshot_id  TEXT NOT NULL,
    part         TEXT NOT NULL CHECK (part IN ('batch_train', 'batch_eval', 'replay', 'trusted_eval')),
    ticket_id    TEXT NOT NULL,
    revision     TEXT NOT NULL,
    example_json TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, part, ticket_id)
);
CREATE TABLE IF NOT EXISTS trusted_sets (
    model_version TEXT NOT NULL,
    ticket_id     TEXT NOT NULL,
    example_json  TEXT NOT NULL,
    PRIMARY KEY (model_version, ticket_id)
);
CREATE TABLE IF NOT EXISTS cycles (
    cycle_id      TEXT PRIMARY KEY,
    trigger       TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    verdict       TEXT,
    model_version TEXT,
    snapshot_id   TEXT,
    reasons_json  TEXT,
    metrics_json  TEXT
);
CREATE TABLE IF NOT EXISTS deletions (
    ticket_id  TEXT PRIMARY KEY,
    revision   TEXT NOT NULL,
    deleted_at TEXT NOT NULL
);
"""

# Each entry migrates the schema one version up (PRAGMA user_version); never edit a shipped entry.
MIGRATIONS: list[list[str]] = [
    [statement for statement in SCHEMA_V1.split(";") if statement.strip()],
    [
        "ALTER TABLE examples ADD COLUMN pipeline_version TEXT NOT NULL DEFAULT '1'",
        "CREATE INDEX IF NOT EXISTS examples_stored_at ON examples(stored_at)",
    ],
    ["ALTER TABLE examples ADD COLUMN quality_signature BLOB"],
    [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS example_identities (ticket_id TEXT NOT NULL, identity TEXT NOT NULL,"
        " PRIMARY KEY (ticket_id, identity))",
        "CREATE INDEX IF NOT EXISTS example_identities_identity ON example_identities(identity)",
        "CREATE TABLE IF NOT EXISTS suppressions (subject TEXT PRIMARY KEY, added_at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS erasures (id INTEGER PRIMARY KEY AUTOINCREMENT, requested_at TEXT NOT NULL,"
        " kind TEXT NOT NULL, subject TEXT NOT NULL, tickets_removed INTEGER NOT NULL,"
        " affected_versions TEXT NOT NULL, tagged_at TEXT)",
    ],
    [
        "ALTER TABLE cycles ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE cycles ADD COLUMN retryable INTEGER NOT NULL DEFAULT 0",
    ],
    [
        "CREATE TABLE IF NOT EXISTS champion_moves (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
        " action TEXT NOT NULL, version TEXT, previous TEXT, actor TEXT NOT NULL, reason TEXT NOT NULL,"
        " forced INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'abandoned')),"
        " ended_at TEXT)",
    ],
    [  # the dedupe index lives here, not in the ingest process's memory (daemon/ingest/filters.py)
        "CREATE TABLE IF NOT EXISTS dedupe_bands (band INTEGER NOT NULL, bucket INTEGER NOT NULL,"
        " ticket_id TEXT NOT NULL, PRIMARY KEY (band, bucket, ticket_id)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS dedupe_bands_ticket ON dedupe_bands(ticket_id)",
        "CREATE INDEX IF NOT EXISTS examples_exact ON examples(substr(quality_signature, 2, 16))",
        "CREATE TRIGGER IF NOT EXISTS dedupe_bands_follow_deletes AFTER DELETE ON examples"
        " BEGIN DELETE FROM dedupe_bands WHERE ticket_id = old.ticket_id; END",
    ],
]
MIN_VALIDATION_EXAMPLES = 8  # fewer make a validation loss too noisy to stop on

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

    def write_jsonl(self, directory: Path, validation_fraction: float = 0.0) -> dict[str, Path]:
        """Writes train (batch + replay, deterministically shuffled), validation, trusted and batch-held-out files.

        Validation (for early stopping) is a slice of the new batch's training part chosen by a hash
        of the ticket id, so a retry of the cycle picks the same one; replay and the eval sets never
        join it. Under MIN_VALIDATION_EXAMPLES it stays empty and everything trains.
        """
        directory.mkdir(parents=True, exist_ok=True)
        validation = [ex for ex in self.batch_train
                      if _unit_hash("validation:" + ex["ticket_id"]) < validation_fraction]
        if len(validation) < MIN_VALIDATION_EXAMPLES:
            validation = []
        held = {ex["ticket_id"] for ex in validation}
        train = sorted(
            [ex for ex in self.batch_train if ex["ticket_id"] not in held] + self.replay,
            key=lambda ex: _unit_hash(self.id + ex["ticket_id"]),
        )
        files = {
            "train": (directory / "train.jsonl", train),
            "validation": (directory / "validation.jsonl", validation),
            "trusted": (directory / "trusted.jsonl", self.trusted_eval),
            "batch_heldout": (directory / "batch_heldout.jsonl", self.batch_eval),
        }
        for path, rows in files.values():
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
        return {name: path for name, (path, _) in files.items()}


@dataclass(frozen=True)
class RetryableCycle:
    """The most recent cycle, when it failed after its snapshot in a way a retry may fix."""

    cycle_id: str
    snapshot_id: str
    attempts: int


class LockBusy(RuntimeError):
    pass


class StoreFull(sqlite3.OperationalError):
    """A write failed because the store's disk (or its `store.max_size_mb` cap) is full; nothing of
    it was kept, and the same write succeeds once there is room again."""


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) for splits and bottom-k sampling."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) / float(16**15)


@contextmanager
def store_lock(store_path: Path, name: str, *, wait_seconds: float | None = None) -> Iterator[None]:
    """An OS file lock beside the store (`examples.db.cycle.lock`), held across processes.

    `wait_seconds=None` waits forever; otherwise `LockBusy` is raised after that long.
    """
    lock_path = Path(f"{store_path}.{name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockBusy(
                        f"another ticketune process holds the {name} lock on {store_path} "
                        f"({lock_path}); wait for it to finish or stop it"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(cfg: StoreConfig) -> ExampleStore:
    key = cfg.identity_key.get_secret_value().encode() if cfg.identity_key else None
    return ExampleStore(cfg.path, cfg.eval_fraction, identity_key=key, max_size_mb=cfg.max_size_mb)


class ExampleStore:
    """SQLite example store; safe to share between threads (one connection per thread)."""

    def __init__(self, path: str | Path, eval_fraction: float = 0.2, identity_key: bytes | None = None,
                 max_size_mb: float | None = None) -> None:
        self.path = Path(path)
        self.eval_fraction = eval_fraction
        self.max_size_mb = max_size_mb
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.schema_version = self._migrate()
        self._identity_key = identity_key or self._stored_identity_key()
        self._dedupe: tuple[int, int] | None = self._stored_dedupe_layout()

    def _stored_identity_key(self) -> bytes:
        """A random HMAC key kept in the store, for when `store.identity_key` is not configured."""
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'identity_key'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('identity_key', ?)", (secrets.token_hex(32),))
                row = db.execute("SELECT value FROM meta WHERE key = 'identity_key'").fetchone()
        return bytes.fromhex(row["value"])

    def _stored_dedupe_layout(self) -> tuple[int, int] | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dedupe_layout'").fetchone()
        if row is None:
            return None
        bands, rows = row["value"].split("x")
        return int(bands), int(rows)

    def keyed(self, value: str) -> str:
        """A keyed hash (HMAC-SHA256) of an identifier: matchable later, not reversible without the key."""
        return hmac.new(self._identity_key, value.encode(), hashlib.sha256).hexdigest()[:32]

    # connections ---------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # offsets are committed right after; a write must survive
            db.execute("PRAGMA foreign_keys=ON")
            if self.max_size_mb is not None:  # SQLite keeps it at least at the current size
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {max(1, int(self.max_size_mb * 2**20) // page_size)}")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it durable, or (an error, a full disk) none of it.

        A failed COMMIT is rolled back too (a full disk can fail a statement or the COMMIT), and a
        transaction SQLite already rolled back is not rolled back twice (which would raise "no transaction
        is active" in place of the real error): the connection is always left usable. A full disk or
        `max_size_mb` cap raises `StoreFull`, which names the store.
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error says what went wrong
                raise
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                limit = f" (store.max_size_mb {self.max_size_mb:g})" if self.max_size_mb is not None else ""
                raise StoreFull(
                    f"the example store {self.path} is full{limit}: {exc}; nothing of this write was kept, "
                    "it succeeds once there is room (free disk space or raise store.max_size_mb)"
                ) from exc
            raise

    def _migrate(self) -> int:
        """Brings the schema to the newest version at open; safe when several processes open at once."""
        with self._write() as db:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this ticketune knows "
                    f"({len(MIGRATIONS)}): upgrade ticketune or use a copy of the store"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")
        return len(MIGRATIONS)

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # ingest --------------------------------------------------------------------------------
    def split_for(self, group_key: str) -> str:
        return "eval" if _unit_hash("split:" + group_key) < self.eval_fraction else "train"

    def apply(self, changes: Sequence[Example | Deletion]) -> list[str]:
        """Applies upserts and deletions in one transaction, durable when it returns.

        Outcome per change, in order: stored, revised, unchanged, stale, deleted or absent.
        """
        outcomes = []
        with self._write() as db:
            for change in changes:
                if isinstance(change, Deletion):
                    outcomes.append(self._delete(db, change.ticket_id))
                else:
                    outcomes.append(self._upsert(db, change))
        return outcomes

    def would_discard(self, example: Example) -> bool:
        """Whether `apply` would leave this example out: an erased subject, or a revision older than
        what the store holds or deleted (a redelivered record). The dedupe index must not count it."""
        return self._upsert_refusal(self._db, example) is not None

    def _upsert_refusal(self, db: sqlite3.Connection, example: Example) -> str | None:
        subjects = [self.keyed("ticket:" + example.ticket_id)] + [self.keyed(i) for i in example.identities]
        marks = ",".join("?" * len(subjects))
        if db.execute(f"SELECT 1 FROM suppressions WHERE subject IN ({marks}) LIMIT 1", subjects).fetchone():
            return OUTCOME_SUPPRESSED
        row = db.execute("SELECT revision FROM examples WHERE ticket_id = ?", (example.ticket_id,)).fetchone()
        if row is None:
            deleted = db.execute("SELECT revision FROM deletions WHERE ticket_id = ?", (example.ticket_id,)).fetchone()
            if deleted is not None and example.revision <= deleted["revision"]:
                return OUTCOME_STALE
        elif example.revision < row["revision"]:
            return OUTCOME_STALE
        return None

    def _upsert(self, db: sqlite3.Connection, example: Example) -> str:
        subjects = [self.keyed("ticket:" + example.ticket_id)] + [self.keyed(i) for i in example.identities]
        marks = ",".join("?" * len(subjects))
        if db.execute(f"SELECT 1 FROM suppressions WHERE subject IN ({marks}) LIMIT 1", subjects).fetchone():
            return OUTCOME_SUPPRESSED  # the customer asked to be forgotten: a replay must not bring it back
        row = db.execute(
            "SELECT revision, pipeline_version FROM examples WHERE ticket_id = ?", (example.ticket_id,)
        ).fetchone()
        if row is None:
            deleted = db.execute(
                "SELECT revision FROM deletions WHERE ticket_id = ?", (example.ticket_id,)
            ).fetchone()
            if deleted is not None and example.revision <= deleted["revision"]:
                return OUTCOME_STALE  # a redelivered revision of a ticket the customer had deleted
            outcome = OUTCOME_STORED
        elif example.revision == row["revision"] and row["pipeline_version"] == PIPELINE_VERSION:
            return OUTCOME_UNCHANGED
        elif example.revision < row["revision"]:
            return OUTCOME_STALE
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
                _now(),
                PIPELINE_VERSION,
                example.quality_signature,
            ),
        )
        db.execute("DELETE FROM example_identities WHERE ticket_id = ?", (example.ticket_id,))
        db.executemany(
            "INSERT OR IGNORE INTO example_identities (ticket_id, identity) VALUES (?, ?)",
            [(example.ticket_id, self.keyed(identity)) for identity in example.identities],
        )
        if self._dedupe is not None:
            db.execute("DELETE FROM dedupe_bands WHERE ticket_id = ?", (example.ticket_id,))
            self._index_bands(db, example.ticket_id, example.quality_signature)
        return outcome

    def _index_bands(self, db: sqlite3.Connection, ticket_id: str, signature: bytes | None) -> None:
        keys = band_keys(signature, *self._dedupe) if signature is not None and self._dedupe else None
        if keys:
            db.executemany("INSERT OR IGNORE INTO dedupe_bands (band, bucket, ticket_id) VALUES (?, ?, ?)",
                           [(band, key, ticket_id) for band, key in enumerate(keys)])

    def _delete(self, db: sqlite3.Connection, ticket_id: str) -> str:
        """Deletes a ticket everywhere it is kept, snapshots and trusted sets included."""
        row = db.execute("SELECT revision FROM examples WHERE ticket_id = ?", (ticket_id,)).fetchone()
        db.execute("DELETE FROM examples WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM snapshot_items WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM trusted_sets WHERE ticket_id = ?", (ticket_id,))
        db.execute("DELETE FROM example_identities WHERE ticket_id = ?", (ticket_id,))
        revision = row["revision"] if row is not None else ""
        db.execute(
            "INSERT INTO deletions (ticket_id, revision, deleted_at) VALUES (?, ?, ?)"
            " ON CONFLICT(ticket_id) DO UPDATE SET revision = max(revision, excluded.revision),"
            " deleted_at = excluded.deleted_at",
            (ticket_id, revision, _now()),
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
            db.execute("INSERT OR IGNORE INTO suppressions (subject, added_at) VALUES (?, ?)", (subject, _now()))
            for t in tickets:
                db.execute("INSERT OR IGNORE INTO suppressions (subject, added_at) VALUES (?, ?)",
                           (self.keyed("ticket:" + t), _now()))
            cursor = db.execute(
                "INSERT INTO erasures (requested_at, kind, subject, tickets_removed, affected_versions, tagged_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (_now(), kind, subject, removed, json.dumps(affected), None if affected else _now()),
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
            db.execute("UPDATE erasures SET tagged_at = ? WHERE id = ?", (_now(), erasure_id))

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

    def quality_signatures(self, keep: bool = True) -> list[tuple[str, bytes]]:
        """(ticket_id, dedupe signature) of every stored example, computing missing or outdated ones
        (stored in their rows and their dedupe bands); `keep=False` only computes them and returns []."""
        found: list[tuple[str, bytes]] = []
        computed: dict[str, bytes] = {}
        cursor = self._db.execute("SELECT ticket_id, quality_signature, example_json FROM examples")
        while chunk := cursor.fetchmany(5000):
            for r in chunk:
                signature = r["quality_signature"]
                if not signature_is_current(signature):
                    messages = json.loads(r["example_json"])["messages"]
                    signature = computed[r["ticket_id"]] = example_signature(
                        Example(ticket_id=r["ticket_id"], revision="", messages=messages))
                if keep:
                    found.append((r["ticket_id"], signature))
        if computed:
            with self._write() as db:
                db.executemany(
                    "UPDATE examples SET quality_signature = ? WHERE ticket_id = ?",
                    [(sig, ticket_id) for ticket_id, sig in computed.items()],
                )
                for ticket_id, signature in computed.items():
                    db.execute("DELETE FROM dedupe_bands WHERE ticket_id = ?", (ticket_id,))
                    self._index_bands(db, ticket_id, signature)
        return found

    # the dedupe index (daemon/ingest/filters.py) ------------------------------------------------------
    def dedupe_layout(self, bands: int, rows: int) -> int:
        """Makes the band table match this LSH layout (a new near-duplicate threshold rebuilds it, as
        does a store that has none yet) and returns how many examples it indexes. Missing or outdated
        signatures are computed first; the table is kept up to date by every write after this."""
        self.quality_signatures(keep=False)
        layout = f"{bands}x{rows}"
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'dedupe_layout'").fetchone()
            if row is None or row["value"] != layout:
                self._dedupe = (bands, rows)
                db.execute("DELETE FROM dedupe_bands")
                cursor = db.execute("SELECT ticket_id, quality_signature FROM examples")
                while chunk := cursor.fetchmany(5000):
                    for item in chunk:
                        self._index_bands(db, item["ticket_id"], item["quality_signature"])
                db.execute("INSERT INTO meta (key, value) VALUES ('dedupe_layout', ?)"
                           " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (layout,))
            self._dedupe = (bands, rows)
            return db.execute("SELECT count(DISTINCT ticket_id) FROM dedupe_bands").fetchone()[0]

    def exact_owners(self, exact: bytes) -> set[str]:
        """Tickets whose stored conversation has this exact hash (bytes 2 to 17 of the signature)."""
        rows = self._db.execute(
            "SELECT ticket_id FROM examples WHERE substr(quality_signature, 2, 16) = ?", (exact,)).fetchall()
        return {row[0] for row in rows}

    def band_candidates(self, keys: list[int]) -> set[str]:
        """Tickets sharing at least one LSH bucket with these band keys (one per band, in order)."""
        if not keys:
            return set()
        # one primary-key search per band (SQLite scans the whole table for a row-value IN (VALUES ...))
        where = " OR ".join("(band = ? AND bucket = ?)" for _ in keys)
        values = [v for band, key in enumerate(keys) for v in (band, key)]
        rows = self._db.execute(f"SELECT DISTINCT ticket_id FROM dedupe_bands WHERE {where}", values).fetchall()
        return {row[0] for row in rows}

    def signatures_of(self, ticket_ids) -> dict[str, bytes]:
        ids = list(ticket_ids)
        found: dict[str, bytes] = {}
        for begin in range(0, len(ids), 500):
            chunk = ids[begin:begin + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT ticket_id, quality_signature FROM examples WHERE ticket_id IN ({marks})"
                " AND quality_signature IS NOT NULL", chunk
            ):
                found[row[0]] = row[1]
        return found

    def pending_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM examples WHERE batch_id IS NULL").fetchone()[0]

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
                candidates.sort(key=lambda r: _unit_hash(f"replay:{seed}:{cycle_id}:{r['ticket_id']}"))
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
                (snapshot_id, cycle_id, champion_version, json.dumps(snapshot.counts), _now()),
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
                (snap["cycle_id"], snapshot_id, state, model_version, _now()),
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
            kept = sorted(rows, key=lambda t: _unit_hash("trusted:" + t))[:cap]
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
            db.execute("UPDATE batches SET state = ?, changed_at = ? WHERE id = ?", (state, _now(), batch_id))
        return n

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
                (cycle_id, trigger, _now()),
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
                (_now(), verdict, model_version, snapshot_id, json.dumps(reasons), json.dumps(metrics),
                 int(retryable and verdict == "failed"), cycle_id),
            )

    def retryable_cycle(self) -> RetryableCycle | None:
        """The most recent cycle if it failed retryably after its snapshot, its batch is still open
        and nothing of its snapshot was erased since; the caller checks the rest (files, champion,
        attempts left)."""
        db = self._db
        row = db.execute(
            "SELECT cycle_id, verdict, retryable, snapshot_id, attempts FROM cycles"
            " ORDER BY started_at DESC, rowid DESC LIMIT 1"
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

    def cycles(self, limit: int = 20) -> list[dict]:
        rows = self._db.execute(
            "SELECT * FROM cycles ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)
        ).fetchall()
        result = []
        for r in rows:
            item = dict(r)
            item["reasons"] = json.loads(item.pop("reasons_json") or "[]")
            item["metrics"] = json.loads(item.pop("metrics_json") or "{}")
            result.append(item)
        return result

    def unfinished_cycles(self) -> list[str]:
        """Cycles a crash left without an end (before `fail_unfinished_cycles` marks them)."""
        return [r[0] for r in self._db.execute("SELECT cycle_id FROM cycles WHERE ended_at IS NULL")]

    def batch_of_version(self, model_version: str) -> dict | None:
        """The batch closed with `model_version`: the store's half of a registered candidate."""
        row = self._db.execute(
            "SELECT id, cycle_id, snapshot_id, state FROM batches WHERE model_version = ? ORDER BY id DESC LIMIT 1",
            (str(model_version),),
        ).fetchone()
        return dict(row) if row else None

    # champion moves (the audit log) ---------------------------------------------------------
    def begin_move(self, action: str, version: str | None, previous: str | None, *, actor: str, reason: str,
                   forced: bool = False, state: str = "pending") -> int:
        """Records an alias move before it is made (`pending`), so that a watcher never mistakes it
        for an outside move and a crash halfway is visible; `end_move` settles it."""
        with self._write() as db:
            return db.execute(
                "INSERT INTO champion_moves (at, action, version, previous, actor, reason, forced, state, ended_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_now(), action, version, previous, actor, reason, int(forced), state,
                 None if state == "pending" else _now()),
            ).lastrowid

    def end_move(self, move_id: int, state: str) -> None:
        if state not in ("done", "abandoned"):
            raise ValueError(f"a move ends done or abandoned, not {state!r}")
        with self._write() as db:
            db.execute("UPDATE champion_moves SET state = ?, ended_at = ? WHERE id = ?", (state, _now(), move_id))

    def pending_moves(self) -> list[dict]:
        rows = self._db.execute("SELECT * FROM champion_moves WHERE state = 'pending' ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def known_champion(self) -> tuple[bool, str | None]:
        """(whether any move was recorded, the champion the last completed move left)."""
        row = self._db.execute(
            "SELECT version FROM champion_moves WHERE state = 'done' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return (row is not None, row["version"] if row else None)

    def champion_moves(self, limit: int = 100) -> list[dict]:
        """The audit log of alias moves, newest first."""
        rows = self._db.execute(
            "SELECT id, at, action, version, previous, actor, reason, forced, state FROM champion_moves"
            " ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall()
        return [dict(r) | {"forced": bool(r["forced"])} for r in rows]

    def fail_unfinished_cycles(self, reason: str) -> int:
        """Marks cycles that a crash left without an end as failed, and retryable (run at service start)."""
        with self._write() as db:
            return db.execute(
                "UPDATE cycles SET ended_at = ?, verdict = 'failed', reasons_json = ?, retryable = 1"
                " WHERE ended_at IS NULL",
                (_now(), json.dumps([reason])),
            ).rowcount
