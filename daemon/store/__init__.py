"""The example store: SQLite (WAL), idempotent upserts by ticket id, deterministic splits, snapshots.

It also keeps what the cycle contract needs: batches (pending until a cycle promotes or rejects
them; rejected ones are quarantined), the trusted eval set frozen with each model version, the
cycle log, and the OS file locks (ingest, cycle) that sit beside the database file.

One `ExampleStore` over one database; each module holds one group of its tables:

- db.py: schema and migrations, connections and the write transaction, identity key, file locks
- examples.py: examples, deletions and erasure (`apply`, `forget`, retention, the reads)
- dedupe.py: the dedupe band table and signature lookups (the keys come from daemon/ingest/filters.py)
- snapshots.py: snapshots, batches (quarantine), trusted eval sets
- journal.py: the cycle log and the audit log of champion moves
- online.py: per-version outcomes of served drafts, for online probation
"""

from __future__ import annotations

from daemon.config import StoreConfig
from daemon.store.db import MIGRATIONS, SCHEMA_V1, Database, LockBusy, StoreFull, lock_holder, store_lock
from daemon.store.dedupe import DedupeTables
from daemon.store.examples import (
    OUTCOME_ABSENT,
    OUTCOME_DELETED,
    OUTCOME_REVISED,
    OUTCOME_STALE,
    OUTCOME_STORED,
    OUTCOME_SUPPRESSED,
    OUTCOME_UNCHANGED,
    Deletion,
    ExampleTables,
)
from daemon.store.journal import JournalTables, RetryableCycle
from daemon.store.online import OnlineTables, OutcomeRow
from daemon.store.snapshots import MIN_VALIDATION_EXAMPLES, Snapshot, SnapshotTables

__all__ = [
    "MIGRATIONS",
    "MIN_VALIDATION_EXAMPLES",
    "OUTCOME_ABSENT",
    "OUTCOME_DELETED",
    "OUTCOME_REVISED",
    "OUTCOME_STALE",
    "OUTCOME_STORED",
    "OUTCOME_SUPPRESSED",
    "OUTCOME_UNCHANGED",
    "OutcomeRow",
    "SCHEMA_V1",
    "Database",
    "Deletion",
    "ExampleStore",
    "LockBusy",
    "RetryableCycle",
    "Snapshot",
    "StoreFull",
    "open_store",
    "lock_holder",
    "store_lock",
]


class ExampleStore(ExampleTables, DedupeTables, SnapshotTables, JournalTables, OnlineTables):
    """SQLite example store; safe to share between threads (one connection per thread)."""


def open_store(cfg: StoreConfig) -> ExampleStore:
    key = cfg.identity_key.get_secret_value().encode() if cfg.identity_key else None
    return ExampleStore(cfg.path, cfg.eval_fraction, identity_key=key, max_size_mb=cfg.max_size_mb)
