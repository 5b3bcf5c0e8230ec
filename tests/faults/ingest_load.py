"""Topics to throw at the service: canonical tickets mixed with revisions, tombstones and bad records,
produced at a steady rate from a background thread while the test does its damage."""

from __future__ import annotations

import json
import random
import threading
import time

from daemon.demo.samples import generate_tickets

BAD_PREFIX = "bad-"


def bad_values(ticket: dict, rng: random.Random) -> bytes:
    """One invalid record of several shapes, each a dead letter with its own reason."""
    shape = rng.randrange(5)
    if shape == 0:
        return b"\xff\xfe\x00 not UTF-8 \xc3\x28"
    if shape == 1:
        return json.dumps(ticket).encode()[: rng.randrange(10, 200)]  # truncated JSON
    if shape == 2:
        return json.dumps({k: v for k, v in ticket.items() if k != "messages"}).encode()  # a required field gone
    if shape == 3:
        return json.dumps([ticket]).encode()  # not an object
    return json.dumps(ticket | {"messages": "not a list"}).encode()  # a mistyped field


def build_records(count: int, seed: int, start_id: int) -> list[tuple[str, bytes | None]]:
    """(key, value) records: tickets keyed by id, about 6% bad records (keys `bad-...`), 3% later
    revisions of an earlier ticket and 1% tombstones (null values) of one."""
    rng = random.Random(seed)
    records: list[tuple[str, bytes | None]] = []
    for index, ticket in enumerate(generate_tickets(count, seed=seed, start_id=start_id)):
        draw = rng.random()
        if draw < 0.06:
            records.append((f"{BAD_PREFIX}{ticket['ticket_id']}", bad_values(ticket, rng)))
            continue
        records.append((str(ticket["ticket_id"]), json.dumps(ticket).encode()))
        if draw < 0.09 and ticket.get("resolved_at"):
            revised = json.loads(json.dumps(ticket))
            revised["updated_at"] = "2026-12-01T00:00:00Z"
            for message in reversed(revised["messages"]):
                if message.get("author_role") == "agent" and message.get("public", True):
                    message["body"] = f"{message['body']} (Revised answer {index}: we also sent a confirmation.)"
                    break
            records.append((str(ticket["ticket_id"]), json.dumps(revised).encode()))
        elif draw < 0.10:
            records.append((str(ticket["ticket_id"]), None))
    return records


class SteadyProducer(threading.Thread):
    """Produces `records` in order at about `rate_per_s` (acks=all) until done or stopped."""

    def __init__(self, bootstrap_servers: str, topic: str, records: list[tuple[str, bytes | None]],
                 rate_per_s: float, chunk: int = 100) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.bootstrap_servers, self.topic, self.records = bootstrap_servers, topic, records
        self.rate_per_s, self.chunk = rate_per_s, chunk
        self.sent = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all", linger_ms=5,
                                 max_request_size=4 * 2**20)
        try:
            started = time.monotonic()
            for begin in range(0, len(self.records), self.chunk):
                if self.halt.is_set():
                    break
                futures = [producer.send(self.topic, key=key.encode(), value=value)
                           for key, value in self.records[begin:begin + self.chunk]]
                producer.flush()
                for future in futures:
                    future.get(timeout=60)
                self.sent += len(futures)
                ahead = self.sent / self.rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    self.halt.wait(ahead)
        except BaseException as exc:  # the test reads it
            self.error = exc
        finally:
            producer.close()

    def finish(self, timeout_s: float) -> None:
        self.join(timeout_s)
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}")
        assert not self.is_alive(), "the producer did not finish"


def store_rows(path) -> dict[str, tuple]:
    """ticket id → (revision, split, example JSON) of every stored example."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0]: tuple(row[1:]) for row in con.execute(
            "SELECT ticket_id, revision, split, example_json FROM examples")}
    finally:
        con.close()


def reference_ingest(work_dir, bootstrap_servers: str, topic: str, sections: dict) -> tuple[dict, dict[str, tuple]]:
    """The oracle: `ticketune ingest` of the whole topic once, without faults, with its own group,
    store and dead-letter topic (`<topic>.ref-dlq`). Returns its JSON report and its stored rows."""
    import subprocess
    import sys

    from harness import REPO, kafka_section, write_config

    config = write_config(work_dir / "config.yaml", sections | {
        "kafka": kafka_section(bootstrap_servers, topic, "reference-" + topic) | {"dlq_topic": topic + ".ref-dlq"},
        "store": {"path": "./store/examples.db"},
    })
    done = subprocess.run([sys.executable, "-m", "daemon.app.cli", "ingest", "--config", str(config), "--json",
                           "--idle-timeout", "8"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), store_rows(work_dir / "store" / "examples.db")


def compare_stores(expected: dict[str, tuple], got: dict[str, tuple]) -> dict[str, int]:
    """Fails unless both stores hold the same tickets with the same content; the counts otherwise."""
    missing = expected.keys() - got.keys()
    extra = got.keys() - expected.keys()
    differing = [tid for tid in expected.keys() & got.keys() if expected[tid] != got[tid]]
    assert not missing and not extra and not differing, (
        f"{len(missing)} tickets missing (e.g. {sorted(missing)[:5]}), {len(extra)} extra "
        f"(e.g. {sorted(extra)[:5]}), {len(differing)} stored differently (e.g. {differing[:5]})")
    return {"tickets_lost": len(missing), "tickets_extra_or_different": len(extra) + len(differing)}


def produce_all(bootstrap_servers: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    """Produces `records` now, as fast as the broker takes them; fails if any is not acknowledged."""
    producer = SteadyProducer(bootstrap_servers, topic, records, rate_per_s=1e9, chunk=1000)
    producer.run()
    if producer.error is not None:
        raise AssertionError(f"producing to {topic} failed: {producer.error!r}")
    assert producer.sent == len(records)
