"""The long-running service: ingest + retrain schedule + HTTP, with graceful shutdown.

`serve()` reads like uvicorn's: install signal handlers, `startup()`, `main_loop()`, `shutdown()`.
The first SIGINT/SIGTERM asks for a graceful exit (the ingest loop commits what it stored, the
scheduler stops, a running cycle's worker checkpoints and exits and the cycle is recorded as failed
and retryable), within `server.shutdown_budget_seconds`; the second signal forces it. One service
per store: `startup()` takes the store's service lock and holds it until `shutdown()`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from connectors.formats import parser_for
from connectors.kafka import KafkaTicketSource
from connectors.registry import (
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from daemon import metrics
from daemon.app.http import AdminError, Endpoints, start_http_server
from daemon.app.wiring import build_cycle_runner, build_keeper, build_quality_filter, build_registry, collect_status
from daemon.champion.keeper import ApprovalError, NoChampionError, PromotionRefusedError
from daemon.champion.probation import OnlineMonitor
from daemon.champion.rules import in_api_words
from daemon.champion.versions import tag_erased_versions
from daemon.config import Settings
from daemon.cycle.runner import CycleOutcome
from daemon.cycle.scheduler import next_run_time, start_scheduler
from daemon.ingest.feedback import FeedbackRules
from daemon.ingest.loop import ERROR_KIND_START, IngestReport, declare_series, run_ingest, set_broker_up
from daemon.ingest.privacy import policy_from_config
from daemon.logs import mask_url_password
from daemon.store import LockBusy, lock_holder, open_store, store_lock

log = logging.getLogger("ticketune.service")

UPKEEP_INTERVAL_S = 600.0
CYCLE_ID_WAIT_S = 30.0  # POST /v1/cycles answers once the cycle is in the journal, or after this long
RESUME_DELAY_S = 10.0  # an interrupted cycle resumes this long after start (the parts are up by then)
SERVICE_LOCK = "service"


class Service:
    """Composes the parts; `stop` is the one flag every loop watches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.store = open_store(settings.store)
        self.registry = build_registry(settings)
        self.keeper = build_keeper(settings, self.store, self.registry)
        self.serving = self.keeper.serving
        self.cycles = build_cycle_runner(settings, self.store, self.registry, self.keeper)
        self.online = OnlineMonitor(settings, self.store, self.keeper)
        self.ingest_totals = IngestReport()
        self.ingest_running = False
        self.kafka_state = "not connected yet"  # "up", or "down: <why>" (readiness details)
        self.store_writes = "ok"  # or "failing: <why>" while ingest cannot write (a full disk; readiness details)
        self.last_cycle: CycleOutcome | None = None
        self._moves_seen: tuple[int, int] | None = None  # the audit log's mark at the last champion gauge refresh
        self.started_at = time.time()
        self._threads: list[threading.Thread] = []
        self._cycle_lock = threading.Lock()
        self._held = ExitStack()  # the service lock, from startup to shutdown
        self._holds_lock = False
        self._scheduler = None
        self._http = None
        self._watchdog: threading.Timer | None = None

    # life cycle ------------------------------------------------------------------------------
    def serve(self) -> None:
        self.install_signal_handlers()
        self._hold_service_lock()  # a second service stops here, before anything it would have to stop
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle_exit)

    def _handle_exit(self, signum: int, frame: object) -> None:
        if self.stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        budget = self.settings.server.shutdown_budget_seconds
        log.info("signal %s: shutting down gracefully (within %.0f s)", signal.Signals(signum).name, budget)
        self._watchdog = threading.Timer(budget, self._exit_over_budget, args=(budget,))
        self._watchdog.daemon = True
        self._watchdog.start()
        self.stop.set()

    @staticmethod
    def _exit_over_budget(budget: float) -> None:
        log.error("shutdown took longer than server.shutdown_budget_seconds (%g s): exiting now", budget)
        for handler in logging.getLogger().handlers:  # flush, not close: the process ends right after
            handler.flush()
        os._exit(1)

    def startup(self, *, with_scheduler: bool = True, with_ingest: bool = True) -> None:
        self._hold_service_lock()
        self.reconcile()
        failed = self.store.fail_unfinished_cycles("the service stopped while the cycle ran")
        if failed:
            log.warning("marked %d interrupted cycle(s) as failed", failed)
        self._refresh_gauges(include_registry=True)
        self.upkeep()
        server = self.settings.server
        token = server.admin_token.get_secret_value() if server.admin_token else None
        self._http = start_http_server(server.host, server.port, Endpoints(
            status=self.status, ready=self.ready, admin_token=token,
            admin_actions={"cycle": self._admin_cycle, "cycle_status": self._admin_cycle_status,
                           "rollback": self._admin_rollback,
                           "promote": self._admin_promote, "approve": self._admin_approve,
                           "history": self._admin_history},
        ))
        log.info("http on %s:%d (/metrics, /healthz, /readyz, admin API %s)", server.host, self.http_port,
                 "on: /v1/openapi.json" if token else "off: no server.admin_token")
        if with_ingest:
            declare_series()
            self._spawn("ingest", self._ingest_forever)
        if self.settings.registry.poll_seconds > 0:
            self._spawn("alias-watch", self._watch_alias_forever)
        if with_scheduler:
            self._scheduler = start_scheduler(self.settings.schedule, self._scheduled_cycle)
            self._resume_interrupted_cycle()

    def main_loop(self) -> None:
        last_upkeep, last_serving_flush = 0.0, time.monotonic()
        while not self.stop.wait(5.0):
            self._refresh_gauges()
            self._check_online()
            if time.monotonic() - last_upkeep >= UPKEEP_INTERVAL_S:
                last_upkeep = last_serving_flush = time.monotonic()
                self.upkeep()
            elif time.monotonic() - last_serving_flush >= self.settings.serving.retry_interval_seconds:
                last_serving_flush = time.monotonic()
                self.serving.flush()

    def _check_online(self) -> None:
        """The champion's online probation; a failure (the registry away) is retried at the next loop."""
        try:
            self.online.check()
        except Exception as exc:
            log.warning("online probation: %s; trying again at the next loop", exc)

    def reconcile(self) -> None:
        """Settles what a crash left halfway (audit rows, half-registered versions, an interrupted
        promotion) before any cycle runs; an unreachable registry is retried by the next cycle's own checks."""
        try:
            with store_lock(self.store.path, "cycle", wait_seconds=0):
                self.keeper.reconcile()
        except LockBusy:
            log.info("reconcile: another process runs a cycle on this store; it is left to it")
        except Exception as exc:
            log.warning("reconcile: the registry could not be checked now (%s); versions left registering "
                        "stay unpromotable until the next cycle or start settles them", exc)

    def _watch_alias_forever(self) -> None:
        """Polls the champion alias (`registry.poll_seconds`); a move made in the MLflow UI is handled
        like ticketune's own rollback."""
        while not self.stop.wait(self.settings.registry.poll_seconds):
            if self._cycle_lock.locked():
                continue  # a cycle may be promoting right now; look again after it
            try:
                self.keeper.watch_once()
            except Exception as exc:
                log.warning("alias watch: %s; trying again in %.0f s", exc, self.settings.registry.poll_seconds)

    def upkeep(self) -> None:
        """Retention, erasure tagging and pending serving notifications; failures are retried at the next round."""
        self.serving.flush()
        try:
            if self.settings.store.retention_days is not None:
                purged = self.store.purge_older_than(self.settings.store.retention_days)
                metrics.RETENTION_DELETED.inc(purged)
                if purged:
                    log.info("retention: deleted %d examples older than %s days", purged,
                             self.settings.store.retention_days)
            tag_erased_versions(self.store, self.registry)
        except Exception as exc:
            log.warning("upkeep failed, retrying later: %s", exc)

    def _hold_service_lock(self) -> None:
        """One service per store: a second `ticketune run` on the same store exits (code 3) here."""
        if self._holds_lock:
            return
        try:
            self._held.enter_context(store_lock(self.store.path, SERVICE_LOCK, wait_seconds=0))
        except LockBusy:
            raise LockBusy(
                f"{lock_holder(Path(f'{self.store.path}.{SERVICE_LOCK}.lock'))} already serves the store "
                f"{self.store.path}; ticketune runs one replica per store by design: stop the other one, or give "
                "this one its own store.path"
            ) from None
        self._holds_lock = True

    def shutdown(self) -> None:
        """Stops the parts in reverse order within `server.shutdown_budget_seconds`: the scheduler, a
        running cycle (its worker checkpoints and exits), the ingest loop (it commits what it stored), HTTP."""
        started = time.monotonic()
        deadline = started + self.settings.server.shutdown_budget_seconds
        self.stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._cycle_lock.acquire(timeout=max(deadline - time.monotonic(), 0.1)):
            self._cycle_lock.release()
        else:
            log.warning("shutdown: the running cycle did not end within the budget")
        for thread in reversed(self._threads):
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
            if thread.is_alive():
                log.warning("shutdown: %s did not stop within the budget", thread.name)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.store.close()
        self._held.close()
        if self._watchdog is not None:  # stopped within the budget: no forced exit (matters in-process: the demo)
            self._watchdog.cancel()
        log.info("stopped in %.1f s", time.monotonic() - started)

    @property
    def http_port(self) -> int:
        return self._http.server_address[1] if self._http else 0

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ingest ------------------------------------------------------------------------------
    def _ingest_forever(self) -> None:
        """Holds the ingest lock and runs the loop until stop; rebuilds the source after a failure."""
        cfg = self.settings
        parse = parser_for(cfg.kafka.format, cfg.kafka.ai_assist)
        while not self.stop.is_set():
            try:
                with store_lock(self.store.path, "ingest", wait_seconds=5.0):
                    quality = build_quality_filter(cfg, self.store)
                    source = KafkaTicketSource(cfg.kafka)
                    self.ingest_running = True
                    try:
                        report = run_ingest(
                            source, parse, self.store, system_prompt=cfg.model.system_prompt, stop=self.stop,
                            on_batch=self._note_ingest_progress, poll_timeout_s=cfg.kafka.poll_timeout_ms / 1000,
                            quality=quality, scrub=cfg.privacy.scrub, privacy=policy_from_config(cfg.privacy),
                            on_broker=self._note_broker, on_store=self._note_store_writes,
                            feedback=FeedbackRules.from_settings(cfg),
                        )
                        log.info("ingest loop ended: %s", report.to_json())
                    finally:
                        self.ingest_running = False
                        source.close()
            except LockBusy as exc:
                log.warning("%s", exc)
                self.stop.wait(10.0)
            except Exception as exc:  # broker unreachable at start, bad credentials...: retry, never die
                self._note_broker(False, f"{type(exc).__name__}: {exc}")
                set_broker_up(False)
                metrics.INGEST_ERRORS.labels(kind=ERROR_KIND_START).inc()
                log.error("ingest: %s; retrying in 10 s", exc)
                self.stop.wait(10.0)

    def _note_ingest_progress(self, report: IngestReport) -> None:
        self.ingest_totals = report  # the running report of the current ingest loop

    def _note_broker(self, up: bool, detail: str) -> None:
        self.kafka_state = "up" if up else f"down: {mask_url_password(detail)[:300]}"

    def _note_store_writes(self, ok: bool, detail: str) -> None:
        self.store_writes = "ok" if ok else f"failing: {detail[:300]}"

    # cycles ------------------------------------------------------------------------------
    def run_cycle(self, *, trigger: str, force: bool = False) -> CycleOutcome:
        with self._cycle_lock:
            return self._run_cycle_locked(trigger=trigger, force=force)

    def _run_cycle_locked(self, *, trigger: str, force: bool,
                          on_recorded: Callable[[str], None] | None = None) -> CycleOutcome:
        outcome = self.cycles.run(trigger=trigger, force=force, stop=self.stop, on_recorded=on_recorded,
                                  skip_when_busy=True)
        if outcome.verdict != "skipped" or self.last_cycle is None:
            self.last_cycle = outcome
        self._refresh_gauges(include_registry=True)
        return outcome

    def _resume_interrupted_cycle(self) -> None:
        """A cycle that a stop interrupted (SIGTERM, a crash) with attempts left resumes from its
        checkpoints soon after start, not at the next scheduled tick (a day away with a daily cron); a
        Kubernetes Job of it that still runs is adopted. The cycle lock keeps it from overlapping another."""
        failed = self.store.retryable_cycle()
        if failed is None or failed.attempts >= self.settings.training.max_attempts:
            return
        at = datetime.fromtimestamp(time.time() + RESUME_DELAY_S, timezone.utc)
        log.info("cycle %s was interrupted on attempt %d; it resumes from its checkpoints at %s (in %.0f s)",
                 failed.cycle_id, failed.attempts, at.isoformat(timespec="seconds"), RESUME_DELAY_S)

        def resume() -> None:
            if not self.stop.wait(RESUME_DELAY_S):
                outcome = self.run_cycle(trigger="restart")
                log.info("resumed cycle: %s %s", outcome.verdict, "; ".join(outcome.reasons[:2]))

        self._spawn("resume-cycle", resume)

    def _scheduled_cycle(self) -> None:
        outcome = self.run_cycle(trigger="schedule")
        log.info("scheduled cycle: %s %s", outcome.verdict, "; ".join(outcome.reasons[:2]))

    def _admin_cycle(self, body: dict) -> dict:
        """Starts a cycle in its own thread and answers (202) with its id once the journal has it
        (`GET /v1/cycles/<id>` follows it); 409 while one runs here or in another process."""
        if self.stop.is_set():
            raise AdminError(503, "the service is shutting down", "shutting_down")
        if not self._cycle_lock.acquire(blocking=False):
            raise AdminError(409, "a cycle is already running", "cycle_running")
        try:
            with store_lock(self.store.path, "cycle", wait_seconds=0):
                pass  # a `ticketune cycle` of another process would make this one a skip
        except LockBusy:
            self._cycle_lock.release()
            raise AdminError(409, "a cycle is already running in another process on this store",
                             "cycle_running") from None
        force = bool(body.get("force", False))
        recorded: list[str] = []
        known = threading.Event()

        def note(cycle_id: str) -> None:
            recorded.append(cycle_id)
            known.set()

        def run() -> None:
            try:
                outcome = self._run_cycle_locked(trigger="admin", force=force, on_recorded=note)
                log.info("admin cycle %s: %s %s", outcome.cycle_id, outcome.verdict, "; ".join(outcome.reasons[:2]))
                note(outcome.cycle_id)  # one that failed before the journal had it (MLflow unreachable)
            finally:
                self._cycle_lock.release()

        self._spawn("admin-cycle", run)
        known.wait(CYCLE_ID_WAIT_S)
        cycle_id = recorded[0] if recorded and recorded[0] else None
        return {"accepted": True, "force": force, "cycle_id": cycle_id,
                "cycle_url": f"/v1/cycles/{cycle_id}" if cycle_id else None, "status_url": "/v1/status"}

    def _admin_cycle_status(self, body: dict) -> dict:
        """One cycle from the journal (`running` until it ends); one that failed before the journal had
        it is known from this service's last outcome."""
        cycle_id = str(body["cycle_id"])
        row = self.store.cycle(cycle_id)
        if row is not None:
            return row
        last = self.last_cycle
        if last is not None and last.cycle_id == cycle_id:
            return last.to_json()
        raise AdminError(404, f"no cycle {cycle_id} in the journal", "cycle_not_found")

    def rollback(self, to_version: str | None, *, reason: str) -> tuple[str | None, str]:
        move = self.keeper.rollback(to_version, reason=reason, actor="operator")
        return move.previous, move.current

    def _admin_move(self, body: dict, move) -> dict:
        """Runs a keeper move; the registry's refusals become the admin API's status codes."""
        try:
            return move(str(body.get("reason") or "admin API")).to_json()
        except VersionNotFoundError as exc:
            raise AdminError(404, str(exc), "version_not_found") from None
        except NoChampionError as exc:
            raise AdminError(409, in_api_words(str(exc)), "nothing_to_roll_back") from None
        except (PromotionRefusedError, ApprovalError) as exc:
            raise AdminError(409, in_api_words(str(exc)), "refused") from None
        except RegistryUnavailableError as exc:
            raise AdminError(503, mask_url_password(str(exc)), "registry_unavailable") from None
        except RegistryError as exc:
            raise AdminError(409, mask_url_password(str(exc)), "conflict") from None

    def _admin_rollback(self, body: dict) -> dict:
        force = bool(body.get("force"))
        return self._admin_move(body, lambda reason: self.keeper.rollback(
            body.get("to"), reason=reason, actor="admin", force=force))

    def _admin_promote(self, body: dict) -> dict:
        force = bool(body.get("force"))
        return self._admin_move(body, lambda reason: self.keeper.promote(
            str(body["version"]), reason=reason, actor="admin", force=force))

    def _admin_approve(self, body: dict) -> dict:
        return self._admin_move(body, lambda reason: self.keeper.approve(
            str(body["version"]), reason=reason, actor="admin"))

    def _admin_history(self, body: dict) -> dict:
        try:
            return {"versions": self.keeper.history()}
        except RegistryError as exc:
            raise AdminError(503, mask_url_password(str(exc)), "registry_unavailable") from None

    # status ------------------------------------------------------------------------------
    def _refresh_gauges(self, include_registry: bool = False) -> None:
        """The store's gauges; the champion's from the registry when asked, and once after each move any
        process on this store made (`ticketune promote|rollback` write the audit log the loop watches)."""
        try:
            counts = self.store.counts()
            metrics.STORE_EXAMPLES.set(counts["examples"])
            metrics.STORE_PENDING_EXAMPLES.set(counts["pending"])
            for kind, n in self.store.feedback_counts().items():
                metrics.FEEDBACK_EXAMPLES.labels(kind=kind).set(n)
            fresh = self.store.freshness()
            if fresh["newest_stored_at"]:
                newest = datetime.fromisoformat(fresh["newest_stored_at"])
                metrics.STORE_NEWEST_EXAMPLE_AGE.set((datetime.now(timezone.utc) - newest).total_seconds())
            decided = self.store.last_decided_at()  # any process's cycle, and across restarts
            metrics.LAST_SUCCESSFUL_CYCLE.set(datetime.fromisoformat(decided).timestamp() if decided else 0)
            metrics.STORE_EXAMPLES_BY_CATEGORY.clear()
            for category, n in fresh["by_category"].items():
                metrics.STORE_EXAMPLES_BY_CATEGORY.labels(category=category).set(n)
            moves = self.store.settled_moves_mark()  # read before the registry: a move ending meanwhile shows next time
            if (include_registry or moves != self._moves_seen) and self.keeper.refresh_gauges():
                self._moves_seen = moves
        except Exception as exc:  # gauges are best effort; readiness reports the real problem
            log.debug("gauge refresh failed: %s", exc)

    def ready(self) -> tuple[bool, dict]:
        """Ready while the store answers and no shutdown is under way.

        A broker outage, or a store that takes no writes (a full disk), shows in the details and in
        metrics but does not make the pod unready: an unready pod drops out of its Service, and with
        it the metrics that report the outage.
        """
        details: dict = {"ingest_running": self.ingest_running, "kafka": self.kafka_state,
                         "store_writes": self.store_writes, "stopping": self.stop.is_set()}
        try:
            self.store.counts()
            details["store"] = "ok"
        except Exception as exc:
            details["store"] = f"unavailable: {type(exc).__name__}"
        return details["store"] == "ok" and not self.stop.is_set(), details

    def status(self) -> dict:
        return collect_status(self.settings, self.store, self.registry) | {
            "ingest_running": self.ingest_running,
            "cycle_running": self._cycle_lock.locked(),
            "kafka": self.kafka_state,
            "next_cycle_at": next_run_time(self._scheduler),
            "uptime_seconds": round(time.time() - self.started_at),
        }
