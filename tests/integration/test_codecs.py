"""Tickets from producers that compress: gzip, snappy, lz4 and zstd batches on the real (embedded) broker,
consumed by `ticketune ingest --idle-timeout 15` with the default consumer timeouts (a first group join
then takes about half the 45 s session timeout, so the idle clock must start at the assignment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixture_broker import canonical_ticket

REPO = Path(__file__).resolve().parents[2]
CODECS = ("gzip", "snappy", "lz4", "zstd")
PER_CODEC = 5


@pytest.mark.slow
def test_batches_of_every_codec_are_all_stored(broker, unique_topic, tmp_path):
    from kafka import KafkaProducer

    topic = unique_topic()
    for codec in CODECS:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", compression_type=codec,
                                 linger_ms=50)
        try:
            for n in range(PER_CODEC):
                ticket = canonical_ticket(f"{codec}-{n}", answer=f"Your {codec} order {n} ships on Monday.")
                producer.send(topic, key=ticket["ticket_id"].encode(), value=json.dumps(ticket).encode())
            producer.flush()
        finally:
            producer.close()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "dlq_topic": f"{topic}.dlq",
                  "group_id": f"codecs-{topic[-8:]}"},
        "store": {"path": str(tmp_path / "examples.db")},
    }))
    completed = subprocess.run(
        [sys.executable, "-m", "daemon.app.cli", "ingest", "--config", str(config), "--idle-timeout", "15", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["consumed"] == len(CODECS) * PER_CODEC, (report, completed.stderr[-2000:])
    assert report["stored"] == len(CODECS) * PER_CODEC and report["dead_lettered"] == 0
