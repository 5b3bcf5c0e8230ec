"""The ingest loop against a real broker (embedded Tansu) and the real example store."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Sequence

import pytest
from fixture_broker import canonical_ticket, produce
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from connectors.broker import BrokerError, EmbeddedBroker, free_loopback_port
from connectors.formats import parser_for
from connectors.kafka import KafkaTicketSource
from daemon.config import KafkaConfig
from daemon.demo.samples import generate_revision, generate_tickets
from daemon.ingest.loop import IngestReport, run_ingest
from daemon.ingest.pairs import Example, ticket_to_example
from daemon.store import Deletion, ExampleStore
from daemon.tickets import ticket_from_dict

parse = parser_for("canonical")


def kafka_config(broker, topic: str, group_id: str | None = None, **overrides) -> KafkaConfig:
    # short group timeouts: a consumer group's first join waits about half the session timeout
    settings = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        "dlq_topic": f"{topic}.dlq",
        "group_id": group_id or f"ticketune-{uuid.uuid4().hex[:8]}",
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "max_poll_interval_ms": 10000,
    }
    return KafkaConfig(**(settings | overrides))


def ingest(config: KafkaConfig, store, **options) -> tuple[IngestReport, int | None]:
    """Runs the loop with a fresh source until idle (or `max_records`); returns the report and final lag."""
    source = KafkaTicketSource(config)
    try:
        report = run_ingest(
            source,
            parse,
            store,
            idle_timeout_s=options.pop("idle_timeout_s", 3.0),
            poll_timeout_s=0.2,
            **options,
        )
        lag = source.lag()
        return report, None if lag is None else sum(lag.values())
    finally:
        source.close()


def read_topic(broker, topic: str, expected: int, timeout_s: float = 10.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def store(tmp_path):
    s = ExampleStore(tmp_path / "examples.db")
    yield s
    s.close()


def test_stores_tickets_and_dead_letters_bad_messages_with_their_origin_then_goes_on(
    broker, unique_topic, store
):
    topic = unique_topic()
    broker.create_topics([topic], partitions=2)
    broker.create_topics([f"{topic}.dlq"])
    too_large = canonical_ticket("big", answer="x" * 3000)
    produced = produce(
        broker.bootstrap_servers,
        topic,
        [
            ("1", canonical_ticket("1"), 0),
            ("2", canonical_ticket("2"), 1),
            ("bad-json", b'{"ticket_id": "3", "status":', 1),
            ("no-messages", json.dumps({"ticket_id": "4", "status": "solved"}).encode(), 1),
            ("bad-utf8", b'{"ticket_id": "5\xff\xfe"}', 0),
            ("big", too_large, 1),
            ("6", canonical_ticket("6", status="open"), 0),
            ("7", canonical_ticket("7"), 1),
            ("8", canonical_ticket("8"), 0),
        ],
    )

    report, lag = ingest(kafka_config(broker, topic, max_message_bytes=2048), store)

    assert report.to_json() == {
        "consumed": 9,
        "stored": 4,
        "skipped": {"not_resolved": 1},
        "dead_lettered": 4,
        "deleted": 0,
    }
    assert {ticket_id for ticket_id in "12345678" if store.get_example(ticket_id)} == {"1", "2", "7", "8"}
    assert lag == 0
    assert REGISTRY.get_sample_value("ticketune_consumer_lag_records") == 0

    dead = read_topic(broker, f"{topic}.dlq", expected=4)
    by_key = {record.key.decode(): record for record in dead}
    assert sorted(by_key) == ["bad-json", "bad-utf8", "big", "no-messages"]
    expected_reasons = {
        "bad-json": "invalid_json",
        "no-messages": "invalid_ticket",
        "bad-utf8": "invalid_utf8",
        "big": "too_large",
    }
    origin = dict(zip(["1", "2", "bad-json", "no-messages", "bad-utf8", "big"], produced, strict=False))
    for key, record in by_key.items():
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["ticketune.error.reason"] == expected_reasons[key]
        assert headers["ticketune.error.detail"]
        assert headers["ticketune.error"].startswith(expected_reasons[key] + ": ")
        assert headers["ticketune.source.topic"] == topic
        assert (
            int(headers["ticketune.source.partition"]),
            int(headers["ticketune.source.offset"]),
        ) == origin[key]
        assert headers["ticketune.failed_at"].endswith("+00:00")
    assert by_key["bad-utf8"].value == b'{"ticket_id": "5\xff\xfe"}'  # the original bytes, untouched
    assert (
        "messages: Field required" in dict(by_key["no-messages"].headers)["ticketune.error.detail"].decode()
    )


def test_sample_tickets_and_their_revisions_are_stored_as_the_pairs_rules_say(broker, unique_topic, store):
    tickets = generate_tickets(40, seed=7)
    revisions = [generate_revision(ticket) for ticket in tickets[:5]]
    topic = unique_topic()
    broker.create_topics([topic], partitions=2)
    produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets + revisions], batched=True)
    expected: dict[str, int] = {}
    with_example = {revision["ticket_id"] for revision in revisions}
    for ticket in tickets:
        outcome = ticket_to_example(ticket_from_dict(ticket))
        key = "stored" if isinstance(outcome, Example) else outcome.reason
        expected[key] = expected.get(key, 0) + 1
        if isinstance(outcome, Example):
            with_example.add(outcome.ticket_id)

    report, lag = ingest(kafka_config(broker, topic), store, max_records=45)

    assert (report.consumed, report.dead_lettered, lag) == (45, 0, 0)
    assert report.stored == expected.pop("stored") + 5  # every revision is resolved and answered
    assert report.skipped == expected
    assert store.counts()["examples"] == len(with_example)


def test_a_dead_letter_too_large_for_the_producer_keeps_its_headers_without_the_value(
    broker, unique_topic, store, monkeypatch
):
    monkeypatch.setattr("connectors.kafka.DLQ_MAX_REQUEST_BYTES", 0)  # the DLQ producer then takes 2 x 2048 B
    topic = unique_topic()
    broker.create_topics([topic, f"{topic}.dlq"])
    [(partition, offset)] = produce(
        broker.bootstrap_servers, topic, [("huge", canonical_ticket("9", answer="x" * 9000))]
    )

    report, _ = ingest(kafka_config(broker, topic, max_message_bytes=2048), store, max_records=1)

    [dead] = read_topic(broker, f"{topic}.dlq", expected=1)
    headers = {name: value.decode() for name, value in dead.headers}
    assert report.dead_lettered == 1 and dead.key == b"huge" and dead.value == b""
    assert headers["ticketune.error.reason"] == "too_large"
    assert headers["ticketune.error.value_omitted"] == "true"
    assert (int(headers["ticketune.source.partition"]), int(headers["ticketune.source.offset"])) == (
        partition,
        offset,
    )


def test_redelivery_to_another_consumer_group_changes_nothing(broker, unique_topic, store):
    topic = unique_topic()
    broker.create_topics([topic])
    produce(broker.bootstrap_servers, topic, [(str(i), canonical_ticket(str(i))) for i in range(3)])

    first, _ = ingest(kafka_config(broker, topic), store, max_records=3)
    before = [store.get_example(str(i)) for i in range(3)]
    again, _ = ingest(kafka_config(broker, topic), store, max_records=3)

    assert first.to_json()["stored"] == 3
    assert again.to_json() == {
        "consumed": 3,
        "stored": 0,
        "skipped": {"duplicate": 3},
        "dead_lettered": 0,
        "deleted": 0,
    }
    assert [store.get_example(str(i)) for i in range(3)] == before


def test_a_later_revision_wins_whatever_the_arrival_order(broker, unique_topic, store):
    topic = unique_topic()
    broker.create_topics([topic])
    produce(
        broker.bootstrap_servers,
        topic,
        [
            ("1", canonical_ticket("1", answer="Newest answer.", updated_at="2026-11-03T09:00:00Z")),
            ("1", canonical_ticket("1", answer="Older answer.", updated_at="2026-11-02T09:00:00Z")),
            ("2", canonical_ticket("2", answer="First answer.", updated_at="2026-11-02T09:00:00Z")),
            ("2", canonical_ticket("2", answer="Revised answer.", updated_at="2026-11-04T09:00:00Z")),
        ],
    )

    report, _ = ingest(kafka_config(broker, topic), store, max_records=4)

    assert report.stored == 3 and report.skipped == {"stale_revision": 1}
    assert store.get_example("1")["messages"][-1]["content"] == "Newest answer."
    assert store.get_example("2")["messages"][-1]["content"] == "Revised answer."


def test_a_tombstone_deletes_the_ticket(broker, unique_topic, store):
    topic = unique_topic()
    broker.create_topics([topic])
    produce(
        broker.bootstrap_servers,
        topic,
        [
            ("1", canonical_ticket("1")),
            ("2", canonical_ticket("2")),
            ("1", None),
            ("never-seen", None),
        ],
    )

    report, _ = ingest(kafka_config(broker, topic), store, max_records=4)

    assert report.to_json() == {"consumed": 4, "stored": 2, "skipped": {}, "dead_lettered": 0, "deleted": 1}
    assert store.get_example("1") is None and store.get_example("2") is not None


def test_a_restarted_consumer_resumes_right_after_the_last_stored_record(broker, unique_topic, store):
    topic = unique_topic()
    broker.create_topics([topic], partitions=3)
    produce(broker.bootstrap_servers, topic, [(str(i), canonical_ticket(str(i))) for i in range(10)])
    config = kafka_config(broker, topic, max_poll_records=3)

    first, lag_after_first = ingest(config, store, max_records=4)
    second, lag_after_second = ingest(config, store)

    assert (first.consumed, first.stored, lag_after_first) == (4, 4, 6)
    assert (second.consumed, second.stored, second.skipped, lag_after_second) == (6, 6, {}, 0)
    assert store.counts()["examples"] == 10


def test_lag_counts_records_past_the_brokers_reported_end(broker, unique_topic, store):
    # Tansu's ListOffsets trails a multi-record batch; the fetch highwater does not.
    topic = unique_topic()
    broker.create_topics([topic])
    produce(
        broker.bootstrap_servers, topic, [(str(i), canonical_ticket(str(i))) for i in range(5)], batched=True
    )

    config = kafka_config(broker, topic)

    first, lag = ingest(config, store, max_records=2)
    rest, final_lag = ingest(config, store, max_records=3)

    assert (first.consumed, lag) == (2, 3)
    assert (rest.consumed, final_lag) == (3, 0)


class FailingStore:
    """The real store, except that writes fail until `healthy` is set: nothing may be committed meanwhile."""

    def __init__(self, store: ExampleStore, stop: threading.Event) -> None:
        self.store = store
        self.stop = stop
        self.failures = 0

    def apply(self, changes: Sequence[Example | Deletion]) -> list[str]:
        self.failures += 1
        if self.failures >= 2:
            self.stop.set()
        raise OSError("disk full")


def test_offsets_are_not_committed_when_the_store_write_fails(broker, unique_topic, store):
    topic = unique_topic()
    broker.create_topics([topic])
    produce(broker.bootstrap_servers, topic, [(str(i), canonical_ticket(str(i))) for i in range(3)])
    config = kafka_config(broker, topic)
    stop = threading.Event()
    failing = FailingStore(store, stop)

    source = KafkaTicketSource(config)
    try:
        failed = run_ingest(source, parse, failing, stop=stop, idle_timeout_s=10, poll_timeout_s=0.2)
    finally:
        source.close()
    retried, _ = ingest(config, store, max_records=3)

    assert failing.failures == 2 and failed.consumed == 0 and failed.source_errors == 2
    assert (retried.consumed, retried.stored) == (3, 3)


def test_an_unreachable_broker_is_retried_and_reported_never_raised(monkeypatch, store):
    monkeypatch.setattr("connectors.kafka.BOOTSTRAP_TIMEOUT_MS", 500)
    monkeypatch.setattr("daemon.ingest.loop.BACKOFF_INITIAL_S", 0.1)
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        config = KafkaConfig(bootstrap_servers=f"127.0.0.1:{placeholder.getsockname()[1]}", topic="tickets")
    errors_before = REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "poll"}) or 0
    threads_before = threading.active_count()

    report, lag = ingest(config, store, idle_timeout_s=2.0)

    assert report.consumed == 0 and report.source_errors >= 2 and lag is None
    assert threading.active_count() <= threads_before  # failed connection attempts leave no thread behind
    assert REGISTRY.get_sample_value("ticketune_kafka_up") == 0
    assert REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "poll"}) >= errors_before + 2


def test_creating_an_existing_topic_is_a_no_op(broker, unique_topic):
    topic = unique_topic()
    broker.create_topics([topic], partitions=2)
    broker.create_topics([topic], partitions=5)

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1}
    finally:
        consumer.close()


def test_a_broker_that_fails_to_start_is_reported_with_its_log(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'error: Address already in use'\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(BrokerError, match=r"(?s)exited with code 3.*Address already in use"):
        EmbeddedBroker(binary=str(fake), port=free_loopback_port(), log_dir=tmp_path).start()


def test_quality_filters_skip_duplicates_and_low_csat_and_remember_across_restarts(broker, unique_topic, store):
    from daemon.config import QualityConfig
    from daemon.ingest.filters import QualityFilter

    def fresh_filter() -> QualityFilter:  # what the service builds at start
        quality = QualityFilter(QualityConfig(min_csat=3), tokenizer_path=None)
        quality.load(store.quality_signatures())
        return quality

    topic = unique_topic("quality")
    original = canonical_ticket("q1", requester="Ana Ruiz")
    copy_in_batch = {**original, "ticket_id": "q2"}
    unhappy = {**canonical_ticket("q3", requester="Bo Li"), "csat": 1}
    produce(broker.bootstrap_servers, topic, [("q1", original), ("q2", copy_in_batch), ("q3", unhappy)])
    report, _ = ingest(kafka_config(broker, topic), store, quality=fresh_filter())
    assert report.stored == 1
    assert report.skipped == {"exact_duplicate": 1, "low_csat": 1}

    produce(broker.bootstrap_servers, topic, [("q4", {**original, "ticket_id": "q4"})])
    group = "after-restart"
    report, _ = ingest(kafka_config(broker, topic, group_id=group), store, quality=fresh_filter())
    # a new group reads all four: q1 is a redelivery, q2 and q4 copy it, q3 is still unhappy
    assert report.skipped == {"duplicate": 1, "exact_duplicate": 2, "low_csat": 1} and report.stored == 0


@pytest.mark.parametrize("vendor", ["zendesk", "freshdesk", "intercom", "helpscout", "salesforce"])
def test_each_helpdesk_format_is_ingested_from_the_broker(vendor, broker, unique_topic, store):
    from pathlib import Path

    payload = (Path(__file__).resolve().parents[1] / "data" / "formats" / f"{vendor}.json").read_bytes()
    topic = unique_topic(vendor)
    produce(broker.bootstrap_servers, topic, [("t-1", payload), ("t-2", payload[: len(payload) // 2])])
    source = KafkaTicketSource(kafka_config(broker, topic, format=vendor))
    try:
        report = run_ingest(source, parser_for(vendor), store, idle_timeout_s=3.0, poll_timeout_s=0.2)
    finally:
        source.close()
    assert (report.consumed, report.stored, report.dead_lettered) == (2, 1, 1)
    stored = store._db.execute("SELECT example_json FROM examples").fetchone()[0]
    assert json.loads(stored)["messages"][-1]["role"] == "assistant"


def test_a_stopped_consumer_leaves_its_group_so_a_restart_gets_its_partitions_well_within_the_session_timeout(
    broker, unique_topic
):
    """`close()` sends LeaveGroup: the restarted consumer (same group) joins as fast as a fresh one, instead of
    waiting for the coordinator to expire the old member (the session timeout, then a rebalance)."""
    topic = unique_topic()
    broker.create_topics([topic], partitions=3)
    session_ms = 10000  # Tansu delays every join by about half of it; an expired member costs all of it and more
    config = kafka_config(broker, topic, session_timeout_ms=session_ms, heartbeat_interval_ms=1000)

    def seconds_to_assignment() -> float:
        source = KafkaTicketSource(config)
        started = time.monotonic()
        try:
            while not source.assigned():
                assert time.monotonic() - started < 60, "no assignment within 60 s"
                source.poll(0.2)
            return time.monotonic() - started
        finally:
            source.close()

    first = seconds_to_assignment()
    restarted = seconds_to_assignment()
    assert restarted < session_ms / 1000 and restarted < first + 2.0, (first, restarted)
