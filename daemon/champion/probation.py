"""The online monitor: runs each champion's probation (daemon/champion/online.py) from the store's outcome
records, publishes it (gauges, the store's meta for `ticketune status`, the version's MLflow run), and with
`online.auto_rollback` rolls a worse champion back through the keeper, the one path every move takes
(the audit log with actor `online-monitor` and the figures, serving told, MLflow tags).

The probation of a champion starts at the newest done move to it in the audit log; the version it
replaced (that move's `previous`) is its predecessor. Its tickets are the outcomes of the champion's
version resolved since then; the predecessor's are its outcomes resolved before. Outcomes of any other
version since the move (a predecessor's drafts still being resolved, an older version) are ignored and
counted as such.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from daemon import metrics
from daemon.champion import online
from daemon.champion.keeper import ChampionKeeper
from daemon.champion.rules import champion_move
from daemon.champion.vocabulary import ONLINE_ACTOR, TAG_ONLINE_PROBATION, TAG_ONLINE_ROLLED_BACK
from daemon.config import Settings
from daemon.ingest.feedback import draft_accepted
from daemon.store import ExampleStore

log = logging.getLogger("ticketune.online")
META_KEY = "online_probation"  # the latest probation, as JSON, in the store's meta table
REPORT_ARTIFACT = "online/probation.json"  # in the version's MLflow run, next to its report
POOL_FACTOR = 4  # the predecessor's most recent outcomes read for the category matching, per new ticket


def _outcome(row: Mapping[str, Any], min_edit_ratio: float) -> online.Outcome:
    return online.Outcome(ticket_id=row["ticket_id"], model_version=row["model_version"],
                          resolved_at=row["resolved_at"], category=row["category"], csat=row["csat"],
                          accepted=draft_accepted(row["outcome"], row["edit_ratio"], min_edit_ratio))


class OnlineMonitor:
    """One probation check per call of `check`; thread-safe."""

    def __init__(self, settings: Settings, store: ExampleStore, keeper: ChampionKeeper) -> None:
        self.settings = settings
        self.store = store
        self.keeper = keeper
        self._lock = threading.Lock()
        self._published: tuple | None = None  # what the MLflow run last got, to upload only changes
        self._stored: str | None = None  # what the store's meta last got
        self._warned: tuple | None = None  # the probation whose "worse, not rolled back" was logged
        for role in ("champion", "previous"):
            metrics.ONLINE_CSAT.labels(role=role)
            metrics.ONLINE_DRAFT_ACCEPTANCE.labels(role=role)
        metrics.ONLINE_CHAMPION_WORSE.set(0)

    def evaluate(self) -> online.Probation:
        """The current champion's probation, from the store and the registry; changes nothing."""
        cfg = self.settings.online
        if not cfg.enabled:
            return online.Probation(online.DISABLED, None, None, None, message="online.enabled is false")
        champion = self.keeper.registry.champion_version()
        if champion is None:
            return online.Probation(online.NO_CHAMPION, None, None, None, message="no champion yet")
        move = champion_move(self.keeper.audit_log(), champion)
        previous = str(move["previous"]) if move and move.get("previous") is not None else None
        if move is None or previous is None:
            return online.Probation(online.NO_PREDECESSOR, champion, None, move["at"] if move else None,
                                    message=f"v{champion} replaced no champion: no probation")
        since = move["at"]
        ratio = self.settings.feedback.min_edit_ratio
        new = [_outcome(r, ratio) for r in self.store.outcomes(champion, since=since)]
        pool = [_outcome(r, ratio) for r in self.store.outcomes(
            previous, before=since, newest_first=True, limit=POOL_FACTOR * max(len(new), cfg.min_tickets))]
        ignored = sum(n for version, n in self.store.outcome_versions_since(since).items() if version != champion)
        return online.judge_probation(
            new, pool, champion=champion, predecessor=previous, since=since, min_tickets=cfg.min_tickets,
            alpha=cfg.alpha, margins=cfg.margins.model_dump(), ignored=ignored)

    def check(self) -> online.Probation:
        """Evaluates, publishes, and rolls a worse champion back when `online.auto_rollback` says so."""
        with self._lock:
            probation = self.evaluate()
            self._publish(probation)
            if probation.worse:
                self._act_on_worse(probation)
            return probation

    def _act_on_worse(self, probation: online.Probation) -> None:
        figures = probation.summary()
        registry = self.keeper.registry
        why_not = None
        if not self.settings.online.auto_rollback:
            why_not = "online.auto_rollback is false: the alert only (`ticketune rollback` moves it back)"
        elif self._moved_by_monitor(probation.champion):
            why_not = "the online monitor itself made it champion: it never undoes its own rollback"
        elif registry.get_version_tags(probation.previous).get(TAG_ONLINE_ROLLED_BACK):
            why_not = f"v{probation.previous} was rolled back by the online monitor before: the alert only"
        if why_not is not None:
            if self._warned != (probation.champion, probation.since):  # once per probation, not every loop
                self._warned = (probation.champion, probation.since)
                log.warning("online probation: champion v%s is worse than v%s: %s; %s", probation.champion,
                            probation.previous, figures, why_not)
            return
        move = self.keeper.rollback(probation.previous, reason=f"online probation: {figures}", actor=ONLINE_ACTOR)
        registry.set_version_tags(probation.champion, {TAG_ONLINE_ROLLED_BACK: figures})
        metrics.ONLINE_CHAMPION_WORSE.set(0)  # the worse version no longer serves
        log.warning("online probation: champion v%s was worse than v%s (%s): rolled back to v%s",
                    probation.champion, probation.previous, figures, move.current)

    def _moved_by_monitor(self, champion: str | None) -> bool:
        move = champion_move(self.keeper.audit_log(), champion)
        return move is not None and move.get("actor") == ONLINE_ACTOR

    def _publish(self, probation: online.Probation) -> None:
        for role in ("champion", "previous"):
            csat = probation.figure("csat", role)
            accepted = probation.figure("draft_acceptance", role)
            metrics.ONLINE_CSAT.labels(role=role).set(csat if csat is not None else float("nan"))
            metrics.ONLINE_DRAFT_ACCEPTANCE.labels(role=role).set(accepted if accepted is not None else float("nan"))
        metrics.ONLINE_PROBATION_TICKETS.set(probation.new_tickets)
        metrics.ONLINE_CHAMPION_WORSE.set(1 if probation.worse else 0)
        data = probation.as_dict()
        text = json.dumps(data)
        if text != self._stored:  # a write (and its fsync) only when something changed
            self.store.set_meta(META_KEY, text)
            self._stored = text
        key = (probation.champion, probation.state, probation.new_tickets)
        if probation.champion is None or probation.state in (online.DISABLED, online.NO_CHAMPION) \
                or key == self._published:
            return
        try:  # the version's run gets the report, the version a tag with its figures; best effort
            registry = self.keeper.registry
            registry.set_version_tags(probation.champion, {TAG_ONLINE_PROBATION: json.dumps(
                {k: data[k] for k in ("state", "previous", "since", "new_tickets", "message")})[:5000]})
            run_id = registry.run_id_of(probation.champion) if hasattr(registry, "run_id_of") else None
            if run_id:
                registry.log_dict(run_id, data, REPORT_ARTIFACT)
            self._published = key
        except Exception as exc:
            log.warning("online probation: could not publish to the registry (%s); trying again next loop", exc)


def stored_probation(store: ExampleStore) -> dict | None:
    """The latest probation the service published, for `ticketune status` in another process."""
    raw = store.get_meta(META_KEY)
    return json.loads(raw) if raw else None
