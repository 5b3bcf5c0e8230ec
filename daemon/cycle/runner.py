"""One retrain cycle: snapshot → train and evaluate in the worker → gate → register → promote or reject.

The cycle lock keeps cycles of one store from overlapping, across processes. Whatever goes wrong
inside a cycle (worker crash, MLflow unreachable) makes it a `failed` cycle whose batch stays
pending; it never propagates into the service. The next run retries a failed cycle with the same
id, snapshot and spec, so the worker resumes from its checkpoints, up to `training.max_attempts`.
What a cycle will do is planned first from the registry's and the store's facts (`plan.py`), then
executed; the worker's spec and result are the typed models of `daemon/training/contract.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from daemon import code_version, metrics
from daemon.champion import versions
from daemon.champion import vocabulary as vocab
from daemon.champion.keeper import ChampionKeeper
from daemon.champion.versions import tag_erased_versions
from daemon.champion.vocabulary import (
    VERDICT_AWAITING_APPROVAL,
    VERDICT_FAILED,
    VERDICT_PROMOTED,
    VERDICT_REJECTED,
    VERDICT_SKIPPED,
)
from daemon.config import Settings
from daemon.cycle.plan import (
    CycleFacts,
    CyclePlan,
    Resumption,
    find_resumption,
    fresh_reason,
    plan_cycle,
    worker_settings,
)
from daemon.cycle.worker_spec import spec_answer_prompts, write_worker_spec
from daemon.gate.checks import Verdict, inputs_from_result, judge
from daemon.gate.golden import GoldenSet, load_golden
from daemon.gate.report_rows import golden_rows, sample_rows
from daemon.ingest.feedback import DESIRABLE, heldout_feedback
from daemon.ingest.privacy import PLACEHOLDERS
from daemon.logs import log_context
from daemon.store import ExampleStore, LockBusy, Snapshot, store_lock
from daemon.training import methods as adapter_methods
from daemon.training.contract import (
    CHAMPION_DIR,
    CHECKPOINTS_DIR,
    OUT_DIR,
    RESULT_FILE,
    SPEC_FILE,
    WORKER_TRAINING_FIELDS,
    TrainResult,
    TrainSummary,
    WorkerSettings,
    as_result,
)

log = logging.getLogger("ticketune.cycle")


_WHOLE_FILE_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
__all__ = ["WORKER_TRAINING_FIELDS", "CycleOutcome", "CycleRunner", "base_model_fingerprint", "new_cycle_id"]


class Registry(Protocol):
    def champion_version(self) -> str | None: ...
    def download_adapter(self, version: str, dst_dir: Path) -> Path: ...
    def start_cycle_run(self, cycle_id: str, params: dict, tags: dict) -> str: ...
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def register_candidate(self, run_id: str, adapter_dir: Path, tags: dict[str, str]) -> str: ...
    def set_version_tags(self, version: str, tags: dict[str, str]) -> None: ...
    def get_version_tags(self, version: str) -> dict[str, str]: ...


class Executor(Protocol):
    """Runs the worker on a spec and returns its result (a `TrainResult`; a plain dict is validated into
    one); raises when there is none. An exception with `retryable = False` says the same spec cannot
    succeed, so the cycle is not retried."""

    def run(
        self, spec_path: Path, result_path: Path, *, timeout_s: float, stop: threading.Event | None = None,
        run_id: str | None = None,
    ) -> TrainResult | dict: ...


@dataclass
class CycleOutcome:
    cycle_id: str
    verdict: str
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def new_cycle_id() -> str:
    return f"c-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def base_model_fingerprint(base: str, revision: str | None) -> str:
    """The base model's revision: for a local directory a hash of its config, tokenizer and weight
    files (whole files up to 64 MiB; for larger ones the size and the first and last MiB, which any
    retraining changes), so that a model rebuilt in the same place is a new base; for a hub id, the
    id and revision."""
    path = Path(base)
    if not path.is_dir():
        return f"{base}@{revision or 'default'}"
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if not item.is_file() or item.suffix not in (".json", ".safetensors", ".bin", ".model", ".jinja"):
            continue
        size = item.stat().st_size
        digest.update(f"{item.name}\0{size}\n".encode())
        with item.open("rb") as handle:
            if size <= _WHOLE_FILE_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


def _flatten_result_metrics(result: TrainResult, has_champion: bool) -> dict:
    train = result.train or TrainSummary()
    trusted = result.score("trusted", "candidate")
    heldout = result.score("batch_heldout", "candidate")
    flat = {
        "candidate_eval_loss": result.loss("trusted", "candidate"),
        "champion_eval_loss": result.loss("trusted", "champion") if has_champion else None,
        "base_eval_loss": result.loss("trusted", "base"),
        "trusted_eval_examples": trusted.examples if trusted is not None else None,
        "batch_heldout_candidate_loss": result.loss("batch_heldout", "candidate"),
        "batch_heldout_champion_loss": result.loss("batch_heldout", "champion"),
        "batch_heldout_examples": heldout.examples if heldout is not None else None,
        "train_examples": train.examples,
        "train_final_loss": train.final_loss,
        "train_steps": train.steps,
        "train_seconds": train.seconds,
        "train_tokens_per_second": train.tokens_per_second,
    }
    return {k: v for k, v in flat.items() if v is not None}


def _check_metrics(verdict: Verdict) -> dict[str, float]:
    """Each check's top-level numbers as MLflow metrics, `gate.<check>.<number>`, and its outcome
    (`gate.<check>.passed`: 1 pass, 0 fail; a check that is off logs no outcome)."""
    out: dict[str, float] = {}
    for check in verdict.checks:
        if check.status != "off":
            out[f"gate.{check.name}.passed"] = 1.0 if check.status == "pass" else 0.0
        for key, value in check.details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"gate.{check.name}.{key}"] = float(value)
    return out


def _feedback_metrics(verdict: Verdict) -> dict[str, float]:
    """The preference check's figures under the names `cycle --json` promises (none when it scored nothing)."""
    details = next((c.details for c in verdict.checks if c.name == "preference"), {})
    if "candidate_accuracy" not in details:
        return {}
    return {"feedback_accuracy_candidate": details["candidate_accuracy"],
            "feedback_accuracy_reference": details["reference_accuracy"],
            "feedback_examples": details["examples"]}


def eval_snapshot_id(snapshot: Snapshot) -> str:
    """Names the trusted eval set a candidate was judged on: the same examples give the same id."""
    digest = hashlib.sha256()
    for example in sorted(snapshot.trusted_eval, key=lambda e: e["ticket_id"]):
        digest.update(f"{example['ticket_id']}\0{example.get('revision', '')}\n".encode())
    return f"eval-{digest.hexdigest()[:12]}"


class CycleRunner:
    """Runs cycles for one store against one registry; `run()` is safe to call from any thread.

    Promotions go through `keeper` (audit log, serving targets); without one, a keeper that tells
    no serving target is used."""

    def __init__(self, settings: Settings, store: ExampleStore, registry: Registry, executor: Executor,
                 keeper: ChampionKeeper | None = None) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.executor = executor
        self.keeper = keeper or ChampionKeeper(store, registry)  # type: ignore[arg-type]
        for verdict in vocab.CYCLE_VERDICTS:  # every verdict's series from the start, at 0
            metrics.CYCLES.labels(verdict=verdict)

    def run(
        self, *, trigger: str = "manual", force: bool = False, stop: threading.Event | None = None,
        lock_wait_seconds: float | None = 0.0, on_recorded: Callable[[str], None] | None = None,
        skip_when_busy: bool = False,
    ) -> CycleOutcome:
        """`on_recorded(cycle_id)` is called once the cycle's row is in the store's journal (running or skipped).
        Another process's cycle on the store raises LockBusy, or with `skip_when_busy` makes this one a
        recorded skip (the service's schedule and admin API: the journal shows why it did not run)."""
        on_recorded = on_recorded or (lambda _cycle_id: None)
        with ExitStack() as held:
            try:
                held.enter_context(store_lock(self.store.path, "cycle", wait_seconds=lock_wait_seconds))
            except LockBusy as exc:
                if not skip_when_busy:
                    raise
                outcome = self._skip(new_cycle_id(), trigger, str(exc), on_recorded)
            else:
                held.enter_context(log_context())
                outcome = self._plan_and_run(trigger=trigger, force=force, stop=stop, on_recorded=on_recorded)
        metrics.CYCLES.labels(verdict=outcome.verdict).inc()  # every cycle is counted here, and only here
        return outcome

    def _plan_and_run(self, *, trigger: str, force: bool, stop: threading.Event | None,
                      on_recorded: Callable[[str], None]) -> CycleOutcome:
        cfg = self.settings
        try:
            golden = load_golden(cfg.gate.golden_prompts, cfg.gate.profile)
        except ValueError as exc:  # the golden prompts file is broken: say so, never judge without it
            return CycleOutcome(new_cycle_id(), VERDICT_FAILED, reasons=[str(exc).splitlines()[0]])
        try:
            champion = self.registry.champion_version()
            tag_erased_versions(self.store, self.registry)
            self._settle_registrations()
            champion_base = (self.registry.get_version_tags(champion).get(vocab.TAG_BASE_FINGERPRINT)
                             if champion is not None else None)
        except Exception as exc:  # the registry is unreachable: nothing to compare with, so no cycle
            return CycleOutcome(new_cycle_id(), VERDICT_FAILED, reasons=[str(exc).splitlines()[0]])
        plan = plan_cycle(self._facts(champion, champion_base, force))
        if not plan.resume:
            self._remove_stale_checkpoints()  # a fresh cycle: no earlier one will resume any more
        if plan.skip_reason is not None:
            return self._skip(plan.cycle_id, trigger, plan.skip_reason, on_recorded)
        return self._execute(plan, golden, trigger=trigger, stop=stop, on_recorded=on_recorded)

    def _skip(self, cycle_id: str, trigger: str, reason: str, on_recorded: Callable[[str], None]) -> CycleOutcome:
        """A cycle that started nothing, recorded in the journal with its reason."""
        try:
            self.store.record_skip(cycle_id, trigger, reason)
            on_recorded(cycle_id)
        except Exception as exc:  # a full disk: still a skip, only not in the journal
            log.warning("cycle %s: its skip could not be recorded: %s", cycle_id, str(exc).splitlines()[0])
        return CycleOutcome(cycle_id, VERDICT_SKIPPED, reasons=[reason])

    def _facts(self, champion: str | None, champion_base: str | None, force: bool) -> CycleFacts:
        """What the plan is computed from; the store's side (erasures, a failed cycle to retry, pending)."""
        cfg = self.settings
        base_fingerprint = base_model_fingerprint(cfg.model.base, cfg.model.revision)
        erased = champion is not None and champion in self.store.versions_trained_on_erased_data()
        reason = fresh_reason(champion, champion_base, base_fingerprint, erased)
        if reason == "new_base":  # a new model.base (or revision): the champion cannot be compared on it
            log.info("champion %s was trained on another base model (%s, now %s): a new lineage, judged against "
                     "the new base on the champion's trusted set", champion, champion_base, base_fingerprint)
        resumption = self._resumption(champion, reason is not None)
        return CycleFacts(
            champion=champion, champion_base=champion_base, base_fingerprint=base_fingerprint, erased=erased,
            resumption=resumption, new_cycle_id=new_cycle_id() if resumption is None else "",
            pending=self.store.pending_count() if resumption is None else 0, force=force,
            min_new_examples=cfg.schedule.min_new_examples,
            warm_start_champion=cfg.training.warm_start == "champion",
        )

    def _execute(self, plan: CyclePlan, golden: GoldenSet, *, trigger: str,
                 stop: threading.Event | None, on_recorded: Callable[[str], None]) -> CycleOutcome:
        cfg = self.settings
        cycle_id, snapshot, champion = plan.cycle_id, plan.snapshot, plan.champion
        try:
            attempt = self.store.start_cycle(cycle_id, trigger)
        except Exception as exc:  # the store takes no writes (a full disk): no cycle, said plainly
            log.error("cycle %s could not start: %s", cycle_id, str(exc).splitlines()[0])
            return CycleOutcome(cycle_id, VERDICT_FAILED, reasons=[str(exc).splitlines()[0]])
        on_recorded(cycle_id)
        notes = [f"resumes cycle {cycle_id} attempt {attempt}"] if plan.resume else []
        outcome = CycleOutcome(cycle_id, VERDICT_FAILED, reasons=list(notes))
        cycle_dir = cfg.training.work_dir / cycle_id
        run_id: str | None = None
        retryable = False
        started = time.monotonic()
        metrics.CYCLE_RUNNING.set(1)
        try:
            if snapshot is None:
                snapshot = self.store.create_snapshot(
                    cycle_id, champion, replay_fraction=cfg.training.replay_fraction, seed=cfg.training.seed,
                    replay_all=plan.replay_all,
                )
            skip = self._why_skip(snapshot, plan.replay_all)
            if skip:
                outcome = CycleOutcome(cycle_id, VERDICT_SKIPPED, reasons=notes + [skip])
                return outcome
            if plan.resume:
                log.info("cycle %s: attempt %d on snapshot %s, resuming from its checkpoints",
                         cycle_id, attempt, snapshot.id)
                spec_path = cycle_dir / SPEC_FILE
            else:
                log.info("cycle %s: training on %s; champion %s", cycle_id, snapshot.describe(), champion or "none")
                spec_path = self._write_spec(cycle_dir, snapshot, champion, golden, warm=plan.warm_start,
                                             compare_champion=plan.compare_champion,
                                             base_is_reference=champion is None or plan.fresh_reason is not None)
            run_tags = self._run_tags(snapshot, attempt, plan.base_fingerprint)
            run_id = self.registry.start_cycle_run(cycle_id, self._run_params(snapshot, attempt), run_tags)
            result = as_result(self.executor.run(
                spec_path, cycle_dir / OUT_DIR / RESULT_FILE,
                timeout_s=cfg.training.timeout_minutes * 60, stop=stop, run_id=run_id,
            ))
            outcome = self._judge_and_register(
                cycle_id, run_id, snapshot, champion, result, run_tags, golden,
                fresh_reason=plan.fresh_reason,
                previous_base=plan.champion_base,
            )
            outcome.reasons = notes + outcome.reasons
            try:  # the verdict is in MLflow and the store already: what follows cannot make the cycle fail
                self.registry.log_artifacts(run_id, cycle_dir / OUT_DIR, "worker")
                self.registry.end_run(run_id, "FINISHED")
            except Exception as exc:
                log.warning("cycle %s: %s, but the worker's files could not be attached to its MLflow run: %s",
                            cycle_id, outcome.verdict, str(exc).splitlines()[0])
            metrics.CYCLE_DURATION.observe(time.monotonic() - started)
            return outcome
        except Exception as exc:  # a failed cycle is recorded, never raised into the service
            log.error("cycle %s failed: %s", cycle_id, str(exc).splitlines()[0])
            outcome = CycleOutcome(cycle_id, VERDICT_FAILED, reasons=notes + [str(exc).splitlines()[0]])
            retryable = snapshot is not None and getattr(exc, "retryable", True)
            if run_id is not None:
                try:
                    self.registry.end_run(run_id, "FAILED")
                except Exception as end_exc:  # MLflow itself may be what failed
                    log.warning("cycle %s: could not mark the MLflow run failed: %s", cycle_id, end_exc)
            return outcome
        finally:
            metrics.CYCLE_RUNNING.set(0)
            # before the row says the cycle ended: whoever reads the end finds no checkpoint it cannot use
            if retryable and attempt < cfg.training.max_attempts:
                log.info("cycle %s: attempt %d failed; the next run resumes it from its checkpoints",
                         cycle_id, attempt)
            else:
                shutil.rmtree(cycle_dir / CHECKPOINTS_DIR, ignore_errors=True)
            try:
                self.store.finish_cycle(
                    cycle_id, verdict=outcome.verdict, model_version=outcome.version,
                    snapshot_id=snapshot.id if snapshot else None, reasons=outcome.reasons, metrics=outcome.metrics,
                    retryable=retryable,
                )
            except Exception as exc:  # a full disk: the row stays unfinished, and the next start marks it failed
                log.error("cycle %s: its end (%s) could not be recorded in the store: %s", cycle_id, outcome.verdict,
                          str(exc).splitlines()[0])
            self._prune_cycle_dirs()

    def _settle_registrations(self) -> None:
        """Versions that an earlier cycle left `registering` (MLflow went away mid-registration) are
        completed or abandoned now that MLflow answers; no other cycle runs (the cycle lock)."""
        try:
            self.keeper.settle_registrations()
        except Exception as exc:  # best effort: such a version is never promotable meanwhile
            log.warning("versions left registering were not settled now: %s", str(exc).splitlines()[0])

    def _resumption(self, champion: str | None, retrain: bool) -> Resumption | None:
        """The failed cycle to retry with its own id, snapshot and spec, if every condition holds."""
        return find_resumption(self.store, self.settings, champion, retrain)

    def _worker_settings(self) -> WorkerSettings:
        return worker_settings(self.settings)

    def _remove_stale_checkpoints(self) -> None:
        """A fresh cycle starts: no earlier cycle will resume from its checkpoints any more."""
        for checkpoints in self.settings.training.work_dir.glob(f"c-*/{CHECKPOINTS_DIR}"):
            shutil.rmtree(checkpoints, ignore_errors=True)

    def _why_skip(self, snapshot: Snapshot, retrain: bool) -> str | None:
        if not snapshot.batch_train and not (retrain and snapshot.replay):
            return "no new training examples in the batch"
        need = self.settings.gate.min_eval_examples
        have = len(snapshot.trusted_eval)
        if have < need:
            return (f"{have} trusted eval examples, gate.min_eval_examples is {need}: waiting for more "
                    f"data before training")
        return None

    def _write_spec(
        self, cycle_dir: Path, snapshot: Snapshot, champion: str | None, golden: GoldenSet, *, warm: bool,
        compare_champion: bool = True, base_is_reference: bool = False,
    ) -> Path:
        """`warm=False` trains a fresh adapter (the champion was trained on data erased since, or on
        another base model); `compare_champion=False` leaves out a champion of another base;
        `base_is_reference`: the gate compares with the base, so the probe has the base answer too."""
        champion_dir = None
        if champion is not None and compare_champion:
            champion_dir = self.registry.download_adapter(champion, cycle_dir / CHAMPION_DIR)
        return write_worker_spec(self.settings, cycle_dir, snapshot, golden, champion_dir=champion_dir, warm=warm,
                                 base_is_reference=base_is_reference)

    def _run_params(self, snapshot: Snapshot, attempt: int) -> dict:
        cfg = self.settings
        params = {f"adapter.{k}": v for k, v in cfg.adapter.model_dump(mode="json").items()}
        params.update({f"training.{k}": v for k, v in cfg.training.model_dump(mode="json").items()
                       if k not in ("work_dir", "python")})
        params.update({f"gate.{k}": v for k, v in cfg.gate.model_dump(mode="json").items()})
        params.update({"model.base": cfg.model.base, "snapshot.id": snapshot.id})
        params.update({f"snapshot.{k}": v for k, v in snapshot.counts.items()})
        params["cycle.attempt"] = attempt
        return params

    def _run_tags(self, snapshot: Snapshot, attempt: int, base_fingerprint: str) -> dict:
        """The run's tags, which every version of the cycle also carries; `base_fingerprint` is
        computed once per cycle (it reads the base model's files)."""
        cfg = self.settings
        return {
            vocab.TAG_CYCLE_ID: snapshot.cycle_id,
            vocab.TAG_ATTEMPT: str(attempt),
            vocab.TAG_SNAPSHOT_ID: snapshot.id,
            vocab.TAG_EVAL_SNAPSHOT_ID: eval_snapshot_id(snapshot),
            vocab.TAG_BASE_MODEL: cfg.model.base,
            vocab.TAG_BASE_REVISION: cfg.model.revision or "",
            vocab.TAG_BASE_FINGERPRINT: base_fingerprint,
            vocab.TAG_PARENT: snapshot.champion_version or "",
            vocab.TAG_CONFIG_HASH: cfg.config_hash(),
            vocab.TAG_CODE_VERSION: code_version(),
        }

    def _judge_and_register(
        self, cycle_id: str, run_id: str, snapshot: Snapshot, champion: str | None, result: TrainResult,
        run_tags: dict,
        golden: GoldenSet, *, fresh_reason: str | None = None, previous_base: str | None = None,
    ) -> CycleOutcome:
        """`fresh_reason`: the champion cannot be the reference: it was trained on erased data
        ("erased") or on another base model ("new_base"), so the fresh candidate is judged against
        the base model (on the champion's trusted set).

        The version is registered `registering`, the store records the decision (trusted set,
        batch), the report is attached, then the version is tagged `complete`; only then may it be
        promoted. A crash in between leaves what `ChampionKeeper.reconcile` settles at the next start; an
        error in between (MLflow gone mid-registration) fails the cycle with its batch reopened and the
        version abandoned (by the next cycle or start when MLflow cannot take the tag at once).
        """
        cfg = self.settings
        has_reference_champion = champion is not None and fresh_reason is None
        flat = _flatten_result_metrics(result, has_champion=has_reference_champion)
        categories = {example["ticket_id"]: example.get("category") for example in snapshot.trusted_eval}
        thumbs, _ = heldout_feedback(snapshot.trusted_eval, snapshot.batch_eval)
        verdict = judge(
            inputs_from_result(result, has_champion=has_reference_champion, categories=categories, golden=golden,
                               keep=cfg.privacy.keep,
                               feedback_labels={row["ticket_id"]: row["label"] == DESIRABLE for row in thumbs},
                               objective=cfg.training.objective),
            cfg.gate,
        )
        flat.update(_feedback_metrics(verdict))
        reasons = verdict.reasons
        if fresh_reason == "erased":
            reasons.append(f"note: retrained from scratch without erased data; champion {champion} was "
                           "trained on it, so the reference is the base model")
        elif fresh_reason == "new_base":
            reasons.append(f"note: a new lineage on base model {cfg.model.base}; champion {champion} was trained on "
                           "another base, so the reference is the new base model on its trusted set")
        numeric = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
        numeric.update(_check_metrics(verdict))
        self.registry.log_metrics(run_id, numeric)
        train = result.train or TrainSummary()
        for step, loss in train.loss_curve:
            self.registry.log_metrics(run_id, {"train_loss": float(loss)}, step=int(step))
        for step, loss in train.validation_curve:
            self.registry.log_metrics(run_id, {"validation_loss": float(loss)}, step=int(step))
        if not verdict.passed:
            decision = VERDICT_REJECTED
        else:
            decision = VERDICT_PROMOTED if cfg.gate.approval == "auto" else VERDICT_AWAITING_APPROVAL
        tags = {
            **run_tags,
            vocab.TAG_VERDICT: decision,
            vocab.TAG_REASONS: json.dumps(reasons),
            vocab.TAG_METRICS: json.dumps(numeric, sort_keys=True),
            vocab.TAG_GATE: json.dumps(verdict.to_dict()),
            vocab.TAG_ADAPTER_METHOD: adapter_methods.describe(
                cfg.adapter.method, cfg.adapter.use_rslora, cfg.training.quantization
            ),
            vocab.TAG_OBJECTIVE: cfg.training.objective,
            vocab.TAG_GATE_PROFILE: cfg.gate.profile,
            vocab.TAG_GATE_APPROVAL: cfg.gate.approval,
            vocab.TAG_REFERENCE: "champion" if has_reference_champion else "base",
        }
        if fresh_reason == "new_base":
            tags[vocab.TAG_LINEAGE_BREAK] = f"base model changed from {previous_base}"
        if result.adapter_dir is None:
            raise RuntimeError("the worker's result names no adapter_dir")
        adapter_dir = Path(result.adapter_dir)
        # the placeholder vocabulary travels with the adapter: serving fills or strips what the model writes
        (adapter_dir / "ticketune_placeholders.json").write_text(json.dumps(PLACEHOLDERS, indent=2), "utf-8")
        version = versions.register_candidate(self.registry, run_id, adapter_dir, tags)  # `registering`
        try:
            self.store.freeze_trusted_set(version, snapshot.id, champion, cfg.gate.trusted_eval_cap)
            self.store.close_batch(snapshot.id, verdict="rejected" if decision == VERDICT_REJECTED else "promoted",
                                   model_version=version)
            report_tags = self._attach_report(run_id, cycle_id, version, decision, verdict, tags, result,
                                              "champion" if has_reference_champion else "base", golden)
            versions.complete_registration(self.registry, version, report_tags)
        except Exception as exc:
            self._abandon_registration(cycle_id, version, snapshot.id, exc)
            raise
        if decision == VERDICT_PROMOTED:
            self.keeper.promote(version, reason=f"cycle {cycle_id} passed the gate", actor="cycle")
        else:
            self.keeper.refresh_gauges()
        if "candidate_eval_loss" in numeric:
            metrics.CANDIDATE_EVAL_LOSS.set(numeric["candidate_eval_loss"])
        log.info("cycle %s: version %s %s", cycle_id, version, decision)
        return CycleOutcome(cycle_id, decision, version=version, reasons=reasons, metrics=flat)

    def _abandon_registration(self, cycle_id: str, version: str, snapshot_id: str, exc: Exception) -> None:
        """The registration of `version` failed before it was complete (MLflow went away mid-way): the
        cycle fails, so its batch goes back to pending (the store's half is undone) and the version is
        marked abandoned; if MLflow cannot take that tag now, the next cycle (or start) settles it."""
        try:
            self.store.reopen_batch(snapshot_id, version)
        except Exception as store_exc:
            log.error("cycle %s: the batch of half-registered version %s could not be reopened: %s", cycle_id,
                      version, store_exc)
            return  # the store still holds the decision: the version is settled as complete later
        why = f"its cycle {cycle_id} failed while registering it ({str(exc).splitlines()[0][:200]})"
        try:
            self.keeper.settle_registration(version, cycle_id, why)
        except Exception as tag_exc:
            log.warning("cycle %s: version %s stays `registering` (never promotable) until the next cycle or start "
                        "marks it abandoned: %s", cycle_id, version, str(tag_exc).splitlines()[0])

    def _attach_report(
        self, run_id: str, cycle_id: str, version: str, decision: str, verdict: Verdict, tags: dict,
        result: TrainResult,
        reference: str, golden: GoldenSet,
    ) -> dict[str, str]:
        """Renders the candidate's report into the cycle's MLflow run (`report/`); a report that
        cannot be drawn never blocks the decision, and the version says so."""
        from daemon.gate.report import ReportInputs, write_report

        out_dir = self.settings.training.work_dir / cycle_id / "report"
        try:
            shutil.rmtree(out_dir, ignore_errors=True)
            write_report(out_dir, ReportInputs(
                model_name=self.settings.registry.model_name, version=version, cycle_id=cycle_id, decision=decision,
                verdict=verdict.to_dict(max_chars=1_000_000), result=result, reference=reference,
                tags=tags,  # without the state tag: the version is complete once the report is in
                golden=golden_rows(result, verdict, golden, reference),
                samples=sample_rows(result, spec_answer_prompts(self.settings.training.work_dir / cycle_id), reference),
                attempt=int(tags[vocab.TAG_ATTEMPT]),
            ))
        except Exception as exc:  # a plotting bug must not cost the cycle its decision
            log.error("cycle %s: the report could not be drawn: %s", cycle_id, exc)
            return {vocab.TAG_REPORT: f"failed: {type(exc).__name__}"}
        self.registry.log_artifacts(run_id, out_dir, "report")
        return {vocab.TAG_REPORT: "report/report.html"}

    def _prune_cycle_dirs(self) -> None:
        root = self.settings.training.work_dir
        if not root.is_dir():
            return
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith("c-")), key=lambda d: d.name)
        for old in dirs[: -self.settings.training.keep_cycle_dirs]:
            shutil.rmtree(old, ignore_errors=True)
