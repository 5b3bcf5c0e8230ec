"""The ingest loop's own logic, with an in-memory source (tests/integration has the real broker)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import pytest
from fixture_broker import canonical_ticket
from prometheus_client import REGISTRY

from daemon.ingest.loop import IngestReport, SourceRecord, run_ingest
from daemon.ingest.pairs import Example
from daemon.store import Deletion, ExampleStore
from daemon.tickets import parse_canonical


def record(offset: int, key: str | None, value: bytes | dict | None) -> SourceRecord:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return SourceRecord("tickets", 0, offset, key.encode() if key is not None else None, raw)


class MemorySource:
    """Hands out prepared batches; writes every call into `events` so tests can check the order."""

    def __init__(
        self, batches: list[list[SourceRecord]], max_value_bytes: int | None = None, poll_failures: int = 0
    ) -> None:
        self.batches = [list(batch) for batch in batches]
        self.max_value_bytes = max_value_bytes
        self.poll_failures = poll_failures
        self.events: list[str] = []
        self.dead_letters: list[tuple[int, str, str]] = []
        self.polled = 0
        self.committed = 0

    def assigned(self) -> bool:
        return True

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]:
        if self.poll_failures:
            self.poll_failures -= 1
            raise ConnectionError("broker unreachable")
        if not self.batches:
            time.sleep(min(timeout_s, 0.01))
            return []
        batch = self.batches.pop(0)
        taken = batch[:max_records]
        if len(taken) < len(batch):
            self.batches.insert(0, batch[len(taken) :])
        self.polled += len(taken)
        self.events.append(f"poll:{len(taken)}")
        return taken

    def dead_letter(self, record: SourceRecord, reason: str, detail: str) -> None:
        self.events.append(f"dead_letter:{record.offset}")
        self.dead_letters.append((record.offset, reason, detail))

    def commit(self) -> None:
        self.events.append("commit")
        self.committed = self.polled

    def lag(self) -> dict[int, int] | None:
        return {0: sum(len(batch) for batch in self.batches)}

    def close(self) -> None:
        self.events.append("close")


class RecordingStore:
    """The real store; each apply is noted in the source's event log, and can be made to fail."""

    def __init__(self, store: ExampleStore, events: list[str], failures: int = 0) -> None:
        self.store = store
        self.events = events
        self.failures = failures

    def apply(self, changes: Sequence[Example | Deletion]) -> list[str]:
        if self.failures:
            self.failures -= 1
            self.events.append("apply:failed")
            raise OSError("database is locked")
        self.events.append(f"apply:{len(changes)}")
        return self.store.apply(changes)


@pytest.fixture
def example_store(tmp_path):
    store = ExampleStore(tmp_path / "examples.db")
    yield store
    store.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr("daemon.ingest.loop.BACKOFF_INITIAL_S", 0.01)


def ingest(source: MemorySource, store, parse=parse_canonical, **options) -> IngestReport:
    options.setdefault("idle_timeout_s", 0.2)
    return run_ingest(source, parse, store, poll_timeout_s=0.01, **options)


def test_each_batch_is_stored_in_one_write_and_committed_after_it(example_store):
    source = MemorySource(
        [
            [
                record(0, "1", canonical_ticket("1")),
                record(1, "x", b"not json"),
                record(2, "2", canonical_ticket("2")),
            ],
            [record(3, "3", canonical_ticket("3"))],
        ]
    )
    store = RecordingStore(example_store, source.events)

    report = ingest(source, store)

    assert source.events == ["poll:3", "dead_letter:1", "apply:2", "commit", "poll:1", "apply:1", "commit"]
    assert report.to_json() == {"consumed": 4, "stored": 3, "skipped": {}, "dead_lettered": 1, "deleted": 0}


def test_an_unexpected_error_on_one_record_dead_letters_it_as_internal_error_and_goes_on(example_store):
    def fragile_parse(value: bytes):
        if b"boom" in value:
            raise KeyError("Ana Ruiz <ana@example.com>")  # text of the ticket must not reach the detail
        return parse_canonical(value)

    poisoned = canonical_ticket("2", answer="boom")
    source = MemorySource(
        [
            [
                record(0, "1", canonical_ticket("1")),
                record(1, "2", poisoned),
                record(2, "3", canonical_ticket("3")),
            ]
        ]
    )
    before = REGISTRY.get_sample_value("ticketune_dead_lettered_total", {"reason": "internal_error"}) or 0

    report = ingest(source, example_store, parse=fragile_parse)

    assert (report.consumed, report.stored, report.dead_lettered) == (3, 2, 1)
    [(offset, reason, detail)] = source.dead_letters
    assert (offset, reason) == (1, "internal_error")
    assert "KeyError" in detail and "Ana" not in detail and "@" not in detail
    assert (
        REGISTRY.get_sample_value("ticketune_dead_lettered_total", {"reason": "internal_error"}) == before + 1
    )
    assert source.committed == 3


def test_a_value_over_the_size_limit_is_dead_lettered_as_too_large(example_store):
    big = canonical_ticket("1", answer="x" * 5000)
    source = MemorySource(
        [[record(0, "1", big), record(1, "2", canonical_ticket("2"))]], max_value_bytes=4096
    )

    report = ingest(source, example_store)

    assert [(offset, reason) for offset, reason, _ in source.dead_letters] == [(0, "too_large")]
    assert "limit is 4096" in source.dead_letters[0][2]
    assert report.stored == 1 and example_store.get_example("1") is None


def test_parse_errors_carry_the_parsers_reason(example_store):
    source = MemorySource(
        [
            [
                record(0, "a", b"\xff\xfe"),
                record(1, "b", b"[1, 2]"),
                record(2, "c", {"ticket_id": "c", "status": "solved"}),
                record(3, None, None),
            ]
        ]
    )

    report = ingest(source, example_store)

    assert [reason for _, reason, _ in source.dead_letters] == [
        "invalid_utf8",
        "not_an_object",
        "invalid_ticket",
        "tombstone_without_key",
    ]
    assert report.dead_lettered == 4 and report.consumed == 4


def test_skips_duplicates_stale_revisions_and_deletions_are_counted(example_store):
    newer = canonical_ticket("1", answer="New.", updated_at="2026-11-05T00:00:00Z")
    source = MemorySource(
        [
            [
                record(0, "1", newer),
                record(1, "1", newer),
                record(2, "1", canonical_ticket("1")),
                record(3, "2", canonical_ticket("2", status="pending")),
                record(4, "1", None),
                record(5, "9", None),
            ],
        ]
    )

    report = ingest(source, example_store)

    assert report.to_json() == {
        "consumed": 6,
        "stored": 1,
        "dead_lettered": 0,
        "deleted": 1,
        "skipped": {"duplicate": 1, "not_resolved": 1, "stale_revision": 1},
    }
    assert example_store.get_example("1") is None


def test_stops_after_max_records_without_consuming_more(example_store):
    source = MemorySource([[record(i, str(i), canonical_ticket(str(i))) for i in range(5)]])

    report = ingest(source, example_store, max_records=3, idle_timeout_s=None)

    assert (report.consumed, source.committed, source.lag()) == (3, 3, {0: 2})


def test_stops_when_idle_for_the_timeout():
    started = time.monotonic()

    report = ingest(MemorySource([]), store=None, idle_timeout_s=0.3)

    assert report.consumed == 0
    assert 0.3 <= time.monotonic() - started < 10.0


def test_stops_when_the_stop_event_is_set(example_store):
    stop = threading.Event()
    source = MemorySource([[record(0, "1", canonical_ticket("1"))], [record(1, "2", canonical_ticket("2"))]])

    report = ingest(source, example_store, stop=stop, idle_timeout_s=None, on_batch=lambda _: stop.set())

    assert report.consumed == 1 and source.committed == 1


def test_transient_source_errors_are_retried_and_show_in_the_metrics(example_store):
    source = MemorySource([[record(0, "1", canonical_ticket("1"))]], poll_failures=2)
    errors_before = REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "poll"}) or 0
    seen_up = []

    report = ingest(
        source,
        example_store,
        on_batch=lambda _: seen_up.append(REGISTRY.get_sample_value("ticketune_kafka_up")),
    )

    assert report.stored == 1 and report.source_errors == 2
    assert REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "poll"}) == errors_before + 2
    assert seen_up == [1.0]
    assert REGISTRY.get_sample_value("ticketune_consumer_lag_records") == 0
    assert REGISTRY.get_sample_value("ticketune_consumer_lag_partition_records", {"partition": "0"}) == 0


@pytest.mark.parametrize("ending", [{"max_records": 4, "idle_timeout_s": None}, {}])
def test_the_lag_is_read_once_an_interval_while_batches_flow_and_once_more_when_the_run_ends(
    example_store, monkeypatch, ending
):
    monkeypatch.setattr("daemon.ingest.loop.LAG_INTERVAL_S", 3600.0)
    source = MemorySource([[record(i, str(i), canonical_ticket(str(i)))] for i in range(5)])
    reads = []
    source_lag = source.lag
    monkeypatch.setattr(source, "lag", lambda: reads.append(source.polled) or source_lag())

    report = ingest(source, example_store, **ending)

    assert reads == [1, report.consumed]  # after the first batch, then where the run ended
    assert REGISTRY.get_sample_value("ticketune_consumer_lag_records") == 5 - report.consumed


def test_a_failed_store_write_is_retried_before_anything_is_committed(example_store):
    source = MemorySource([[record(0, "1", canonical_ticket("1"))]])
    store = RecordingStore(example_store, source.events, failures=2)

    report = ingest(source, store)

    assert source.events == ["poll:1", "apply:failed", "apply:failed", "apply:1", "commit"]
    assert report.stored == 1 and report.source_errors == 2


def test_stopping_while_the_store_fails_commits_nothing(example_store):
    stop = threading.Event()
    source = MemorySource([[record(0, "1", canonical_ticket("1"))]])

    class BrokenStore:
        def apply(self, changes):
            stop.set()
            raise OSError("disk full")

    report = ingest(source, BrokenStore(), stop=stop)

    assert "commit" not in source.events
    assert report.consumed == 0 and source.committed == 0


def test_a_broker_call_left_unanswered_is_reported_as_an_outage_while_it_still_waits(example_store, monkeypatch):
    """A paused broker keeps its sockets open: a dead-letter send hangs rather than fails."""
    monkeypatch.setattr("daemon.ingest.loop.BROKER_SILENT_S", 0.5)
    heard: list[tuple[float, bool, str]] = []
    started = time.monotonic()

    class HangingSource(MemorySource):
        def dead_letter(self, record, reason, detail):
            time.sleep(2.5)  # no answer for a while, then the broker is back
            super().dead_letter(record, reason, detail)

    source = HangingSource([[record(0, "bad", b"not json")]])
    report = ingest(source, example_store, on_broker=lambda up, detail: heard.append(
        (time.monotonic() - started, up, detail)))
    assert report.dead_lettered == 1
    silent = [(at, detail) for at, up, detail in heard if not up]
    assert silent and "no answer from the brokers" in silent[0][1] and "dead_letter" in silent[0][1]
    assert silent[0][0] < 2.5  # reported while the call still hung
    assert heard[-1][1] is True  # and up again once it answered


def test_classify_only_judges_and_the_loop_records_what_each_batch_keeps(example_store):
    from daemon.config import QualityConfig
    from daemon.ingest.filters import QualityFilter
    from daemon.ingest.loop import classify
    from daemon.ingest.pairs import Skip

    quality = QualityFilter(QualityConfig(min_tokens=1), None, store=example_store)
    quality.load(())
    first = record(0, "1", canonical_ticket("1"))
    copy = canonical_ticket("2") | {"subject": canonical_ticket("1")["subject"]}  # the same conversation
    judged = classify(first, parse_canonical, None, None, quality)
    assert isinstance(judged, Example) and judged.quality_signature and judged.dedupe_keys
    assert isinstance(classify(record(1, "2", copy), parse_canonical, None, None, quality), Example)
    assert isinstance(classify(record(2, "1", None), parse_canonical, None, None, quality), Deletion)
    assert len(quality) == 0  # judging recorded nothing

    # in one batch: a copy of a kept ticket is caught; once that ticket is deleted, its text is free again
    source = MemorySource([[first, record(1, "2", copy), record(2, "1", None), record(3, "3", copy | {
        "ticket_id": "3"})], [record(4, "4", copy | {"ticket_id": "4"})]])
    report = ingest(source, example_store, quality=quality)
    assert report.to_json() == {"consumed": 5, "stored": 2, "dead_lettered": 0, "deleted": 1,
                                "skipped": {"exact_duplicate": 2}}
    assert example_store.get_example("3") and example_store.get_example("2") is None
    assert example_store.indexed_count() == 1  # "3", written with the batch; "1" left with its deletion
    assert isinstance(classify(record(5, "5", copy | {"ticket_id": "5"}), parse_canonical, None, None, quality),
                      Skip)


class LateAssignment(MemorySource):
    """A consumer group whose first join takes `join_s`: no partitions, and no records, until then."""

    def __init__(self, batches: list[list[SourceRecord]], join_s: float) -> None:
        super().__init__(batches)
        self.joined_at = time.monotonic() + join_s

    def assigned(self) -> bool:
        return time.monotonic() >= self.joined_at

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]:
        if not self.assigned():
            time.sleep(min(timeout_s, 0.01))
            return []
        return super().poll(timeout_s, max_records)


def test_the_idle_clock_starts_at_the_first_assignment(example_store):
    source = LateAssignment([[record(0, "1", canonical_ticket("1"))]], join_s=0.6)
    report = ingest(source, example_store, idle_timeout_s=0.2, assignment_timeout_s=5)
    assert report.stored == 1 and not report.unassigned


def test_no_assignment_within_the_limit_ends_the_run_and_says_so(example_store):
    source = LateAssignment([[record(0, "1", canonical_ticket("1"))]], join_s=60)
    report = ingest(source, example_store, idle_timeout_s=0.2, assignment_timeout_s=0.4)
    assert report.unassigned and report.consumed == 0


class Undecodable(MemorySource):
    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]:
        from daemon.ingest.loop import UndecodableRecords

        raise UndecodableRecords("a batch on tickets uses a compression codec this installation cannot read")


def test_an_undecodable_batch_is_said_once_shown_in_readiness_and_counted(example_store, caplog):
    seen: list[tuple[bool, str]] = []
    before = REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "undecodable"}) or 0
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    with caplog.at_level("ERROR", logger="ticketune"):
        report = ingest(Undecodable([]), example_store, idle_timeout_s=None, stop=stop,
                        on_broker=lambda up, detail: seen.append((up, detail)))
    assert report.consumed == 0 and report.source_errors >= 2
    assert REGISTRY.get_sample_value("ticketune_ingest_errors_total", {"kind": "undecodable"}) >= before + 2
    assert seen and all(not up and "compression codec" in detail for up, detail in seen)
    said = [r for r in caplog.records if "compression codec" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"


def test_a_batch_is_judged_as_if_its_records_came_one_at_a_time(tmp_path):
    """The duplicate checks run for a whole poll batch against the store's answers read up front
    (`QualityFilter.prefetch`); what is kept, and why the rest is not, matches one record per batch."""
    from daemon.config import QualityConfig
    from daemon.demo.samples import generate_tickets
    from daemon.ingest.filters import QualityFilter

    tickets = generate_tickets(300, seed=5)
    records = [record(i, t["ticket_id"], t) for i, t in enumerate(tickets)]
    copies = [record(300 + i, f"copy-{i}", tickets[i] | {"ticket_id": f"copy-{i}"}) for i in range(0, 300, 7)]
    deletions = [record(400 + i, tickets[i]["ticket_id"], None) for i in range(0, 300, 11)]
    mixed = [*records[:150], *copies[:20], *deletions, *records[150:], *copies[20:], *records[:40]]

    def run(batch: int, name: str) -> tuple[dict, dict]:
        store = ExampleStore(tmp_path / f"{name}.db", identity_key=b"k" * 32)
        quality = QualityFilter(QualityConfig(), None, store=store)
        quality.load(())
        batches = [mixed[i : i + batch] for i in range(0, len(mixed), batch)]
        report = ingest(MemorySource(batches), store, quality=quality)
        kept = {r[0]: r[1] for r in store._db.execute("SELECT ticket_id, revision FROM examples")}
        store.close()
        return report.to_json(), kept

    together, kept_together = run(500, "together")
    alone, kept_alone = run(1, "alone")
    assert together == alone and kept_together == kept_alone
    skipped = together["skipped"]
    assert skipped.get("exact_duplicate", 0) + skipped.get("near_duplicate", 0) >= 40  # the copies at least
    assert 0 < together["deleted"] <= len(deletions)
