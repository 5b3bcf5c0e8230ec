"""Crash during ingest: `kill -9` the real service at random points while it consumes a topic that a
producer keeps filling; after the restarts the store must equal what one uninterrupted ingest of the
same topic stores, and the dead-letter topic must hold every bad record at least once.

The oracle is the real code on the same records without faults: `ticketune ingest` with its own
group, store and dead-letter topic, run after the damage. The content filters that depend on arrival
order across partitions (exact and near-duplicate detection) are off here, since two partitions may
interleave differently in the two runs; what is checked is durability, not the filters.
"""

from __future__ import annotations

import random
import sqlite3
import time

from harness import (
    ServiceProcess,
    dead_letter_sources,
    integrity_check,
    kafka_section,
    pick,
    read_topic,
    record_figures,
    store_count,
    wait_for,
    write_config,
)
from ingest_load import BAD_PREFIX, build_records, compare_stores, produce_all, reference_ingest, store_rows

KILLS = pick(5, 30)
BACKLOG = 1500  # records produced before each start
PARTITIONS = 2


def deletions(path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0] for row in con.execute("SELECT ticket_id FROM deletions")}
    finally:
        con.close()


def drained(service: ServiceProcess, checks: int = 3) -> bool:
    """Lag 0 after records were consumed, in `checks` readings a second apart."""
    for check in range(checks):
        values = service.metrics()
        if values.get("ticketune_consumer_lag_records", -1) != 0 or not values.get("ticketune_tickets_consumed_total"):
            return False
        if check < checks - 1:
            time.sleep(1.0)
    return True


def test_kill9_at_random_points_during_ingest_loses_nothing(tmp_path, broker, unique_topic):
    rng = random.Random(20261129)
    topic = unique_topic("crash")
    broker.create_topics([topic], partitions=PARTITIONS)
    quality = {"dedupe_exact": False, "dedupe_near": False}
    model = {"base": str(tmp_path / "no-model")}  # ingest only: token counts fall back to chars/4
    config = write_config(tmp_path / "config.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "crash", group_instance_id="crash-0",
                               max_poll_records=200),
        "model": model, "quality": quality,
    })
    # each life starts with a backlog (produced while the service is down) that it is killed in the middle of
    records = build_records(BACKLOG * (KILLS + 1), seed=11, start_id=500_000)
    service = ServiceProcess(config)
    kills_mid_ingest = 0
    life_seconds: list[float] = []
    started = time.monotonic()
    try:
        for kill in range(KILLS + 1):
            chunk = records[kill * BACKLOG:(kill + 1) * BACKLOG] if kill < KILLS else records[kill * BACKLOG:]
            produce_all(broker.bootstrap_servers, topic, chunk)
            if kill == KILLS:
                break
            before = store_count(service.store_path)
            service.start()
            born = time.monotonic()
            if kill % 4 == 3:  # a random point of start-up: opening the store, the registry, joining the group
                time.sleep(rng.uniform(0.3, 3.0))
            else:  # a random point while it works through the backlog that built up while it was down
                wait_for(lambda: service.metric("ticketune_tickets_consumed_total") > 0, 120,
                         "the service to consume", interval_s=0.05, on_timeout=service.log_tail)
                time.sleep(rng.uniform(0.0, 1.5))
            consumed = service.metric("ticketune_tickets_consumed_total")
            service.kill9()
            life_seconds.append(time.monotonic() - born)
            if consumed > 0 and store_count(service.store_path) > before:
                kills_mid_ingest += 1
        # the last life: no kill; it drains the topic and stops gracefully
        service.start()
        service.wait_healthy(60)
        wait_for(lambda: drained(service), 300, "the consumer lag to drain", interval_s=1.0,
                 on_timeout=service.log_tail)
        assert service.terminate(60) == 0, service.log_tail()
    finally:
        service.kill9()
    fault_seconds = time.monotonic() - started
    assert integrity_check(service.store_path) == "ok"

    # the oracle: the same topic, ingested once, without faults
    expected_report, expected = reference_ingest(tmp_path / "reference", broker.bootstrap_servers, topic,
                                                 {"model": model, "quality": quality})
    assert expected_report["consumed"] == len(records)
    got = store_rows(service.store_path)
    compared = compare_stores(expected, got)
    assert deletions(service.store_path) == deletions(tmp_path / "reference" / "store" / "examples.db")

    source = read_topic(broker.bootstrap_servers, topic, timeout_s=120)
    assert len(source) == len(records)
    bad = {(r["partition"], r["offset"]) for r in source if r["key"] and r["key"].startswith(BAD_PREFIX.encode())}
    dead = dead_letter_sources(read_topic(broker.bootstrap_servers, topic + ".dlq", timeout_s=60))
    reference_dead = dead_letter_sources(read_topic(broker.bootstrap_servers, topic + ".ref-dlq", timeout_s=60))
    assert set(reference_dead) == bad and len(reference_dead) == len(bad)
    assert bad - set(dead) == set(), f"{len(bad - set(dead))} bad records never reached the dead-letter topic"
    assert set(dead) <= bad, "a good record was dead-lettered"

    record_figures("crash_ingest", {
        "kills": KILLS,
        "kills_while_storing": kills_mid_ingest,
        "records_produced": len(records),
        "partitions": PARTITIONS,
        "valid_tickets_stored": len(got),
        **compared,
        "tombstones_applied": len(deletions(service.store_path)),
        "bad_records": len(bad),
        "dead_letters_written": len(dead),
        "dead_letter_duplicates": len(dead) - len(set(dead)),
        "bad_records_missing_from_dlq": len(bad - set(dead)),
        "service_starts": service.starts,
        "mean_life_seconds": round(sum(life_seconds) / len(life_seconds), 2),
        "wall_seconds": round(fault_seconds, 1),
        "integrity_check": "ok",
    })
