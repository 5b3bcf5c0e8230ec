"""Bad input: generated garbage never crashes a parser or the ingest loop, and every bad record is a dead
letter with a reason.

Hypothesis feeds arbitrary bytes, invalid UTF-8, arbitrary and deeply nested JSON, huge messages and the
real helpdesk samples with fields removed or mistyped (tests/faults/strategies.py) to every parser, and
to `run_ingest` over an in-memory source with the real SQLite store and quality filter; then a few
hundred generated records go through the embedded broker and a real `ticketune ingest` process.
Contract: a parser returns a `Ticket` or raises `TicketParseError`; anything else is a bug.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import strategies as gen
from fixture_broker import produce
from harness import REPO, kafka_section, pick, read_topic, record_figures, stored_ticket_ids, write_config
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connectors.formats import FORMATS, parser_for
from daemon.config import QualityConfig, StoreConfig
from daemon.ingest.filters import QualityFilter, tokenizer_json_for
from daemon.ingest.loop import REASON_INTERNAL_ERROR, SourceRecord, run_ingest
from daemon.store import OUTCOME_ABSENT, OUTCOME_DELETED, OUTCOME_REVISED, OUTCOME_STORED, Deletion, open_store
from daemon.tickets import MAX_JSON_NESTING, Ticket, TicketParseError

# Examples per property: quick is the CI profile (`make test-slow`), full is `make faults`.
PLAN = {
    "parser_arbitrary_bytes": pick(1500, 8000),
    "parser_invalid_utf8": pick(1200, 6000),
    "parser_arbitrary_json": pick(1500, 8000),
    "parser_deeply_nested": pick(500, 3000),
    "parser_mutated_samples": pick(3500, 20000),
    "parser_huge_messages": pick(20, 150),
    "ingest_mixed_batches": pick(1800, 8000),
}
BROKER_RECORDS = pick(300, 2000)
MIN_TOTAL_CASES = pick(10_000, 50_000)
MAX_VALUE_BYTES = 64 * 1024
REASON = re.compile(r"[a-z][a-z0-9_]*")

CASES: Counter[str] = Counter()
SWEPT: Counter[str] = Counter()  # the edge-value sweep's cases, per format (enumerated, not generated)
UNHANDLED: Counter[str] = Counter()  # "format: ExceptionType" → count; any one also fails its test
PARSER_REASONS: Counter[str] = Counter()
INGEST: Counter[str] = Counter()  # records through run_ingest by what became of them
FIGURES: dict[str, object] = {}
WALL: dict[str, float] = {}


def fuzz(name: str, **overrides: object) -> settings:
    """Reproducible in CI: derandomized, no example database, no deadline (the machine is shared)."""
    options = {"max_examples": PLAN[name], "deadline": None, "database": None, "derandomize": True,
               "print_blob": True, "suppress_health_check": list(HealthCheck)}
    return settings(**(options | overrides))


def check_parse(format_name: str, value: bytes) -> str | None:
    """The parser's verdict: None for a `Ticket`, else the `TicketParseError` reason, checked for shape."""
    try:
        ticket = parser_for(format_name)(value)
    except TicketParseError as exc:
        assert isinstance(exc.reason, str) and REASON.fullmatch(exc.reason), exc.reason
        assert isinstance(exc.detail, str) and exc.detail.strip(), f"{exc.reason} without a detail"
        PARSER_REASONS[exc.reason] += 1
        return exc.reason
    except Exception as exc:
        UNHANDLED[f"{format_name}: {type(exc).__name__}"] += 1
        raise
    assert isinstance(ticket, Ticket)
    # a NaN or infinite CSAT compares false with every bound, so it would slip past `quality.min_csat`
    assert ticket.csat is None or math.isfinite(ticket.csat), f"{format_name}: csat {ticket.csat}"
    PARSER_REASONS["accepted"] += 1
    return None


def every_parser(value: bytes) -> dict[str, str | None]:
    return {name: check_parse(name, value) for name in FORMATS}


@pytest.fixture(scope="module", autouse=True)
def figures():
    """Records the figures once the module's tests ran; the total is checked when every property ran."""
    started = time.monotonic()
    yield
    total = sum(CASES.values())
    record_figures("bad_input", {
        "cases_per_property": dict(sorted(CASES.items())), "cases_total": total,
        "edge_value_sweep_cases": dict(sorted(SWEPT.items())),
        "planned_per_property": PLAN, "min_total_cases": MIN_TOTAL_CASES,
        "unhandled_exceptions": sum(UNHANDLED.values()), "unhandled_by_kind": dict(UNHANDLED),
        "parser_verdicts": dict(sorted(PARSER_REASONS.items())),
        "ingest_records": dict(sorted(INGEST.items())),
        "wall_seconds_per_test": {k: round(v, 1) for k, v in WALL.items()},
        "wall_seconds": round(time.monotonic() - started, 1),
        **FIGURES,
    })
    if set(PLAN) <= set(CASES):
        assert total >= MIN_TOTAL_CASES, f"only {total} generated cases ran, the profile asks for {MIN_TOTAL_CASES}"


def run_property(name: str, prop, planned: int | None = None, label: str | None = None) -> None:
    """Runs a Hypothesis property and checks that it ran every planned case (a counter in its body)."""
    planned = PLAN[name] if planned is None else planned
    started = time.monotonic()
    before, unhandled_before = CASES[name], sum(UNHANDLED.values())
    prop()
    WALL[label or name] = time.monotonic() - started
    ran = CASES[name] - before
    assert ran >= planned, f"{name}: {ran} cases ran, {planned} planned"
    assert sum(UNHANDLED.values()) == unhandled_before, dict(UNHANDLED)


# --- the parsers ---------------------------------------------------------------------------------------


def test_arbitrary_bytes_are_a_ticket_or_a_parse_error() -> None:
    @fuzz("parser_arbitrary_bytes")
    @given(st.one_of(st.binary(max_size=2000), st.binary(max_size=8).map(lambda b: b"{" + b + b"}")))
    def prop(value: bytes) -> None:
        CASES["parser_arbitrary_bytes"] += 1
        every_parser(value)

    run_property("parser_arbitrary_bytes", prop)


def test_invalid_utf8_is_an_invalid_utf8_parse_error_in_every_format() -> None:
    @fuzz("parser_invalid_utf8")
    @given(gen.invalid_utf8())
    def prop(value: bytes) -> None:
        CASES["parser_invalid_utf8"] += 1
        with pytest.raises(UnicodeDecodeError):
            value.decode("utf-8")
        assert set(every_parser(value).values()) == {"invalid_utf8"}

    run_property("parser_invalid_utf8", prop)


def test_arbitrary_json_is_a_ticket_or_a_parse_error_and_a_non_object_says_so() -> None:
    @fuzz("parser_arbitrary_json")
    @given(gen.replacement_values, st.booleans())
    def prop(document: object, ensure_ascii: bool) -> None:
        CASES["parser_arbitrary_json"] += 1
        verdicts = every_parser(gen.encode(document, ensure_ascii))
        if isinstance(document, (list, str, int, float, bool)) or document is None:
            assert set(verdicts.values()) == {"not_an_object"}, verdicts

    run_property("parser_arbitrary_json", prop)


def test_deeply_nested_json_is_a_parse_error_never_a_recursion_error() -> None:
    @fuzz("parser_deeply_nested")
    @given(gen.deeply_nested_with_depth())
    def prop(depth_and_value: tuple[int, bytes]) -> None:
        CASES["parser_deeply_nested"] += 1
        depth, value = depth_and_value
        verdicts = every_parser(value)
        if depth > MAX_JSON_NESTING:  # the same verdict whatever the caller's stack leaves to json.loads
            assert set(verdicts.values()) == {"invalid_json"}, verdicts

    run_property("parser_deeply_nested", prop)


@pytest.mark.parametrize("format_name", FORMATS)
def test_samples_with_fields_removed_or_mistyped_are_a_ticket_or_a_parse_error(format_name: str) -> None:
    name = "parser_mutated_samples"
    share = -(-PLAN[name] // len(FORMATS))

    @fuzz(name, max_examples=share)
    @given(gen.mutated_sample(format_name))
    def prop(value: bytes) -> None:
        CASES[name] += 1
        every_parser(value)

    run_property(name, prop, planned=share, label=f"{name}.{format_name}")


@pytest.mark.parametrize("format_name", FORMATS)
def test_every_field_removed_or_set_to_each_edge_value_is_a_ticket_or_a_parse_error(format_name: str) -> None:
    """Not random: each field of the sample, one at a time, removed or set to each of `EDGE_VALUES`."""
    started = time.monotonic()
    sample = gen.SAMPLES[format_name]
    for path in gen.PATHS[format_name]:
        for action, value in [("remove", None)] + [("replace", value) for value in gen.EDGE_VALUES]:
            document = copy.deepcopy(sample)
            gen.mutate(document, path, action, value)
            SWEPT[format_name] += 1
            check_parse(format_name, gen.encode(document))
    WALL[f"sweep.{format_name}"] = time.monotonic() - started


def test_huge_messages_are_a_ticket_or_a_parse_error() -> None:
    @fuzz("parser_huge_messages")
    @given(gen.huge_message())
    def prop(value: bytes) -> None:
        CASES["parser_huge_messages"] += 1
        assert len(value) >= 100_000
        every_parser(value)

    run_property("parser_huge_messages", prop)


# --- the ingest loop -----------------------------------------------------------------------------------


class ListSource:
    """A `TicketSource` over a list: hands out batches of the given sizes, keeps every dead letter."""

    def __init__(self, records: Sequence[SourceRecord], batch_size: int, max_value_bytes: int | None) -> None:
        self.records = list(records)
        self.batch_size = batch_size
        self.max_value_bytes = max_value_bytes
        self.handed_out = 0
        self.committed = 0
        self.dead_letters: list[tuple[SourceRecord, str, str]] = []

    def assigned(self) -> bool:
        return True

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]:
        size = min(self.batch_size, max_records or self.batch_size)
        batch = self.records[self.handed_out : self.handed_out + size]
        self.handed_out += len(batch)
        return batch

    def dead_letter(self, record: SourceRecord, reason: str, detail: str) -> None:
        self.dead_letters.append((record, reason, detail))

    def commit(self) -> None:
        self.committed = self.handed_out

    def lag(self) -> dict[int, int] | None:
        return {0: len(self.records) - self.committed}

    def close(self) -> None:
        pass


class RecordingStore:
    """The real store, with each change's outcome noted; a failing write stops the loop (it would retry
    forever) and is kept for the test to report."""

    def __init__(self, store, stop: threading.Event) -> None:
        self.store = store
        self.stop = stop
        self.outcomes: list[tuple[object, str]] = []
        self.errors: list[Exception] = []

    def apply(self, changes):
        try:
            outcomes = self.store.apply(changes)
        except Exception as exc:
            self.errors.append(exc)
            self.stop.set()
            raise
        self.outcomes.extend(zip(changes, outcomes, strict=True))
        return outcomes


def record_kinds(format_name: str) -> st.SearchStrategy[tuple]:
    """One generated record: ("good", padding), made per case; ("tombstone", key); or ("value", key, bytes)."""
    keys = st.one_of(st.none(), st.just(b""), st.binary(max_size=12), st.text(max_size=12).map(str.encode),
                     st.sampled_from(gen.INVALID_UTF8))
    return st.one_of(
        st.tuples(st.just("good"), st.sampled_from([0, 0, 0, MAX_VALUE_BYTES])),
        st.tuples(st.just("tombstone"), st.one_of(keys, st.just("earlier"))),
        st.tuples(st.just("value"), keys, gen.any_bad_payload(format_name)),
    )


def build_records(kinds: list[tuple], case: str) -> tuple[list[SourceRecord], dict[int, str]]:
    """Source records of one case; `good` maps offsets of storable tickets to their (case-unique) ids."""
    records: list[SourceRecord] = []
    good: dict[int, str] = {}
    for offset, kind in enumerate(kinds):
        if kind[0] == "good":
            ticket_id = f"{case}-{offset}"
            value = gen.good_ticket(ticket_id, seed=ticket_id, padding=kind[1])
            if not kind[1]:
                good[offset] = ticket_id
            records.append(SourceRecord("tickets", 0, offset, ticket_id.encode(), value))
        elif kind[0] == "tombstone":
            key = kind[1]
            if key == "earlier":  # deletes a ticket of this batch, or one that never was
                key = (next(reversed(good.values())) if good else f"{case}-none").encode()
            records.append(SourceRecord("tickets", 0, offset, key, None))
        else:
            records.append(SourceRecord("tickets", 0, offset, kind[1], kind[2]))
    return records, good


def expected_dead_letter(record: SourceRecord, format_name: str) -> str | None:
    """The reason a record must be dead-lettered for, by the contract; None when it must not be."""
    if record.value is None:
        if not record.key:
            return "tombstone_without_key"
        try:
            record.key.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_key"
        return None
    if len(record.value) > MAX_VALUE_BYTES:
        return "too_large"
    return check_parse(format_name, record.value)


def test_ingest_accounts_for_every_bad_record_and_stores_the_good_ones(tmp_path: Path) -> None:
    name = "ingest_mixed_batches"
    store = open_store(StoreConfig(path=str(tmp_path / "examples.db")))
    quality = QualityFilter(QualityConfig(), tokenizer_json_for(str(tmp_path / "no-model")))
    quality.load(store.quality_signatures())

    @fuzz(name)
    @given(st.sampled_from(FORMATS), st.lists(record_kinds("canonical"), min_size=1, max_size=12),
           st.integers(1, 6), st.data())
    def prop(format_name: str, kinds: list[tuple], batch_size: int, data: st.DataObject) -> None:
        CASES[name] += 1
        case = f"c{CASES[name]}"
        if format_name != "canonical":  # bad values shaped like this format's own payload too
            kinds = kinds + data.draw(st.lists(record_kinds(format_name), max_size=4))
        records, good = build_records(kinds, case)
        stop = threading.Event()
        source = ListSource(records, batch_size, MAX_VALUE_BYTES)
        sink = RecordingStore(store, stop)

        try:
            report = run_ingest(source, parser_for(format_name), sink, max_records=len(records), idle_timeout_s=10,
                                stop=stop, poll_timeout_s=0.01, quality=quality)
        except Exception as exc:
            UNHANDLED[f"run_ingest: {type(exc).__name__}"] += 1
            raise

        assert not sink.errors, f"the store refused a change: {sink.errors[0]!r}"
        assert report.source_errors == 0
        assert report.consumed == len(records) and source.committed == len(records)
        # every record that must be a dead letter is one, once, with the parser's own reason
        letters = {letter[0].offset: letter for letter in source.dead_letters}
        assert len(letters) == len(source.dead_letters), "a record was dead-lettered twice"
        expected = {r.offset: reason for r in records if (reason := expected_dead_letter(r, format_name))}
        assert {offset: letter[1] for offset, letter in letters.items()} == expected
        for _, reason, detail in source.dead_letters:
            assert reason != REASON_INTERNAL_ERROR and REASON.fullmatch(reason)
            assert isinstance(detail, str) and detail.strip()
        # every other record is stored, skipped with a reason, or a deletion, exactly once
        changes = len(sink.outcomes)
        pre_store_skips = len(records) - len(letters) - changes
        assert pre_store_skips >= 0
        outcomes = Counter(outcome for _, outcome in sink.outcomes)
        assert report.stored == outcomes[OUTCOME_STORED] + outcomes[OUTCOME_REVISED]
        assert report.deleted == outcomes[OUTCOME_DELETED]
        assert report.dead_lettered == len(letters)
        # a tombstone for a ticket the store never had is applied (a deletion mark) but counted nowhere
        counted = report.stored + sum(report.skipped.values()) + report.dead_lettered + report.deleted
        assert counted + outcomes[OUTCOME_ABSENT] == len(records)
        assert all(REASON.fullmatch(reason) for reason in report.skipped)
        # the valid tickets mixed in are stored, unless a later tombstone of the batch deleted them
        if format_name == "canonical":
            for offset, ticket_id in good.items():
                deleted_later = any(r.value is None and r.key == ticket_id.encode() for r in records[offset + 1 :])
                assert (store.get_example(ticket_id) is None) == deleted_later, (ticket_id, report.to_json())
        deletions = sum(isinstance(change, Deletion) for change, _ in sink.outcomes)
        INGEST.update({"records": len(records), "stored": report.stored, "deleted": report.deleted,
                       "deleted_absent": outcomes[OUTCOME_ABSENT], "dead_lettered": report.dead_lettered,
                       "deletions_applied": deletions})
        INGEST.update({f"skipped.{reason}": count for reason, count in report.skipped.items()})
        INGEST.update(f"dead_lettered.{letter[1]}" for letter in source.dead_letters)

    try:
        run_property(name, prop)
    finally:
        store.close()


# --- through the real broker ---------------------------------------------------------------------------


def generated_broker_records(count: int) -> list[tuple]:
    """About `count` record kinds drawn by the same strategies (generation only: nothing here can fail)."""
    kinds: list[tuple] = []

    @settings(max_examples=count // 10, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(
        st.tuples(st.just("good"), st.sampled_from([0, 0, 0, MAX_VALUE_BYTES])),
        st.tuples(st.just("tombstone"), st.one_of(st.none(), st.just(b""), st.sampled_from(gen.INVALID_UTF8),
                                                  st.text(min_size=1, max_size=8).map(str.encode))),
        st.tuples(st.just("value"), st.one_of(st.none(), st.binary(max_size=8)), gen.any_bad_payload("canonical")),
    ), min_size=10, max_size=10))  # in tens: Hypothesis does not repeat an example, and a good record is small
    def draw(ten: list[tuple]) -> None:
        kinds.extend(ten)

    draw()
    return kinds


def test_generated_records_through_the_broker_are_stored_or_dead_lettered_with_their_source(
    broker, unique_topic, tmp_path: Path
) -> None:
    started = time.monotonic()
    topic = unique_topic()
    broker.create_topics([topic, topic + ".dlq"], partitions=2)
    kinds = generated_broker_records(BROKER_RECORDS)
    values = []
    good_ids = []
    for index, kind in enumerate(kinds):
        if kind[0] == "good":
            ticket_id = f"broker-{index}"
            values.append((ticket_id.encode(), gen.good_ticket(ticket_id, seed=f"{topic}-{index}", padding=kind[1])))
            if not kind[1]:
                good_ids.append(ticket_id)
        elif kind[0] == "tombstone":  # kafka-python cannot send a null key with a null value: b"" stands in
            key = kind[1] or b"" if kind[1] in (None, b"", *gen.INVALID_UTF8) else b"absent-" + kind[1]
            values.append((key, None))
        else:
            values.append((kind[1], kind[2]))
    positions = produce(broker.bootstrap_servers, topic, values, batched=True)  # bytes are sent as they are
    gen_positions = dict(zip(positions, values, strict=True))

    config = write_config(tmp_path / "ticketune.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, f"bad-input-{topic}", format="canonical",
                               max_message_bytes=MAX_VALUE_BYTES),
        "model": {"base": str(tmp_path / "no-model")},
    })
    run = subprocess.run(
        [sys.executable, "-m", "daemon.app.cli", "ingest", "--config", str(config), "--json", "--idle-timeout", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "Traceback" not in run.stderr, run.stderr[-4000:]

    expected = {}
    for (partition, offset), (key, value) in gen_positions.items():
        record = SourceRecord(topic, partition, offset, key, value)
        if reason := expected_dead_letter(record, "canonical"):
            expected[(partition, offset)] = reason
    letters = read_topic(broker.bootstrap_servers, topic + ".dlq")
    by_source = {}
    for letter in letters:
        headers = letter["headers"]
        assert headers.get("ticketune.error.reason"), headers
        assert headers.get("ticketune.source.topic") == topic
        source = (int(headers["ticketune.source.partition"]), int(headers["ticketune.source.offset"]))
        assert source not in by_source, f"{source} dead-lettered twice"
        by_source[source] = letter
        key, value = gen_positions[source]
        assert letter["key"] == key
        assert letter["value"] == value or headers.get("ticketune.error.value_omitted") == "true"
    assert {source: letter["headers"]["ticketune.error.reason"] for source, letter in by_source.items()} == expected
    assert all(letter["headers"]["ticketune.error.reason"] != REASON_INTERNAL_ERROR for letter in letters)

    store_path = tmp_path / "store" / "examples.db"
    stored = set(stored_ticket_ids(store_path))
    assert set(good_ids) <= stored, sorted(set(good_ids) - stored)[:10]
    assert report["consumed"] == len(values) and report["dead_lettered"] == len(expected)

    FIGURES["broker"] = {
        "records_produced": len(values), "consumed": report["consumed"], "stored": report["stored"],
        "good_records": len(good_ids), "good_stored": len(set(good_ids) & stored),
        "dead_lettered": len(letters), "dead_lettered_by_reason": dict(Counter(expected.values())),
        "skipped": report["skipped"], "wall_seconds": round(time.monotonic() - started, 1),
    }


class ListSourceWithKafkaDeadLetters(ListSource):
    """Records from a list (so that one with neither key nor value can be made: kafka-python cannot produce
    it, other clients can), dead letters through the real `KafkaTicketSource` to the broker."""

    def __init__(self, records: Sequence[SourceRecord], kafka_source) -> None:
        super().__init__(records, batch_size=len(records), max_value_bytes=MAX_VALUE_BYTES)
        self.kafka_source = kafka_source

    def dead_letter(self, record: SourceRecord, reason: str, detail: str) -> None:
        self.kafka_source.dead_letter(record, reason, detail)
        super().dead_letter(record, reason, detail)


def test_a_record_with_neither_key_nor_value_is_dead_lettered_to_the_broker_without_stalling_ingest(
    broker, unique_topic, tmp_path: Path
) -> None:
    from connectors.kafka import KafkaTicketSource
    from daemon.config import KafkaConfig

    topic = unique_topic()
    broker.create_topics([topic + ".dlq"])
    config = KafkaConfig(**kafka_section(broker.bootstrap_servers, topic, f"bad-input-{topic}"))
    records = [SourceRecord(topic, 0, 0, None, None), SourceRecord(topic, 0, 1, b"7", b"\xff"),
               SourceRecord(topic, 0, 2, None, b"[]")]
    kafka_source = KafkaTicketSource(config)
    source = ListSourceWithKafkaDeadLetters(records, kafka_source)
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # a dead letter that can never be sent is retried until stopped
    timer.start()
    try:
        report = run_ingest(source, parser_for("canonical"), open_store(StoreConfig(path=str(tmp_path / "s.db"))),
                            max_records=len(records), idle_timeout_s=10, stop=stop, poll_timeout_s=0.01)
    finally:
        timer.cancel()
        kafka_source.close()

    assert not stop.is_set(), "ingest was still retrying a dead letter after 30 s"
    assert report.source_errors == 0 and report.dead_lettered == 3
    letters = read_topic(broker.bootstrap_servers, topic + ".dlq")
    reasons = {int(r["headers"]["ticketune.source.offset"]): r["headers"]["ticketune.error.reason"] for r in letters}
    assert reasons == {0: "tombstone_without_key", 1: "invalid_utf8", 2: "not_an_object"}
