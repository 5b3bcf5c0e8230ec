"""The store's database: the schema and its migrations, the connections (one per thread), the write
transaction, the identity key, and the OS file locks (ingest, cycle) that sit beside the database file.

The tables are used by the other modules of this package, one group each: examples.py (examples,
erasure), dedupe.py (the dedupe band table), snapshots.py (snapshots, batches, trusted sets),
journal.py (the cycle log, the champion moves' audit log).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

KEYED_MEMO_SIZE = 4096  # keyed hashes a store remembers (see Database.keyed)
IN_LIST_SIZE = 500  # values per `IN (...)` list (see Database._rows_in)

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
    [  # online probation: what happened to each version's drafts (daemon/store/online.py)
        "CREATE TABLE IF NOT EXISTS online_outcomes (ticket_id TEXT PRIMARY KEY, model_name TEXT,"
        " model_version TEXT NOT NULL, resolved_at TEXT NOT NULL, category TEXT, csat REAL,"
        " outcome TEXT NOT NULL, edit_ratio REAL, recorded_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS online_outcomes_version ON online_outcomes(model_version, resolved_at)",
        "CREATE INDEX IF NOT EXISTS online_outcomes_resolved ON online_outcomes(resolved_at)",
    ],
]


class LockBusy(RuntimeError):
    pass


class StoreFull(sqlite3.OperationalError):
    """A write failed because the store's disk (or its `store.max_size_mb` cap) is full; nothing of
    it was kept, and the same write succeeds once there is room again."""


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    )


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) for splits and bottom-k sampling."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) / float(16**15)


@contextmanager
def store_lock(store_path: Path, name: str, *, wait_seconds: float | None = None) -> Iterator[None]:
    """An OS file lock beside the store (`examples.db.cycle.lock`), held across processes. The holder
    writes who it is into the file (pid, command, since when), so that a refusal can name it.

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
                        f"{lock_holder(lock_path)} holds the {name} lock on {store_path} ({lock_path}); "
                        "wait for it to finish or stop it"
                    ) from None
                time.sleep(0.2)
        _note_holder(handle, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:300],
                                         "since": utc_now()}))
        try:
            yield
        finally:
            _note_holder(handle, "")
            fcntl.flock(handle, fcntl.LOCK_UN)


def _note_holder(handle, text: str) -> None:
    """Best effort: a full disk must not stop a lock from being taken (the holder is then just unnamed)."""
    try:  # straight to the file descriptor: a buffered write that failed would fail again at close
        os.ftruncate(handle.fileno(), 0)
        os.pwrite(handle.fileno(), text.encode("utf-8"), 0)
    except OSError:
        pass


def lock_holder(lock_path: Path) -> str:
    """Who holds a lock, as its holder wrote it: `process 4242 (ticketune run, since ...)`."""
    try:
        holder = json.loads(Path(lock_path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another ticketune process"
    command = Path(str(holder.get("command", "")).split(" ", 1)[0]).name
    rest = str(holder.get("command", "")).partition(" ")[2]
    shown = " ".join(part for part in (command, rest) if part)
    return f"process {holder['pid']} (`{shown}`, since {holder.get('since', '?')})"


class Database:
    """The SQLite database (WAL) under the store; safe to share between threads (one connection per thread)."""

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
        self._keyed_memo: dict[str, str] = {}
        self._identity_key = identity_key or self._stored_identity_key()

    def _stored_identity_key(self) -> bytes:
        """A random HMAC key kept in the store, for when `store.identity_key` is not configured."""
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'identity_key'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('identity_key', ?)", (secrets.token_hex(32),))
                row = db.execute("SELECT value FROM meta WHERE key = 'identity_key'").fetchone()
        return bytes.fromhex(row["value"])

    def keyed(self, value: str) -> str:
        """A keyed hash (HMAC-SHA256) of an identifier: matchable later, not reversible without the key.

        The last few thousand are remembered (a batch asks for each ticket's several times, and a requester
        writes often); the memo holds hashes only next to the identifiers the process is handling anyway."""
        found = self._keyed_memo.get(value)
        if found is None:
            if len(self._keyed_memo) >= KEYED_MEMO_SIZE:
                self._keyed_memo.clear()
            found = self._keyed_memo[value] = hmac.digest(self._identity_key, value.encode(), "sha256").hex()[:32]
        return found

    def _rows_in(self, query: str, values: Iterable, *before: object) -> Iterator[sqlite3.Row]:
        """The rows of `query`, whose one `IN ({})` is left open, for these values (each asked once), in a query
        per `IN_LIST_SIZE` of them; `before`: the parameters that come ahead of the list."""
        wanted = list(dict.fromkeys(values))
        for begin in range(0, len(wanted), IN_LIST_SIZE):
            chunk = wanted[begin : begin + IN_LIST_SIZE]
            yield from self._db.execute(query.format(",".join("?" * len(chunk))), [*before, *chunk])

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
