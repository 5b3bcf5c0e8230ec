"""Every move of the champion alias, wherever it comes from, recorded the same way.

The cycle's promotions, `ticketune promote|approve|rollback`, the admin API and moves made outside
ticketune (an operator moving the alias in the MLflow UI) all end here: an audit row in the store
(who, when, why, forced or not), tags on the version and the registry's event log, the serving
targets told, the metrics updated. A move is written to the audit log as `pending` before the alias
moves, so a watcher never mistakes it for an outside move and a crash halfway shows; `reconcile()`
settles what a crash left, including half-registered versions, before the service starts work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from daemon import metrics
from daemon.store import ExampleStore

log = logging.getLogger("ticketune.champion")

TAG_VERDICT = "ticketune.verdict"
TAG_STATE = "ticketune.state"
TAG_CYCLE_ID = "ticketune.cycle_id"
TAG_PARENT = "ticketune.parent_champion"
TAG_PROMOTED_AT = "ticketune.promoted_at"
TAG_REASONS = "ticketune.reasons"
TAG_METRICS = "ticketune.metrics"
PROMOTED, REJECTED, AWAITING_APPROVAL, ABANDONED = "promoted", "rejected", "awaiting_approval", "abandoned"
REGISTERING, COMPLETE = "registering", "complete"
OUTSIDE_ACTOR = "outside ticketune"
PENDING_MOVE_GRACE_S = 120.0  # a pending audit row younger than this is a move under way in another process


class AliasRegistry(Protocol):
    """What the keeper needs from the registry (connectors/registry.py `AdapterRegistry`)."""

    def champion_version(self) -> str | None: ...
    def get_version_tags(self, version: str) -> dict[str, str]: ...
    def set_version_tags(self, version: str, tags: dict[str, str]) -> None: ...
    def check_promotable(self, version: str, *, force: bool = False) -> None: ...
    def promote(self, version: str, *, reason: str, force: bool = False, actor: str = "cycle") -> str | None: ...
    def rollback_target(self, to_version: str | None = None, *, force: bool = False) -> tuple[str, str]: ...
    def rollback(self, to_version: str | None = None, *, reason: str, actor: str,
                 force: bool = False) -> tuple[str | None, str]: ...
    def note_outside_move(self, version: str | None, previous: str | None, *, reason: str, forced: bool) -> None: ...
    def history(self) -> list[dict]: ...


class ServingTargets(Protocol):
    def promoted(self, version: str, previous: str | None, *, reason: str, actor: str,
                 forced: bool = False) -> dict[str, str]: ...
    def rolled_back(self, version: str, previous: str | None, *, reason: str, actor: str) -> dict[str, str]: ...


class ApprovalError(ValueError):
    """The version is not awaiting approval (the message says what it is)."""


@dataclass
class Move:
    action: str  # promote | approve | rollback | outside_move
    previous: str | None
    current: str | None
    moved: bool = True
    forced: bool = False
    serving: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"action": self.action, "from": self.previous, "to": self.current, "moved": self.moved,
                "forced": self.forced, "serving": self.serving}


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age_seconds(iso: str) -> float:
    try:
        return time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


class ChampionKeeper:
    """Moves and watches the champion alias of one registered model for one store; thread-safe."""

    def __init__(self, store: ExampleStore, registry: AliasRegistry, serving: ServingTargets | None = None) -> None:
        self.store = store
        self.registry = registry
        self.serving = serving
        self._lock = threading.RLock()

    # ---- moves ---------------------------------------------------------------------------

    def promote(self, version: str, *, reason: str, actor: str, force: bool = False, action: str = "promote") -> Move:
        """Makes `version` the champion (refused for a rejected version unless `force`, and for an
        incomplete one always); promoting the champion again changes nothing."""
        version = str(version)
        with self._lock:
            self.registry.check_promotable(version, force=force)  # refusals are not moves: nothing is written
            previous = self.registry.champion_version()
            if previous == version:
                return Move(action, previous, version, moved=False)
            with self._audited(action, version, previous, actor=actor, reason=reason, forced=force):
                self.registry.promote(version, reason=reason, force=force, actor=actor)
        metrics.CHAMPION_MOVES.labels(action=action).inc()
        log.info("champion %s -> %s (%s by %s%s)", previous, version, action, actor, ", forced" if force else "")
        serving = self.serving.promoted(version, previous, reason=reason, actor=actor, forced=force) \
            if self.serving else {}
        self.refresh_gauges()
        return Move(action, previous, version, forced=force, serving=serving)

    def approve(self, version: str, *, reason: str, actor: str) -> Move:
        """Approves a candidate that passed the gate under `gate.approval: manual` and promotes it."""
        version = str(version)
        with self._lock:
            tags = self.registry.get_version_tags(version)
            verdict = tags.get(TAG_VERDICT)
            if verdict == PROMOTED and tags.get("ticketune.approved_by"):  # approved before (a repeat, or a crash
                return self.promote(version, reason=reason, actor=actor, action="approve")  # before the move)
            if verdict != AWAITING_APPROVAL:
                raise ApprovalError(
                    f"version {version} is {verdict or 'not judged'}, not awaiting approval; "
                    + ("`ticketune promote --force` overrides the gate." if verdict == REJECTED
                       else "only a candidate that passed the gate under gate.approval: manual waits for it.")
                )
            self.registry.set_version_tags(version, {
                "ticketune.approved_by": actor, "ticketune.approved_at": _now_iso(),
                "ticketune.approval_reason": reason, TAG_VERDICT: PROMOTED,
            })
            return self.promote(version, reason=reason, actor=actor, action="approve")

    def rollback(self, to_version: str | None = None, *, reason: str, actor: str, force: bool = False) -> Move:
        """Moves the champion back to the previous champion, or to `to_version`."""
        with self._lock:
            if to_version is not None and self.registry.champion_version() == str(to_version):
                return Move("rollback", str(to_version), str(to_version), moved=False)  # a repeat: already there
            current, target = self.registry.rollback_target(to_version, force=force)
            force = force or self.registry.get_version_tags(target).get(TAG_VERDICT) == REJECTED  # recorded as such
            with self._audited("rollback", target, current, actor=actor, reason=reason, forced=force):
                self.registry.rollback(target, reason=reason, actor=actor, force=force)
        metrics.CHAMPION_MOVES.labels(action="rollback").inc()
        log.info("champion rolled back %s -> %s (by %s)", current, target, actor)
        serving = self.serving.rolled_back(target, current, reason=reason, actor=actor) if self.serving else {}
        self.refresh_gauges()
        return Move("rollback", current, target, forced=force, serving=serving)

    @contextmanager
    def _audited(self, action: str, version: str, previous: str | None, *, actor: str, reason: str,
                 forced: bool) -> Iterator[None]:
        """The audit row around one alias move: `pending` before it, `done` after, `abandoned` if it raised."""
        move_id = self.store.begin_move(action, version, previous, actor=actor, reason=reason, forced=forced)
        try:
            yield
        except Exception:
            self.store.end_move(move_id, "abandoned")
            raise
        self.store.end_move(move_id, "done")

    # ---- watching ------------------------------------------------------------------------

    def watch_once(self) -> Move | None:
        """Compares the alias with the last move ticketune recorded; an outside move (the MLflow UI)
        is recorded and handled like ticketune's own rollback. Returns the move, if there was one."""
        with self._lock:
            champion = self.registry.champion_version()
            if self._settle_pending(champion, grace_s=PENDING_MOVE_GRACE_S):
                return None  # a move is under way in another process (the CLI): look again next time
            recorded, known = self.store.known_champion()
            if not recorded:  # the first look at this store: what is there now is the starting point
                if champion is not None:
                    self.store.begin_move("observed", champion, None, actor="ticketune", state="done",
                                          reason="the champion when ticketune first watched the alias")
                self.refresh_gauges()
                return None
            if champion == known:
                return None
            return self._outside_move(champion, known)

    def _outside_move(self, champion: str | None, known: str | None) -> Move:
        tags = self.registry.get_version_tags(champion) if champion is not None else {}
        verdict = tags.get(TAG_VERDICT)
        forced = champion is not None and verdict not in (PROMOTED, AWAITING_APPROVAL)
        reason = (f"alias moved outside ticketune (MLflow UI or API) from version {known or 'none'} to "
                  f"{champion or 'none'}" + (f"; the gate's verdict on it: {verdict or 'none'}" if forced else ""))
        self.store.begin_move("outside_move", champion, known, actor=OUTSIDE_ACTOR, reason=reason, forced=forced,
                              state="done")
        if champion is not None:
            if verdict == AWAITING_APPROVAL:  # moving a waiting candidate is the operator's approval
                self.registry.set_version_tags(champion, {
                    "ticketune.approved_by": OUTSIDE_ACTOR, "ticketune.approved_at": _now_iso(), TAG_VERDICT: PROMOTED,
                })
            self.registry.note_outside_move(champion, known, reason=reason, forced=forced)
        metrics.OUTSIDE_MOVES.labels(gate="failed" if forced else "passed").inc()
        metrics.CHAMPION_MOVES.labels(action="outside_move").inc()
        if forced:
            log.warning("%s: honoured as the operator's choice and recorded as forced", reason)
        else:
            log.info("%s", reason)
        serving: dict[str, str] = {}
        if champion is None:
            log.warning("the champion alias was removed outside ticketune; serving keeps what it has")
        elif self.serving is not None:
            older = known is not None and champion.isdigit() and known.isdigit() and int(champion) < int(known)
            serving = (self.serving.rolled_back(champion, known, reason=reason, actor=OUTSIDE_ACTOR) if older
                       else self.serving.promoted(champion, known, reason=reason, actor=OUTSIDE_ACTOR, forced=forced))
        self.refresh_gauges()
        return Move("outside_move", known, champion, forced=forced, serving=serving)

    def _settle_pending(self, champion: str | None, *, grace_s: float) -> bool:
        """Ends pending audit rows older than `grace_s` by what the alias shows; True while a younger
        one remains (a move in flight)."""
        in_flight = False
        for move in self.store.pending_moves():
            if _age_seconds(move["at"]) < grace_s:
                in_flight = True
                continue
            self.store.end_move(move["id"], "done" if move["version"] == champion else "abandoned")
        return in_flight

    # ---- after a crash -------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Settles what a crash left halfway; returns one line per repair. Run before any cycle starts.

        - audit rows left pending: done if the alias shows the move, else abandoned;
        - versions left `registering`: complete when the store closed their batch (the crash came
          after the decision was durable), otherwise abandoned: never promotable;
        - a complete version whose cycle did not finish: the cycle row gets its verdict, and a
          promotion the crash interrupted is completed if the champion has not moved since.
        """
        notes: list[str] = []
        with self._lock:
            champion = self.registry.champion_version()
            for move in self.store.pending_moves():
                state = "done" if move["version"] == champion else "abandoned"
                self.store.end_move(move["id"], state)
                notes.append(f"audit row {move['id']} ({move['action']} to {move['version']}) settled as {state}")
            unfinished = set(self.store.unfinished_cycles())
            for row in self.registry.history():
                tags = row.get("tags") or {}
                version, cycle_id = row["version"], tags.get(TAG_CYCLE_ID)
                if tags.get(TAG_STATE) == REGISTERING:
                    notes.append(self.settle_registration(version, cycle_id))
                    tags = self.registry.get_version_tags(version)
                if cycle_id in unfinished and tags.get(TAG_STATE, COMPLETE) == COMPLETE:
                    notes.extend(self._finish_interrupted_cycle(version, cycle_id, tags, champion))
                    unfinished.discard(cycle_id)
        for note in notes:
            log.warning("reconcile: %s", note)
        self.refresh_gauges()
        return notes

    def settle_registrations(self) -> list[str]:
        """Settles the versions left `registering` by a cycle that ended (failed: MLflow went away
        mid-registration), as `reconcile` does; a cycle runs it at its start, under the cycle lock, so
        none of them is being registered right now. One whose cycle a crash left unfinished is left to
        `reconcile` at the next start, which finishes that cycle too."""
        notes: list[str] = []
        with self._lock:
            unfinished = set(self.store.unfinished_cycles())
            for row in self.registry.history():
                tags = row.get("tags") or {}
                if tags.get(TAG_STATE) == REGISTERING and tags.get(TAG_CYCLE_ID) not in unfinished:
                    notes.append(self.settle_registration(row["version"], tags.get(TAG_CYCLE_ID)))
        for note in notes:
            log.warning("settled: %s", note)
        return notes

    def settle_registration(self, version: str, cycle_id: str | None,
                            why: str = "its registration was cut short (the service stopped, or MLflow went away)",
                            ) -> str:
        """A version left `registering`: complete when the store holds its decision (a closed batch),
        otherwise abandoned (never promotable); `why` says how its registration was cut short."""
        batch = self.store.batch_of_version(version)
        if batch is not None:
            self.registry.set_version_tags(version, {TAG_STATE: COMPLETE})
            return f"version {version} (cycle {cycle_id}): the store had its decision; registration completed"
        self.registry.set_version_tags(version, {
            TAG_STATE: ABANDONED, TAG_VERDICT: ABANDONED,
            "ticketune.abandoned_reason": f"{why}; its batch stayed pending",
        })
        return f"version {version} (cycle {cycle_id}): half-registered, marked abandoned (never promotable)"

    def _finish_interrupted_cycle(self, version: str, cycle_id: str, tags: dict, champion: str | None) -> list[str]:
        batch = self.store.batch_of_version(version)
        verdict = tags.get(TAG_VERDICT) or "failed"
        notes = []
        try:
            reasons = json.loads(tags.get(TAG_REASONS) or "[]")
            numbers = json.loads(tags.get(TAG_METRICS) or "{}")
        except ValueError:
            reasons, numbers = [], {}
        self.store.finish_cycle(
            cycle_id, verdict=verdict, model_version=version, snapshot_id=batch["snapshot_id"] if batch else None,
            reasons=[*reasons, "note: finished by the startup reconciliation after an interruption"], metrics=numbers,
        )
        notes.append(f"cycle {cycle_id} recorded as {verdict} with version {version}")
        parent = tags.get(TAG_PARENT) or None
        if verdict == PROMOTED and not tags.get(TAG_PROMOTED_AT) and champion != version:
            if champion == parent:
                self.promote(version, reason=f"completing the promotion of cycle {cycle_id} after a restart",
                             actor="ticketune")
                notes.append(f"version {version}: its interrupted promotion completed")
            else:
                notes.append(f"version {version}: not promoted, the champion moved to {champion} since")
        return notes

    # ---- gauges --------------------------------------------------------------------------

    def refresh_gauges(self) -> None:
        """Champion version, whether it failed the gate (an alert), candidates awaiting approval."""
        try:
            champion = self.registry.champion_version()
            rows = self.registry.history()
        except Exception as exc:  # best effort: the registry's outage shows elsewhere
            log.debug("champion gauges not refreshed: %s", exc)
            return
        metrics.CHAMPION_VERSION.set(float(champion) if champion and champion.isdigit() else 0)
        current = next((row for row in rows if row["version"] == champion), None)
        failed_gate = current is not None and (current.get("tags") or {}).get(TAG_VERDICT) not in (PROMOTED, None)
        metrics.CHAMPION_FAILED_GATE.set(1 if failed_gate else 0)
        metrics.AWAITING_APPROVAL.set(sum(1 for row in rows if row.get("verdict") == AWAITING_APPROVAL))
