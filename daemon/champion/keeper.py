"""Every move of the champion alias, wherever it comes from, recorded the same way.

The cycle's promotions, `ticketune promote|approve|rollback`, the admin API and moves made outside
ticketune (an operator moving the alias in the MLflow UI) all end here: an audit row in the store
(who, when, why, forced or not), tags on the version, the serving targets told, the metrics
updated; the audit log is also where a rollback finds its target (daemon/champion/rules.py).
A move is written to the audit log as `pending` before the alias moves, so a watcher never
mistakes it for an outside move and a crash halfway shows; `reconcile()` settles what a crash
left, including half-registered versions, before the service starts work.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from daemon import metrics
from daemon.champion import rules, versions
from daemon.champion.rules import ApprovalError, NoChampionError, PromotionRefusedError
from daemon.champion.vocabulary import (
    ACTION_APPROVE,
    ACTION_OBSERVED,
    ACTION_OUTSIDE_MOVE,
    ACTION_PROMOTE,
    ACTION_ROLLBACK,
    COUNTED_ACTIONS,
    OUTSIDE_ACTOR,
    STATE_COMPLETE,
    STATE_REGISTERING,
    TAG_APPROVAL_REASON,
    TAG_APPROVED_AT,
    TAG_APPROVED_BY,
    TAG_CYCLE_ID,
    TAG_METRICS,
    TAG_PARENT,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_PROMOTION_FORCED,
    TAG_PROMOTION_REASON,
    TAG_REASONS,
    TAG_ROLLBACK_REASON,
    TAG_ROLLED_BACK_AT,
    TAG_STATE,
    TAG_VERDICT,
    VERDICT_AWAITING_APPROVAL,
    VERDICT_FAILED,
    VERDICT_PROMOTED,
)
from daemon.store import ExampleStore

__all__ = ["ApprovalError", "ChampionKeeper", "Move", "NoChampionError", "PromotionRefusedError"]

log = logging.getLogger("ticketune.champion")

PENDING_MOVE_GRACE_S = 120.0  # a pending audit row younger than this is a move under way in another process
OUTSIDE_GATE_LABELS = ("passed", "failed")  # outside_alias_moves_total's `gate`, indexed by "recorded as forced"


class AliasRegistry(Protocol):
    """What the keeper needs from the registry (connectors/registry.py `AdapterRegistry`)."""

    model_name: str
    champion_alias: str

    def champion_version(self) -> str | None: ...
    def set_champion(self, version: str) -> None: ...
    def get_version_tags(self, version: str) -> dict[str, str]: ...
    def set_version_tags(self, version: str, tags: dict[str, str]) -> None: ...
    def register_candidate(self, run_id: str, adapter_dir, tags) -> str: ...
    def list_versions(self) -> list[dict]: ...


class ServingTargets(Protocol):
    def promoted(self, version: str, previous: str | None, *, reason: str, actor: str,
                 forced: bool = False) -> dict[str, str]: ...
    def rolled_back(self, version: str, previous: str | None, *, reason: str, actor: str) -> dict[str, str]: ...


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
        for action in COUNTED_ACTIONS:  # every known series from the start: a missing one is no data, not 0
            metrics.CHAMPION_MOVES.labels(action=action)
        for gate in OUTSIDE_GATE_LABELS:
            metrics.OUTSIDE_MOVES.labels(gate=gate)

    # ---- moves ---------------------------------------------------------------------------

    def promote(self, version: str, *, reason: str, actor: str, force: bool = False,
                action: str = ACTION_PROMOTE) -> Move:
        """Makes `version` the champion (refused for a rejected version unless `force`, and for an
        incomplete one always); promoting the champion again changes nothing."""
        version = str(version)
        with self._lock:
            tags = self.registry.get_version_tags(version)  # an unknown version raises VersionNotFoundError
            rules.check_promotable(version, tags, force=force)  # refusals are not moves: nothing is written
            previous = self.registry.champion_version()
            if previous == version:
                return Move(action, previous, version, moved=False)
            forced = rules.is_forced(action, tags, force=force)
            with self._audited(action, version, previous, actor=actor, reason=reason, forced=forced):
                self.registry.set_champion(version)
                self.registry.set_version_tags(version, {
                    TAG_PROMOTED_AT: _now_iso(), TAG_PROMOTED_BY: actor, TAG_PROMOTION_REASON: reason,
                    TAG_PROMOTION_FORCED: "true" if forced else "false",
                })
        metrics.CHAMPION_MOVES.labels(action=action).inc()
        log.info("champion %s -> %s (%s by %s%s)", previous, version, action, actor, ", forced" if forced else "")
        serving = self.serving.promoted(version, previous, reason=reason, actor=actor, forced=forced) \
            if self.serving else {}
        self.refresh_gauges()
        return Move(action, previous, version, forced=forced, serving=serving)

    def approve(self, version: str, *, reason: str, actor: str) -> Move:
        """Approves a candidate that passed the gate under `gate.approval: manual` and promotes it;
        approving it again (or after a crash before the move) only completes the move."""
        version = str(version)
        with self._lock:
            if not rules.approval_is_repeat(version, self.registry.get_version_tags(version)):
                self.registry.set_version_tags(version, {
                    TAG_APPROVED_BY: actor, TAG_APPROVED_AT: _now_iso(), TAG_APPROVAL_REASON: reason,
                    TAG_VERDICT: VERDICT_PROMOTED,
                })
            return self.promote(version, reason=reason, actor=actor, action=ACTION_APPROVE)

    def rollback(self, to_version: str | None = None, *, reason: str, actor: str, force: bool = False) -> Move:
        """Moves the champion back to the champion the current one replaced (walking back over earlier
        rollbacks, by the audit log), or to `to_version`; repeating `--to` changes nothing."""
        with self._lock:
            current = self.registry.champion_version()
            if to_version is not None and current == str(to_version):
                return Move(ACTION_ROLLBACK, current, current, moved=False)  # a repeat: already there
            target = rules.rollback_target(
                current, to_version, moves=self.audit_log(), tags_of=self.registry.get_version_tags, force=force,
                model=getattr(self.registry, "model_name", "the model"),
                alias=getattr(self.registry, "champion_alias", "champion"),
            )
            forced = rules.is_forced(ACTION_ROLLBACK, self.registry.get_version_tags(target), force=force)
            with self._audited(ACTION_ROLLBACK, target, current, actor=actor, reason=reason, forced=forced):
                self.registry.set_champion(target)
                self.registry.set_version_tags(current, {TAG_ROLLED_BACK_AT: _now_iso(), TAG_ROLLBACK_REASON: reason})
        metrics.CHAMPION_MOVES.labels(action=ACTION_ROLLBACK).inc()
        log.info("champion rolled back %s -> %s (by %s)", current, target, actor)
        serving = self.serving.rolled_back(target, current, reason=reason, actor=actor) if self.serving else {}
        self.refresh_gauges()
        return Move(ACTION_ROLLBACK, current, target, forced=forced, serving=serving)

    def audit_log(self) -> list[dict]:
        """Every champion move in the store's audit log, oldest first."""
        return list(reversed(self.store.champion_moves(limit=versions.ALL_MOVES)))

    def history(self) -> list[dict]:
        """Every version, newest first, as `ticketune history --json` prints it (daemon/champion/versions.py)."""
        return versions.history(self.registry, self.store)

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
                    self.store.begin_move(ACTION_OBSERVED, champion, None, actor="ticketune", state="done",
                                          reason="the champion when ticketune first watched the alias")
                self.refresh_gauges()
                return None
            if champion == known:
                return None
            return self._outside_move(champion, known)

    def _outside_move(self, champion: str | None, known: str | None) -> Move:
        tags = self.registry.get_version_tags(champion) if champion is not None else None
        verdict = (tags or {}).get(TAG_VERDICT)
        forced = rules.is_forced(ACTION_OUTSIDE_MOVE, tags)
        reason = (f"alias moved outside ticketune (MLflow UI or API) from version {known or 'none'} to "
                  f"{champion or 'none'}" + (f"; the gate's verdict on it: {verdict or 'none'}" if forced else ""))
        self.store.begin_move(ACTION_OUTSIDE_MOVE, champion, known, actor=OUTSIDE_ACTOR, reason=reason, forced=forced,
                              state="done")
        if champion is not None:
            moved_tags = {TAG_PROMOTED_AT: _now_iso(), TAG_PROMOTED_BY: OUTSIDE_ACTOR, TAG_PROMOTION_REASON: reason,
                          TAG_PROMOTION_FORCED: "true" if forced else "false"}
            if verdict == VERDICT_AWAITING_APPROVAL:  # moving a waiting candidate is the operator's approval
                moved_tags |= {TAG_APPROVED_BY: OUTSIDE_ACTOR, TAG_APPROVED_AT: _now_iso(),
                               TAG_VERDICT: VERDICT_PROMOTED}
            self.registry.set_version_tags(champion, moved_tags)
        metrics.OUTSIDE_MOVES.labels(gate=OUTSIDE_GATE_LABELS[forced]).inc()
        metrics.CHAMPION_MOVES.labels(action=ACTION_OUTSIDE_MOVE).inc()
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
        return Move(ACTION_OUTSIDE_MOVE, known, champion, forced=forced, serving=serving)

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
            for row in self.registry.list_versions():
                tags = row.get("tags") or {}
                version, cycle_id = row["version"], tags.get(TAG_CYCLE_ID)
                if tags.get(TAG_STATE) == STATE_REGISTERING:
                    notes.append(self.settle_registration(version, cycle_id))
                    tags = self.registry.get_version_tags(version)
                if cycle_id in unfinished and rules.version_state(tags) == STATE_COMPLETE:
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
            for row in self.registry.list_versions():
                tags = row.get("tags") or {}
                if tags.get(TAG_STATE) == STATE_REGISTERING and tags.get(TAG_CYCLE_ID) not in unfinished:
                    notes.append(self.settle_registration(row["version"], tags.get(TAG_CYCLE_ID)))
        for note in notes:
            log.warning("settled: %s", note)
        return notes

    def settle_registration(self, version: str, cycle_id: str | None,
                            why: str = "its registration was cut short (the service stopped, or MLflow went away)",
                            ) -> str:
        """A version left `registering`: complete when the store holds its decision (a closed batch),
        otherwise abandoned (never promotable); `why` says how its registration was cut short."""
        return versions.settle_registration(self.store, self.registry, version, cycle_id, why)

    def _finish_interrupted_cycle(self, version: str, cycle_id: str, tags: dict, champion: str | None) -> list[str]:
        batch = self.store.batch_of_version(version)
        verdict = tags.get(TAG_VERDICT) or VERDICT_FAILED
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
        if verdict == VERDICT_PROMOTED and not tags.get(TAG_PROMOTED_AT) and champion != version:
            if champion == parent:
                self.promote(version, reason=f"completing the promotion of cycle {cycle_id} after a restart",
                             actor="ticketune")
                notes.append(f"version {version}: its interrupted promotion completed")
            else:
                notes.append(f"version {version}: not promoted, the champion moved to {champion} since")
        return notes

    # ---- gauges --------------------------------------------------------------------------

    def refresh_gauges(self) -> bool:
        """Champion version, whether it failed the gate (an alert), its eval loss (NaN when it has none),
        candidates awaiting approval; False when the registry could not be read (nothing was changed)."""
        try:
            champion = self.registry.champion_version()
            rows = self.registry.list_versions()
        except Exception as exc:  # best effort: the registry's outage shows elsewhere
            log.debug("champion gauges not refreshed: %s", exc)
            return False
        metrics.CHAMPION_VERSION.set(float(champion) if champion and champion.isdigit() else 0)
        current = next((row for row in rows if row["version"] == champion), None)
        tags = (current.get("tags") or {}) if current is not None else {}
        verdict = tags.get(TAG_VERDICT)
        failed_gate = current is not None and verdict not in (VERDICT_PROMOTED, None)
        metrics.CHAMPION_FAILED_GATE.set(1 if failed_gate else 0)
        metrics.CHAMPION_EVAL_LOSS.set(_eval_loss(tags))
        metrics.AWAITING_APPROVAL.set(sum(1 for row in rows
                                          if (row.get("tags") or {}).get(TAG_VERDICT) == VERDICT_AWAITING_APPROVAL))
        return True


def _eval_loss(tags: dict[str, str]) -> float:
    """A version's eval loss on its trusted set, from its metrics tag; NaN when it has none."""
    try:
        loss = json.loads(tags.get(TAG_METRICS) or "{}").get("candidate_eval_loss")
    except (ValueError, AttributeError):
        return math.nan
    return float(loss) if isinstance(loss, int | float) else math.nan
