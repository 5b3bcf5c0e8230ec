"""Ingest throughput against a bare consume of the same topic, measured in one run.

Produces N sample tickets (about 1 KB each) to the embedded broker, then times (a) a bare
kafka-python consumer group reading the topic and (b) the full ticketune ingest: parse, pairs,
PII scrubbing, quality filters (token length, auto-replies, exact and MinHash near duplicates, with the
dedupe index in the store as the service keeps it), durable store writes and offset commits.
`--tokenizer DIR/tokenizer.json` counts tokens with a real tokenizer (as the service does with the base
model's); without it, the chars/4 estimate.
The last line printed is a JSON object: {"ingest_per_s": x, "bare_consume_per_s": y, "ratio": z, ...}, with
the CPU it ran on, the load average around the run (other work on the machine slows both sides alike) and
which CRC-32C kafka-python checks batches with (the C one from the crc32c package, or pure Python).

    python bench/ingest_throughput.py [--tickets 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import kafka.record.util as kafka_record_util
from kafka import KafkaConsumer

from connectors.broker import EmbeddedBroker
from connectors.formats import parser_for
from connectors.kafka import KafkaTicketSource, produce_tickets
from daemon.config import KafkaConfig, QualityConfig
from daemon.demo.samples import generate_tickets
from daemon.ingest.filters import QualityFilter
from daemon.ingest.loop import run_ingest
from daemon.store import ExampleStore

GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 60000}


def bare_consume(bootstrap: str, topic: str, expected: int) -> float:
    """Seconds for a plain consumer group to read `expected` records (from the first record on)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="bench-bare", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=500, **GROUP_TIMEOUTS)
    seen = 0
    started = None
    while seen < expected:
        batch = consumer.poll(timeout_ms=1000, max_records=500)
        n = sum(len(records) for records in batch.values())
        if n and started is None:
            started = time.perf_counter()
        seen += n
    consumer.commit()
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def ticketune_ingest(
    bootstrap: str, topic: str, expected: int, store_path: Path, tokenizer: Path | None
) -> tuple[float, dict]:
    """Seconds for the full ingest of `expected` records, timed from the first record as above."""
    config = KafkaConfig(bootstrap_servers=bootstrap, topic=topic, group_id="bench-ticketune",
                         dlq_topic=topic + ".dlq", **GROUP_TIMEOUTS)
    source = KafkaTicketSource(config)
    store = ExampleStore(store_path)
    quality = QualityFilter(QualityConfig(), tokenizer, store=store)  # as the service wires it: the index in the store
    quality.load(())
    first_batch_at: list[float] = []

    def mark(report) -> None:
        if not first_batch_at:
            first_batch_at.append(time.perf_counter())

    parse = parser_for("canonical")
    first = run_ingest(source, parse, store, max_records=1, on_batch=mark, quality=quality)
    report = run_ingest(source, parse, store, max_records=expected - 1, quality=quality)
    elapsed = time.perf_counter() - first_batch_at[0]
    source.close()
    store.close()
    totals = report.to_json()
    totals["consumed"] += first.consumed
    totals["stored"] += first.stored
    return elapsed, totals


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=20000)
    parser.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer.json for the length filter")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    tickets = generate_tickets(args.tickets, seed=42)
    mean_bytes = sum(len(json.dumps(t)) for t in tickets) / len(tickets)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=Path(tmp)) as broker:
        topic = "bench.tickets"
        broker.create_topics([topic, topic + ".dlq"], partitions=1)
        produce_tickets(KafkaConfig(bootstrap_servers=broker.bootstrap_servers), topic, tickets)
        bare_s = bare_consume(broker.bootstrap_servers, topic, len(tickets))
        ingest_s, report = ticketune_ingest(
            broker.bootstrap_servers, topic, len(tickets), Path(tmp) / "ex.db", args.tokenizer
        )

    load_after = os.getloadavg()[0]
    bare_rate = len(tickets) / bare_s
    ingest_rate = len(tickets) / ingest_s
    print(f"tickets {len(tickets)} of {mean_bytes:.0f} bytes on average")
    print(f"bare kafka-python consume: {bare_s:.2f} s, {bare_rate:,.0f} tickets/s")
    print(f"ticketune ingest:          {ingest_s:.2f} s, {ingest_rate:,.0f} tickets/s "
          f"(stored {report['stored']}, skipped {report['skipped']})")
    crc = "C (crc32c)" if kafka_record_util.crc32c_c is not None else "pure Python"
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
          f"{load_after:.2f} after; kafka-python CRC-32C: {crc}")
    print(json.dumps({"ingest_per_s": round(ingest_rate, 1), "bare_consume_per_s": round(bare_rate, 1),
                      "ratio": round(ingest_rate / bare_rate, 3), "tickets": len(tickets),
                      "mean_ticket_bytes": round(mean_bytes), "cpu": cpu_model(),
                      "load_average": [round(load_before, 2), round(load_after, 2)], "crc32c": crc}))


if __name__ == "__main__":
    main()
