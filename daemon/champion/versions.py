"""A version's registration, abandonment and erasure tagging, and the `history` view of all of them.

A cycle registers its candidate `registering` (`register_candidate`), the store records the
decision, then the version is tagged `complete` (`complete_registration`); one whose registration
was cut short is settled by `settle_registration`: complete when the store holds its decision,
otherwise abandoned, never promotable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from daemon import metrics
from daemon.champion import rules
from daemon.champion.vocabulary import (
    STATE_ABANDONED,
    STATE_COMPLETE,
    STATE_REGISTERING,
    TAG_ABANDONED_REASON,
    TAG_BASE_FINGERPRINT,
    TAG_ERASURE_REQUESTED_AT,
    TAG_METRICS,
    TAG_OBJECTIVE,
    TAG_PROMOTED_AT,
    TAG_REASONS,
    TAG_STATE,
    TAG_TRAINED_ON_ERASED,
    TAG_VERDICT,
    VERDICT_ABANDONED,
)
from daemon.store import ExampleStore

ALL_MOVES = -1  # `ExampleStore.champion_moves(limit=-1)`: SQLite reads a negative LIMIT as no limit


class VersionRegistry(Protocol):
    """What a version's life needs from the registry (connectors/registry.py `AdapterRegistry`)."""

    def register_candidate(self, run_id: str, adapter_dir: Path, tags: Mapping[str, Any]) -> str: ...
    def set_version_tags(self, version: str, tags: Mapping[str, Any]) -> None: ...
    def list_versions(self) -> list[dict]: ...


def register_candidate(registry: VersionRegistry, run_id: str, adapter_dir: Path, tags: Mapping[str, Any]) -> str:
    """Registers the adapter of a cycle's run as a new version, `registering` until its decision is durable."""
    return registry.register_candidate(run_id, adapter_dir, {**tags, TAG_STATE: STATE_REGISTERING})


def complete_registration(registry: VersionRegistry, version: str, tags: Mapping[str, Any]) -> None:
    """The store holds the version's decision: it is complete (promotable by its verdict), with `tags`."""
    registry.set_version_tags(version, {**tags, TAG_STATE: STATE_COMPLETE})


def settle_registration(store: ExampleStore, registry: VersionRegistry, version: str, cycle_id: str | None,
                        why: str = "its registration was cut short (the service stopped, or MLflow went away)",
                        ) -> str:
    """A version left `registering`: complete when the store holds its decision (a closed batch),
    otherwise abandoned (never promotable); `why` says how its registration was cut short."""
    if store.batch_of_version(version) is not None:
        registry.set_version_tags(version, {TAG_STATE: STATE_COMPLETE})
        return f"version {version} (cycle {cycle_id}): the store had its decision; registration completed"
    registry.set_version_tags(version, {
        TAG_STATE: STATE_ABANDONED, TAG_VERDICT: VERDICT_ABANDONED,
        TAG_ABANDONED_REASON: f"{why}; its batch stayed pending",
    })
    return f"version {version} (cycle {cycle_id}): half-registered, marked abandoned (never promotable)"


def tag_erased_versions(store: ExampleStore, registry: VersionRegistry) -> int:
    """Tags the model versions trained on erased examples; returns how many erasures are still pending."""
    pending = store.pending_erasures()
    for erasure in pending:
        for version in erasure["affected_versions"]:
            registry.set_version_tags(version, {
                TAG_TRAINED_ON_ERASED: "true",
                TAG_ERASURE_REQUESTED_AT: erasure["requested_at"],
            })
        store.mark_erasure_tagged(erasure["erasure_id"])
    left = len(store.pending_erasures())
    metrics.ERASURES_PENDING.set(left)
    return left


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def history(registry: VersionRegistry, store: ExampleStore | None = None) -> list[dict]:
    """Every version, newest first, as `ticketune history --json` prints it; `champion_since` comes
    from the store's audit log (None without a store, or when the log has no move to the champion)."""
    moves = list(reversed(store.champion_moves(limit=ALL_MOVES))) if store is not None else []
    rows = []
    for row in registry.list_versions():
        tags = row.get("tags") or {}
        rows.append({
            "version": row["version"],
            "verdict": tags.get(TAG_VERDICT),
            "champion": row["champion"],
            "champion_since": rules.champion_since(moves, row["version"]) if row["champion"] else None,
            "created_at": row.get("created_at"),
            "state": rules.version_state(tags),
            "base_model_fingerprint": tags.get(TAG_BASE_FINGERPRINT),
            "objective": tags.get(TAG_OBJECTIVE) or "sft",  # versions from before the tag were all sft
            "promoted_at": tags.get(TAG_PROMOTED_AT),
            "metrics": _loads(tags.get(TAG_METRICS), {}),
            "reasons": _loads(tags.get(TAG_REASONS), []),
            "run_id": row.get("run_id"),
            "tags": dict(tags),
        })
    return rows
