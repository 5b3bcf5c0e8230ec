"""What a real Service does at start: gauges restored from the store, series that exist before their
first event, an interrupted cycle resumed soon instead of at the next scheduled tick."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import REGISTRY

from daemon.app.service import Service
from daemon.config import load_settings
from daemon.store import open_store


def test_the_last_successful_cycle_gauge_is_restored_from_the_journal_at_start(service_config):
    settings = load_settings(service_config, environ={})
    store = open_store(settings.store)
    store.start_cycle("c-old", "schedule")
    store.finish_cycle("c-old", verdict="rejected", model_version="1", snapshot_id=None, reasons=[], metrics={})
    decided = datetime.fromisoformat(store.cycles(limit=1)[0]["ended_at"]).timestamp()
    store.start_cycle("c-new", "schedule")  # a later cycle that reached no decision does not count
    store.finish_cycle("c-new", verdict="failed", model_version=None, snapshot_id=None, reasons=["x"], metrics={})
    store.close()
    service = Service(settings)
    service.startup(with_scheduler=False, with_ingest=False)
    try:
        assert REGISTRY.get_sample_value("ticketune_last_successful_cycle_timestamp_seconds") == decided > 0
    finally:
        service.shutdown()


def test_every_labelled_counter_has_its_known_series_before_any_event(service_config):
    import yaml

    config = yaml.safe_load(service_config.read_text())
    config["serving"] = {"targets": [{"kind": "webhook", "url": "http://127.0.0.1:1/hook", "secret": "k"}]}
    service_config.write_text(yaml.safe_dump(config))
    service = Service(load_settings(service_config, environ={}))
    service.startup(with_scheduler=False)
    try:
        def sample(name: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(name, labels)

        for verdict in ("promoted", "rejected", "awaiting_approval", "skipped", "failed"):
            assert sample("ticketune_cycles_total", verdict=verdict) is not None, verdict
        for action in ("promote", "approve", "rollback", "outside_move"):
            assert sample("ticketune_champion_moves_total", action=action) is not None, action
        for gate in ("passed", "failed"):
            assert sample("ticketune_outside_alias_moves_total", gate=gate) is not None, gate
        for reason in ("not_resolved", "low_csat", "near_duplicate", "stale_revision", "erased"):
            assert sample("ticketune_tickets_skipped_total", reason=reason) is not None, reason
        for reason in ("invalid_json", "invalid_ticket", "unsupported_payload", "too_large", "internal_error"):
            assert sample("ticketune_dead_lettered_total", reason=reason) is not None, reason
        for kind in ("start", "poll", "store", "commit", "lag", "undecodable", "dead_letter"):
            assert sample("ticketune_ingest_errors_total", kind=kind) is not None, kind
        for outcome in ("delivered", "failed", "refused", "superseded"):
            assert sample("ticketune_serving_notifications_total", target_kind="webhook", outcome=outcome) is not None
        assert sample("ticketune_serving_last_success_timestamp_seconds", target_kind="webhook") is not None
    finally:
        service.shutdown()


def test_every_parse_reason_in_the_code_is_a_known_dead_letter_series():
    import re
    from pathlib import Path

    from daemon.tickets import PARSE_REASONS

    root = Path(__file__).resolve().parents[1]
    used = {reason for path in [*root.glob("daemon/**/*.py"), *root.glob("connectors/**/*.py")]
            for reason in re.findall(r'TicketParseError\(\s*"(\w+)"', path.read_text("utf-8"))}
    assert used and used <= set(PARSE_REASONS), used - set(PARSE_REASONS)


def test_a_cycle_interrupted_by_a_stop_resumes_soon_after_start_not_at_the_next_tick(
    service_config, monkeypatch, caplog
):
    import threading

    from daemon.app import service as service_module

    settings = load_settings(service_config, environ={})
    store = open_store(settings.store)
    store.start_cycle("c-interrupted", "schedule")
    snapshot = store.create_snapshot("c-interrupted", None, replay_fraction=0.0)
    store.finish_cycle("c-interrupted", verdict="failed", model_version=None, snapshot_id=snapshot.id,
                       reasons=["training worker stopped: the service is shutting down"], metrics={}, retryable=True)
    store.close()
    monkeypatch.setattr(service_module, "RESUME_DELAY_S", 0.2)
    service = Service(settings)
    triggers: list[str] = []
    ran = threading.Event()

    def run_cycle(*, trigger: str, force: bool = False):
        triggers.append(trigger)
        ran.set()
        return service_module.CycleOutcome("c-interrupted", "promoted")

    monkeypatch.setattr(service, "run_cycle", run_cycle)
    caplog.set_level("INFO", logger="ticketune.service")
    service.startup(with_ingest=False)  # schedule.enabled is false: no tick would ever come
    try:
        assert ran.wait(10) and triggers == ["restart"]
        assert "cycle c-interrupted was interrupted on attempt 1; it resumes from its checkpoints at" in caplog.text
    finally:
        service.shutdown()


def test_a_cycle_skipped_because_another_process_runs_one_is_recorded_in_the_journal(service_config):
    from daemon.store import store_lock

    settings = load_settings(service_config, environ={})
    service = Service(settings)
    skipped_before = REGISTRY.get_sample_value("ticketune_cycles_total", {"verdict": "skipped"}) or 0.0
    try:
        with store_lock(service.store.path, "cycle", wait_seconds=0):  # `ticketune cycle` in another process
            outcome = service.run_cycle(trigger="schedule")
        assert outcome.verdict == "skipped" and outcome.cycle_id
        row = service.store.cycle(outcome.cycle_id)
        assert (row["verdict"], row["trigger"]) == ("skipped", "schedule")
        assert "holds the cycle lock" in row["reasons"][0] and row["reasons"] == outcome.reasons
        assert REGISTRY.get_sample_value("ticketune_cycles_total", {"verdict": "skipped"}) == skipped_before + 1
    finally:
        service.store.close()
