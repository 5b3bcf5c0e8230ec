"""Load: a soak of many tickets (200,000 in the full profile) through the real service while a cycle
trains in its child process. The service's memory must stay flat (its RSS is sampled throughout),
the lag must drain, and the store must end up equal to one ingest of the same topic by the real
`ticketune ingest` (nothing lost, nothing duplicated)."""

from __future__ import annotations

import json
import threading
import time

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
from ingest_load import SteadyProducer, build_records, compare_stores, produce_all, reference_ingest, store_rows

TICKETS = pick(12_000, 203_000)
WARMUP_RECORDS = 3_000
TOKEN = "soak-admin-token"
# the service's RSS may grow by at most this much between the end of warm-up and the end of the soak
MAX_RSS_DRIFT_MB = 48.0


class RssSampler(threading.Thread):
    def __init__(self, service: ServiceProcess, every_s: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.service, self.every_s = service, every_s
        self.samples: list[tuple[float, float, float]] = []  # (seconds, consumed, rss MB)
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.wait(self.every_s):
            try:
                consumed = self.service.metric("ticketune_tickets_consumed_total")
                self.samples.append((time.monotonic() - started, consumed, self.service.rss_mb()))
            except Exception:  # noqa: BLE001 - a missed sample is fine; the process may be ending
                continue


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                     data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_soak_while_a_cycle_trains_memory_stays_flat_the_lag_drains_and_nothing_is_lost(
    tmp_path, broker, unique_topic, tiny_model_dir, mlflow_sqlite_uri
):
    topic = unique_topic("soak")
    # one partition: which of two near-duplicate tickets is kept depends on arrival order, and the
    # comparison with the reference ingest needs the same order (the crash test covers two partitions)
    broker.create_topics([topic], partitions=1)
    sections = {"model": {"base": str(tiny_model_dir)}}
    config = write_config(tmp_path / "config.yaml", sections | {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "soak", max_poll_records=500),
        "server": {"admin_token": TOKEN},
        "training": {"max_steps": 20, "max_seq_len": 256, "row_tokens": 1024, "work_dir": "./cycles"},
        "gate": {"min_eval_examples": 5, "profile": "demo", "trusted_eval_cap": 64, "check_behaviour": False},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "model_name": "soak", "poll_seconds": 0},
    })
    records = build_records(TICKETS, seed=31, start_id=1_000_000)
    warmup, soak = records[:WARMUP_RECORDS], records[WARMUP_RECORDS:]
    producer = SteadyProducer(broker.bootstrap_servers, topic, soak, rate_per_s=1e9, chunk=2000)

    def drained(expected: int) -> bool:
        values = service.metrics()
        return (values.get("ticketune_consumer_lag_records", -1) == 0
                and values.get("ticketune_tickets_consumed_total", 0) >= expected)

    def run_cycle() -> None:
        status, body = post(service.port, "/v1/cycles", {"force": True})
        assert status == 202, body
        wait_for(lambda: service.metric("ticketune_cycle_running") == 1, 60, "the cycle to start")

    with ServiceProcess(config) as service:
        service.start()
        service.wait_healthy(60)
        # warm-up: some tickets and one whole cycle, so that what a first cycle loads once in the service
        # (MLflow's client, the report's plotting library) is in the baseline
        produce_all(broker.bootstrap_servers, topic, warmup)
        wait_for(lambda: drained(len(warmup)), 600, "the warm-up tickets", on_timeout=service.log_tail)
        run_cycle()
        wait_for(lambda: service.metric("ticketune_cycle_running") == 0, 900, "the warm-up cycle to end")
        sampler = RssSampler(service)
        sampler.start()
        time.sleep(2.5)
        started = time.monotonic()
        producer.start()
        # the soak's cycle starts once a few thousand more tickets are in and trains while the rest streams in
        wait_for(lambda: service.metric("ticketune_tickets_consumed_total") >= len(warmup) + 2000, 600,
                 "the soak's first tickets", on_timeout=service.log_tail)
        run_cycle()
        cycle_started_at_consumed = service.metric("ticketune_tickets_consumed_total")
        producer.finish(timeout_s=1800)
        produced_at = time.monotonic()
        wait_for(lambda: drained(len(records)), 3600, "the lag to drain", interval_s=1.0, on_timeout=service.log_tail)
        drained_at = time.monotonic()
        wait_for(lambda: service.metric("ticketune_cycle_running") == 0, 900, "the cycle to end", interval_s=2.0)
        _, status_body = http_get(service.port, "/v1/status", token=TOKEN)
        last_cycle = json.loads(status_body)["last_cycle"]
        time.sleep(2.0)
        sampler.halt.set()
        sampler.join(5)
        metrics = service.metrics()
        assert service.terminate(60) == 0

    assert last_cycle["verdict"] in ("promoted", "rejected"), last_cycle
    assert integrity_check(service.store_path) == "ok"

    samples = sampler.samples
    warm, end = samples[0], samples[-1]  # after the warm-up cycle; after the soak and its cycle
    peak = max(s[2] for s in samples)
    drift = end[2] - warm[2]
    report, expected = reference_ingest(tmp_path / "reference", broker.bootstrap_servers, topic, sections)
    assert report["consumed"] == len(records)
    compared = compare_stores(expected, store_rows(service.store_path))
    figures = {
        "tickets_produced": len(records),
        "warmup_tickets": len(warmup),
        "soak_tickets": len(soak),
        "tickets_consumed": int(metrics.get("ticketune_tickets_consumed_total", 0)),
        "examples_stored": len(expected),
        **compared,
        "cycle_verdict": last_cycle["verdict"],
        "cycle_started_after_tickets": int(cycle_started_at_consumed),
        "rss_mb_after_warmup_cycle": round(warm[2], 1),
        "rss_mb_at_end": round(end[2], 1),
        "rss_mb_peak": round(peak, 1),
        "rss_drift_mb": round(drift, 1),
        "rss_samples": len(samples),
        # (tickets consumed, RSS MB) at about every twentieth of the soak, to see where memory went
        "rss_trace": [[int(c), round(r, 1)] for _, c, r in samples[:: max(1, len(samples) // 20)]],
        "soak_ingest_seconds": round(drained_at - started, 1),
        "tickets_per_second": round(len(soak) / (drained_at - started)),
        "lag_drain_seconds_after_last_produce": round(drained_at - produced_at, 1),
    }
    record_figures("soak", figures)
    assert drift <= MAX_RSS_DRIFT_MB, f"the service's memory grew by {drift:.1f} MB: {figures}"
