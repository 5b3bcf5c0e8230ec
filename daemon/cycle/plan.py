"""What one cycle will do, and why: computed from the registry's and the store's facts before anything runs.

`plan_cycle` is a pure function of `CycleFacts` (it only logs); `CycleRunner` gathers the facts, asks for
the plan and executes it. The kinds:

- `resume`: a failed cycle is retried with its own id, snapshot and spec (its checkpoints are reused);
- `new_base`: the champion was trained on another base model: a new lineage, a fresh adapter on all
  trusted data, judged against the new base (the champion is not compared);
- `erased`: the champion was trained on data erased since: a fresh adapter on all trusted data, judged
  against the base model;
- `incremental`: the ordinary cycle on the new batch, warm-started from the champion when
  `training.warm_start` says so;
- `skip`: not enough new examples (`schedule.min_new_examples`), with the reason.

`new_base` and `erased` are full retrains (`replay_all`); a resumed cycle keeps the reason of the cycle it
resumes (`fresh_reason`), since the facts that made it a retrain still hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from daemon.config import Settings
from daemon.store import ExampleStore, Snapshot
from daemon.training.contract import SPEC_FILE, SpecError, WorkerSettings, read_spec

log = logging.getLogger("ticketune.cycle")

Kind = Literal["resume", "new_base", "erased", "incremental", "skip"]
FreshReason = Literal["new_base", "erased"]


@dataclass(frozen=True)
class Resumption:
    """A failed cycle that may be retried as it was."""

    cycle_id: str
    snapshot: Snapshot


@dataclass(frozen=True)
class CycleFacts:
    """What the registry and the store say before a cycle (gathered by `CycleRunner`)."""

    champion: str | None
    champion_base: str | None  # the champion's base model fingerprint tag
    base_fingerprint: str  # the configured base model's
    erased: bool  # the champion was trained on erased data
    resumption: Resumption | None
    new_cycle_id: str  # the id a fresh cycle takes
    pending: int  # new examples since the last cycle (not read when resuming)
    force: bool
    min_new_examples: int
    warm_start_champion: bool  # training.warm_start == "champion"


@dataclass(frozen=True)
class CyclePlan:
    kind: Kind
    cycle_id: str
    champion: str | None
    champion_base: str | None
    base_fingerprint: str
    fresh_reason: FreshReason | None = None  # why the champion cannot be the reference
    snapshot: Snapshot | None = None  # the resumed cycle's; None: take a fresh one
    warm_start: bool = False  # start from the champion's adapter
    compare_champion: bool = False  # score the champion beside the candidate
    skip_reason: str | None = None

    @property
    def resume(self) -> bool:
        return self.kind == "resume"

    @property
    def replay_all(self) -> bool:
        """A fresh adapter on all trusted data (the snapshot replays everything)."""
        return self.fresh_reason is not None

    @property
    def take_snapshot(self) -> bool:
        return self.snapshot is None


def fresh_reason(champion: str | None, champion_base: str | None, base_fingerprint: str,
                 erased: bool) -> FreshReason | None:
    """Why the champion cannot be the reference: another base model (a new lineage) or erased data."""
    if champion is not None and champion_base is not None and champion_base != base_fingerprint:
        return "new_base"
    if champion is not None and erased:
        return "erased"
    return None


def plan_cycle(facts: CycleFacts) -> CyclePlan:
    reason = fresh_reason(facts.champion, facts.champion_base, facts.base_fingerprint, facts.erased)
    erased = facts.champion is not None and facts.erased
    common = {"champion": facts.champion, "champion_base": facts.champion_base,
              "base_fingerprint": facts.base_fingerprint, "fresh_reason": reason}
    compare = facts.champion is not None and reason != "new_base"
    if facts.resumption is not None:  # its spec is kept: warm start and comparison as it was written
        return CyclePlan("resume", facts.resumption.cycle_id, snapshot=facts.resumption.snapshot,
                         warm_start=False, compare_champion=compare, **common)
    cycle_id = facts.new_cycle_id
    if reason is not None:
        log.info("cycle %s: champion %s was trained on %s: a fresh adapter on all trusted data", cycle_id,
                 facts.champion, "erased data" if erased else "another base model")
    if not (facts.force or erased) and facts.pending < facts.min_new_examples:
        return CyclePlan("skip", cycle_id, skip_reason=(
            f"{facts.pending} new examples since the last cycle, schedule.min_new_examples is "
            f"{facts.min_new_examples}"), **common)
    warm = reason is None and facts.champion is not None and facts.warm_start_champion
    return CyclePlan(reason or "incremental", cycle_id, warm_start=warm, compare_champion=compare, **common)


def worker_settings(settings: Settings) -> WorkerSettings:
    """What the spec takes from the config; a retry needs them unchanged to resume its checkpoints."""
    return WorkerSettings(base_model=settings.model.base, base_revision=settings.model.revision,
                          adapter=settings.adapter, training=settings.training)


def find_resumption(store: ExampleStore, settings: Settings, champion: str | None, retrain: bool) -> Resumption | None:
    """The failed cycle to retry with its own id, snapshot and spec, if every condition holds."""
    failed = store.retryable_cycle()
    if failed is None:
        return None
    attempts = settings.training.max_attempts
    if failed.attempts >= attempts:
        log.warning("cycle %s failed %d times (training.max_attempts %d): abandoning it for a fresh cycle "
                    "with a fresh snapshot", failed.cycle_id, failed.attempts, attempts)
        return None
    snapshot = store.load_snapshot(failed.snapshot_id)
    why_not = why_not_resume(settings, failed.cycle_id, snapshot, champion, retrain)
    if why_not:
        log.info("cycle %s is not resumed (%s): starting a fresh cycle", failed.cycle_id, why_not)
        return None
    return Resumption(failed.cycle_id, snapshot)


def why_not_resume(settings: Settings, cycle_id: str, snapshot: Snapshot, champion: str | None,
                   retrain: bool) -> str | None:
    """Why the failed cycle's spec cannot be run again as written (typed comparison with the config)."""
    cycle_dir = settings.training.work_dir / cycle_id
    try:
        spec = read_spec(cycle_dir / SPEC_FILE)
    except SpecError:
        return f"no readable spec.json in {cycle_dir}"
    missing = [path for path in spec.cycle_inputs() if not path.exists()]
    if missing or spec.snapshot_id != snapshot.id:
        return f"its data in {cycle_dir} is gone or belongs to another snapshot"
    if snapshot.champion_version != champion:
        return f"the champion is {champion} now, its snapshot was taken against {snapshot.champion_version}"
    if spec.worker_settings() != worker_settings(settings):
        return "the model, adapter or training settings changed since"
    if retrain and spec.init_adapter is not None:
        return f"it starts from champion {champion}, which has since been found trained on erased data"
    return None
