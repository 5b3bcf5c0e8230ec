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
