"""One retrain cycle: snapshot → train and evaluate in the worker → gate → register → promote or reject.

The cycle lock keeps cycles of one store from overlapping, across processes. Whatever goes wrong
inside a cycle (worker crash, MLflow unreachable) makes it a `failed` cycle whose batch stays
pending; it never propagates into the service. The next run retries a failed cycle with the same
id, snapshot and spec, so the worker resumes from its checkpoints, up to `training.max_attempts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from daemon import adapter_methods, code_version, metrics
from daemon.config import Settings
from daemon.gate import inputs_from_result, judge
from daemon.privacy import PLACEHOLDERS
from daemon.store import ExampleStore, Snapshot, store_lock

log = logging.getLogger("ticketune.cycle")

VERDICT_PROMOTED = "promoted"
VERDICT_REJECTED = "rejected"
VERDICT_SKIPPED = "skipped"
VERDICT_FAILED = "failed"

# The training settings the worker reads; the rest of `training` is the service's (see test_cycle_resume).
WORKER_TRAINING_FIELDS = frozenset({
    "device", "epochs", "max_steps", "learning_rate", "lr_schedule", "warmup_fraction", "batch_size",
    "max_seq_len", "packing", "row_tokens", "rows_per_step", "cross_entropy", "loss_chunk_tokens",
    "gradient_checkpointing", "precision", "compile", "quantization", "max_minutes", "max_tokens",
    "eval_every_steps", "early_stop_patience", "checkpoint_every_steps", "gpus", "seed",
})


class Registry(Protocol):
    def champion_version(self) -> str | None: ...
    def download_adapter(self, version: str, dst_dir: Path) -> Path: ...
    def start_cycle_run(self, cycle_id: str, params: dict, tags: dict) -> str: ...
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def register_candidate(self, run_id: str, adapter_dir: Path, tags: dict[str, str]) -> str: ...
    def promote(self, version: str, *, reason: str, force: bool = False, actor: str = "cycle") -> str | None: ...
    def set_version_tags(self, version: str, tags: dict[str, str]) -> None: ...


class Executor(Protocol):
    """Runs the worker on a spec and returns its result; raises when there is none. An exception
    with `retryable = False` says the same spec cannot succeed, so the cycle is not retried."""

    def run(
        self, spec_path: Path, result_path: Path, *, timeout_s: float, stop: threading.Event | None = None
    ) -> dict: ...


@dataclass
class CycleOutcome:
    cycle_id: str
    verdict: str
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Resumption:
    cycle_id: str
    snapshot: Snapshot


def new_cycle_id() -> str:
    return f"c-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def base_model_fingerprint(base: str, revision: str | None) -> str:
    """Identifies the base model: its config and weight file names/sizes for a local directory."""
    path = Path(base)
    if not path.is_dir():
        return f"{base}@{revision or 'default'}"
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if item.suffix in (".json", ".safetensors", ".bin", ".model"):
            digest.update(item.name.encode())
            digest.update(str(item.stat().st_size).encode())
            if item.name in ("config.json", "model.safetensors.index.json"):
                digest.update(item.read_bytes())
    return digest.hexdigest()[:16]


def _flatten_result_metrics(result: dict, has_champion: bool) -> dict:
    trusted = result.get("eval", {}).get("trusted", {})
    heldout = result.get("eval", {}).get("batch_heldout", {})
    train = result.get("train", {})
    flat = {
        "candidate_eval_loss": (trusted.get("candidate") or {}).get("loss"),
        "champion_eval_loss": (trusted.get("champion") or {}).get("loss") if has_champion else None,
        "base_eval_loss": (trusted.get("base") or {}).get("loss"),
        "trusted_eval_examples": (trusted.get("candidate") or {}).get("examples"),
        "batch_heldout_candidate_loss": (heldout.get("candidate") or {}).get("loss"),
        "batch_heldout_champion_loss": (heldout.get("champion") or {}).get("loss"),
        "batch_heldout_examples": (heldout.get("candidate") or {}).get("examples"),
        "train_examples": train.get("examples"),
        "train_final_loss": train.get("final_loss"),
        "train_steps": train.get("steps"),
        "train_seconds": train.get("seconds"),
        "train_tokens_per_second": train.get("tokens_per_second"),
    }
    return {k: v for k, v in flat.items() if v is not None}


def tag_erased_versions(store: ExampleStore, registry: Registry) -> int:
    """Tags the model versions trained on erased examples; returns how many erasures are still pending."""
    pending = store.pending_erasures()
    for erasure in pending:
        for version in erasure["affected_versions"]:
            registry.set_version_tags(version, {
                "ticketune.trained_on_erased_data": "true",
                "ticketune.erasure_requested_at": erasure["requested_at"],
            })
        store.mark_erasure_tagged(erasure["erasure_id"])
    left = len(store.pending_erasures())
    metrics.ERASURES_PENDING.set(left)
    return left


class CycleRunner:
    """Runs cycles for one store against one registry; `run()` is safe to call from any thread."""

    def __init__(self, settings: Settings, store: ExampleStore, registry: Registry, executor: Executor) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.executor = executor

    def run(
        self, *, trigger: str = "manual", force: bool = False, stop: threading.Event | None = None,
        lock_wait_seconds: float | None = 0.0,
    ) -> CycleOutcome:
        with store_lock(self.store.path, "cycle", wait_seconds=lock_wait_seconds):
            return self._run_locked(trigger=trigger, force=force, stop=stop)

    def _run_locked(self, *, trigger: str, force: bool, stop: threading.Event | None) -> CycleOutcome:
        cfg = self.settings
        try:
            champion = self.registry.champion_version()
            tag_erased_versions(self.store, self.registry)
        except Exception as exc:  # the registry is unreachable: nothing to compare with, so no cycle
            metrics.CYCLES.labels(verdict=VERDICT_FAILED).inc()
            return CycleOutcome(new_cycle_id(), VERDICT_FAILED, reasons=[str(exc).splitlines()[0]])
        retrain = champion is not None and champion in self.store.versions_trained_on_erased_data()
        resumption = self._resumption(champion, retrain)
        if resumption is not None:
            cycle_id, snapshot = resumption.cycle_id, resumption.snapshot
        else:
            self._remove_stale_checkpoints()
            cycle_id, snapshot = new_cycle_id(), None
            pending = self.store.pending_count()
            if retrain:
                log.info("cycle %s: champion %s was trained on erased data: a fresh adapter on all trusted data",
                         cycle_id, champion)
            if not (force or retrain) and pending < cfg.schedule.min_new_examples:
                metrics.CYCLES.labels(verdict=VERDICT_SKIPPED).inc()
                return CycleOutcome(
                    cycle_id,
                    VERDICT_SKIPPED,
                    reasons=[f"{pending} new examples since the last cycle, schedule.min_new_examples is "
                             f"{cfg.schedule.min_new_examples}"],
                )
        attempt = self.store.start_cycle(cycle_id, trigger)
        notes = [f"resumes cycle {cycle_id} attempt {attempt}"] if resumption else []
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
                    replay_all=retrain,
                )
            skip = self._why_skip(snapshot, retrain)
            if skip:
                outcome = CycleOutcome(cycle_id, VERDICT_SKIPPED, reasons=notes + [skip])
                return outcome
            if resumption is not None:
                log.info("cycle %s: attempt %d on snapshot %s, resuming from its checkpoints",
                         cycle_id, attempt, snapshot.id)
                spec_path = cycle_dir / "spec.json"
            else:
                log.info("cycle %s: training on %s (champion %s)", cycle_id, snapshot.counts, champion)
                spec_path = self._write_spec(cycle_dir, snapshot, champion, warm=not retrain)
            run_id = self.registry.start_cycle_run(
                cycle_id, self._run_params(snapshot, attempt), self._run_tags(snapshot, attempt)
            )
            result = self.executor.run(
                spec_path, cycle_dir / "out" / "result.json",
                timeout_s=cfg.training.timeout_minutes * 60, stop=stop,
            )
            outcome = self._judge_and_register(cycle_id, run_id, snapshot, champion, result, retrain, attempt)
            outcome.reasons = notes + outcome.reasons
            self.registry.log_artifacts(run_id, cycle_dir / "out", "worker")
            self.registry.end_run(run_id, "FINISHED")
            metrics.LAST_SUCCESSFUL_CYCLE.set(time.time())
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
            metrics.CYCLES.labels(verdict=outcome.verdict).inc()
            self.store.finish_cycle(
                cycle_id, verdict=outcome.verdict, model_version=outcome.version,
                snapshot_id=snapshot.id if snapshot else None, reasons=outcome.reasons, metrics=outcome.metrics,
                retryable=retryable,
            )
            if retryable and attempt < cfg.training.max_attempts:
                log.info("cycle %s: attempt %d failed; the next run resumes it from its checkpoints",
                         cycle_id, attempt)
            else:
                shutil.rmtree(cycle_dir / "checkpoints", ignore_errors=True)
            self._prune_cycle_dirs()

    def _resumption(self, champion: str | None, retrain: bool) -> _Resumption | None:
        """The failed cycle to retry with its own id, snapshot and spec, if every condition holds."""
        failed = self.store.retryable_cycle()
        if failed is None:
            return None
        attempts = self.settings.training.max_attempts
        if failed.attempts >= attempts:
            log.warning("cycle %s failed %d times (training.max_attempts %d): abandoning it for a fresh cycle "
                        "with a fresh snapshot", failed.cycle_id, failed.attempts, attempts)
            return None
        snapshot = self.store.load_snapshot(failed.snapshot_id)
        why_not = self._why_not_resume(failed.cycle_id, snapshot, champion, retrain)
        if why_not:
            log.info("cycle %s is not resumed (%s): starting a fresh cycle", failed.cycle_id, why_not)
            return None
        return _Resumption(failed.cycle_id, snapshot)

    def _why_not_resume(self, cycle_id: str, snapshot: Snapshot, champion: str | None, retrain: bool) -> str | None:
        cycle_dir = self.settings.training.work_dir / cycle_id
        try:
            spec = json.loads((cycle_dir / "spec.json").read_text("utf-8"))
        except (OSError, ValueError):
            return f"no readable spec.json in {cycle_dir}"
        named = [spec.get("train_file"), spec.get("validation_file"), spec.get("init_adapter"),
                 *(spec.get("eval_files") or {}).values(), *(spec.get("compare_adapters") or {}).values()]
        missing = [path for path in named if path is not None and not Path(path).exists()]
        if missing or spec.get("snapshot_id") != snapshot.id:
            return f"its data in {cycle_dir} is gone or belongs to another snapshot"
        if snapshot.champion_version != champion:
            return f"the champion is {champion} now, its snapshot was taken against {snapshot.champion_version}"
        if {key: spec.get(key) for key in self._worker_settings()} != self._worker_settings():
            return "the model, adapter or training settings changed since"
        if retrain and spec.get("init_adapter") is not None:
            return f"it starts from champion {champion}, which has since been found trained on erased data"
        return None

    def _worker_settings(self) -> dict:
        """What the spec takes from the config; a retry needs them unchanged to resume its checkpoints."""
        cfg = self.settings
        return {
            "base_model": cfg.model.base,
            "base_revision": cfg.model.revision,
            "adapter": cfg.adapter.model_dump(mode="json"),
            "training": cfg.training.model_dump(mode="json", include=set(WORKER_TRAINING_FIELDS)),
        }

    def _remove_stale_checkpoints(self) -> None:
        """A fresh cycle starts: no earlier cycle will resume from its checkpoints any more."""
        for checkpoints in self.settings.training.work_dir.glob("c-*/checkpoints"):
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

    def _write_spec(self, cycle_dir: Path, snapshot: Snapshot, champion: str | None, *, warm: bool) -> Path:
        """`warm=False` trains a fresh adapter: the champion was trained on data erased since."""
        cfg = self.settings
        files = snapshot.write_jsonl(cycle_dir / "data", cfg.training.validation_fraction)
        champion_dir = None
        if champion is not None:
            champion_dir = self.registry.download_adapter(champion, cycle_dir / "champion")
        init = champion_dir if warm and cfg.training.warm_start == "champion" else None
        spec = {
            "cycle_id": snapshot.cycle_id,
            "snapshot_id": snapshot.id,
            **self._worker_settings(),
            "output_dir": str(cycle_dir / "out"),
            "init_adapter": str(init) if init else None,
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "eval_files": {"trusted": str(files["trusted"]), "batch_heldout": str(files["batch_heldout"])},
            "compare_adapters": {"champion": str(champion_dir)} if champion_dir else {},
            "evaluate_base": True,
            "checkpoint_dir": str(cycle_dir / "checkpoints"),
            "progress_file": str(cycle_dir / "out" / "progress.json"),
        }
        spec_path = cycle_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), "utf-8")
        return spec_path

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

    def _run_tags(self, snapshot: Snapshot, attempt: int) -> dict:
        cfg = self.settings
        return {
            "ticketune.cycle_id": snapshot.cycle_id,
            "ticketune.attempt": str(attempt),
            "ticketune.snapshot_id": snapshot.id,
            "ticketune.base_model": cfg.model.base,
            "ticketune.base_model_fingerprint": base_model_fingerprint(cfg.model.base, cfg.model.revision),
            "ticketune.parent_champion": snapshot.champion_version or "",
            "ticketune.config_hash": cfg.config_hash(),
            "ticketune.code_version": code_version(),
        }

    def _judge_and_register(
        self, cycle_id: str, run_id: str, snapshot: Snapshot, champion: str | None, result: dict, retrain: bool,
        attempt: int,
    ) -> CycleOutcome:
        """`retrain`: the champion was trained on erased data and must be replaced, so the fresh
        candidate is judged against the base model, not against the champion it replaces."""
        cfg = self.settings
        flat = _flatten_result_metrics(result, has_champion=champion is not None)
        categories = {example["ticket_id"]: example.get("category") for example in snapshot.trusted_eval}
        verdict = judge(
            inputs_from_result(result, has_champion=champion is not None and not retrain, categories=categories),
            cfg.gate,
        )
        reasons = verdict.reasons
        if retrain:
            reasons.append(f"note: retrained from scratch without erased data; champion {champion} was "
                           "trained on it, so the reference is the base model")
        numeric = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
        self.registry.log_metrics(run_id, numeric)
        for step, loss in result.get("train", {}).get("loss_curve", []):
            self.registry.log_metrics(run_id, {"train_loss": float(loss)}, step=int(step))
        decision = VERDICT_PROMOTED if verdict.passed else VERDICT_REJECTED
        tags = {
            **self._run_tags(snapshot, attempt),
            "ticketune.verdict": decision,
            "ticketune.reasons": json.dumps(reasons),
            "ticketune.metrics": json.dumps(numeric, sort_keys=True),
            "ticketune.gate": json.dumps(verdict.to_dict()),
            "ticketune.adapter_method": adapter_methods.describe(
                cfg.adapter.method, cfg.adapter.use_rslora, cfg.training.quantization
            ),
            "ticketune.gate_profile": cfg.gate.profile,
        }
        adapter_dir = Path(result["adapter_dir"])
        # the placeholder vocabulary travels with the adapter: serving fills or strips what the model writes
        (adapter_dir / "ticketune_placeholders.json").write_text(json.dumps(PLACEHOLDERS, indent=2), "utf-8")
        version = self.registry.register_candidate(run_id, adapter_dir, tags)
        self.store.freeze_trusted_set(version, snapshot.id, champion, cfg.gate.trusted_eval_cap)
        if verdict.passed:
            self.registry.promote(version, reason=f"cycle {cycle_id} passed the gate")
        self.store.close_batch(snapshot.id, verdict=decision, model_version=version)
        if "candidate_eval_loss" in numeric:
            metrics.CANDIDATE_EVAL_LOSS.set(numeric["candidate_eval_loss"])
        if "train_tokens_per_second" in numeric:
            metrics.TRAINING_TOKENS_PER_SECOND.set(numeric["train_tokens_per_second"])
        log.info("cycle %s: version %s %s", cycle_id, version, decision)
        return CycleOutcome(cycle_id, decision, version=version, reasons=reasons, metrics=flat)

    def _prune_cycle_dirs(self) -> None:
        root = self.settings.training.work_dir
        if not root.is_dir():
            return
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith("c-")), key=lambda d: d.name)
        for old in dirs[: -self.settings.training.keep_cycle_dirs]:
            shutil.rmtree(old, ignore_errors=True)
